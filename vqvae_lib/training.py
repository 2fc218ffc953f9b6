"""Training and evaluation: a plain loop with a config dataclass, progress, history and checkpoints."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .data import BatchLoader, make_loader
from .metrics import codes_used, nmse, perplexity, psnr
from .model import VQVAE, loss_terms
from .runtime import (
    FAST_ENV,
    all_reduce_sum,
    eval_mode,
    fast_mode,
    is_main_process,
    mean_over_ranks,
    pick_device,
    seed_everything,
    unwrap,
    world,
)

__all__ = [
    "FAST_ENV",
    "fast_mode",
    "pick_device",
    "seed_everything",
    "TrainConfig",
    "TrainResult",
    "train",
    "evaluate",
]

@dataclass
class TrainConfig:
    """Everything a training run needs; ``TrainConfig.preset(name)`` gives the notebooks' settings.

    Model fields are :class:`~vqvae_lib.VQVAE`'s arguments; ``steps_fast`` replaces ``steps`` in fast
    mode (see :func:`fast_mode`).
    """

    dataset: str = "mnist"
    image_size: int | None = None
    # model
    in_channels: int = 1
    hidden_channels: int = 64
    num_residual_layers: int = 2
    residual_hidden_channels: int = 32
    embedding_dim: int = 16
    num_embeddings: int = 128
    beta: float = 0.25
    downsample: int = 4
    ema: bool = True
    decay: float = 0.99
    data_init: str | None = "kmeans"
    dead_code_threshold: int = 20
    # optimisation
    batch_size: int = 128
    steps: int = 3000
    steps_fast: int = 200
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    eval_every: int = 500
    seed: int = 0
    device: str = "auto"

    _MODEL_FIELDS = (
        "in_channels", "hidden_channels", "num_residual_layers", "residual_hidden_channels",
        "embedding_dim", "num_embeddings", "beta", "downsample", "ema", "decay", "data_init",
        "dead_code_threshold",
    )  # fmt: skip

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The notebooks' configuration for ``mnist``, ``cifar10`` or ``food101``/``folder``."""
        presets = {
            # tuned on a 2-core CPU (benchmarks/README.md): small batches, a high learning rate and a fast
            # EMA codebook (decay 0.95) reach a lower test error in 90 s than the usual 128 x 2e-3 x 0.99
            "mnist": cls(
                dataset="mnist", in_channels=1, embedding_dim=16, num_embeddings=128, batch_size=32, steps=2800,
                steps_fast=200, lr=4e-3, decay=0.95, eval_every=700,
            ),
            # batch 32 and D 32 measured best on CIFAR10 too; the lr and codebook decay stay at 2e-3 and
            # 0.99 there, since the MNIST values made long CIFAR10 runs end worse (benchmarks/README.md)
            "cifar10": cls(
                dataset="cifar10", in_channels=3, hidden_channels=64, embedding_dim=32, num_embeddings=512,
                batch_size=32, steps=24000, steps_fast=300, lr=2e-3, eval_every=4000,
            ),
            "food101": cls(
                dataset="food101", image_size=64, in_channels=3, hidden_channels=64, embedding_dim=64,
                num_embeddings=512, batch_size=32, steps=2500, steps_fast=100, lr=2e-3, eval_every=500,
            ),
        }  # fmt: skip
        presets["folder"] = replace(presets["food101"], dataset="folder")
        if name not in presets:
            raise ValueError(f"no preset {name!r}; choose from {sorted(presets)}")
        return replace(presets[name], **overrides)

    def model_kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._MODEL_FIELDS}

    def build_model(self) -> VQVAE:
        """A fresh model, its weights drawn from ``seed``."""
        seed_everything(self.seed)
        return VQVAE(**self.model_kwargs())

    @property
    def run_steps(self) -> int:
        """``steps``, or ``steps_fast`` in fast mode."""
        return self.steps_fast if fast_mode() else self.steps


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history`` has one entry per step for every loss term, perplexity,
    codes used and learning rate, and ``history["eval"]`` one dict per evaluation."""

    history: dict[str, list] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0  # training time; the evaluations' time is in eval_seconds
    interrupted: bool = False
    final_eval: dict[str, float] | None = None
    checkpoint_path: Path | None = None
    eval_seconds: float = 0.0


_TERMS = ("total", "recon", "codebook", "commitment", "perplexity", "codes_used")


def _empty_history() -> dict[str, list]:
    return {"step": [], **{k: [] for k in _TERMS}, "lr": [], "eval": []}


def _make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {schedule!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches_forever(loader: Iterable, start_step: int) -> Iterable[tuple[int, Any]]:
    """Yield ``(step, batch)`` from ``start_step`` on, epoch after epoch: a loader is iterated, never
    re-created per step (``next(iter(loader))`` every step would restart its shuffle each time)."""
    step = start_step
    if isinstance(loader, BatchLoader):
        per_epoch = len(loader)
        epoch, offset = divmod(start_step, per_epoch)
        while True:
            loader.set_epoch(epoch, offset)
            for batch in loader:
                yield step, batch
                step += 1
            epoch, offset = epoch + 1, 0
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield step, batch
            step += 1
        if empty:
            raise ValueError("the loader yielded no batches")


def _as_loader(data: Dataset | Iterable, batch_size: int, shuffle: bool, seed: int) -> Iterable:
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed)
    return data


def train(
    model: nn.Module,
    loader: Iterable | Dataset,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    grad_clip: float | None = None,
    device: str | torch.device = "auto",
    eval_loader: Iterable | Dataset | None = None,
    eval_every: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: str | os.PathLike | bool | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a VQ-VAE with Adam on ``total = recon + codebook + beta * commitment``.

    Args:
        model: a :class:`VQVAE` (or a wrapper whose ``module`` is one, e.g. DDP).
        loader: a :class:`BatchLoader` (exactly resumable), any iterable of ``(x, y)`` batches, or a
            dataset (wrapped in a shuffled :class:`BatchLoader` of ``batch_size``).
        steps / epochs: how long to train (one of them).
        lr, weight_decay, lr_schedule (``"constant"``/``"cosine"``), warmup_steps, grad_clip: Adam settings.
        device: ``"auto"`` picks CUDA, MPS or CPU.
        eval_loader, eval_every: run :func:`evaluate` every ``eval_every`` steps and at the end.
        checkpoint_path, checkpoint_every: atomic checkpoints every ``checkpoint_every`` steps, at the
            end, and when the run is interrupted with Ctrl-C.
        resume: a checkpoint to continue from (``True`` means ``checkpoint_path``): weights, optimizer,
            schedule, step, history, RNG state and the loader's position are restored, so that the
            resumed run matches an uninterrupted one.
        seed: seeds training-time randomness (data initialisation, dead-code restarts, shuffling).
        callback: called as ``callback(step, logs)`` after every step.

    A ``KeyboardInterrupt`` stops the loop cleanly: a checkpoint is written (if a path was given) and
    the result comes back with ``interrupted=True``.
    """
    loader = _as_loader(loader, batch_size, True, seed)
    if eval_loader is not None:
        eval_loader = _as_loader(eval_loader, 256, False, seed)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    if steps is None:
        steps = epochs * len(loader)  # type: ignore[arg-type, operator]
    dev = pick_device(device)
    core = unwrap(model)
    core.to(dev)
    dtype = next(core.parameters()).dtype  # batches take the model's dtype (float64 for exact checks)
    beta = core.beta
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = _make_scheduler(optimizer, lr_schedule, warmup_steps, steps)
    history = _empty_history()
    start = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    seed_everything(seed)

    if resume:
        resume_path = checkpoint_path if resume is True else Path(resume)
        if resume_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        state = read_checkpoint(resume_path)
        load_checkpoint(resume_path, model, optimizer, scheduler, device=dev)
        start, history = state["step"], state["history"] or _empty_history()
        torch.set_rng_state(state["rng_state"])
        if start >= steps:
            return TrainResult(history, start, 0.0, False, None, resume_path)

    def checkpoint(step: int) -> None:
        if checkpoint_path is not None and is_main_process():
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, step, history)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, desc="training", disable=not progress or not is_main_process(), dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    eval_seconds = 0.0  # kept off the training clock: how long evaluation takes says nothing about training

    def timed_evaluate(at_step: int) -> dict:
        nonlocal eval_seconds
        t_eval = time.perf_counter()
        metrics = {"step": at_step, **evaluate(model, eval_loader, dev)}
        eval_seconds += time.perf_counter() - t_eval
        history["eval"].append(metrics)
        return metrics

    step = start
    interrupted = False
    try:
        for step, (x, _) in _batches_forever(loader, start):
            if step >= steps:
                break
            x = x.to(dev, dtype, non_blocking=True)
            x_hat, q = model(x)
            losses = loss_terms(x, x_hat, q, beta)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()

            logs = mean_over_ranks({k: float(losses[k].detach()) for k in _TERMS})
            history["step"].append(step + 1)
            for k in _TERMS:
                history[k].append(logs[k])
            history["lr"].append(optimizer.param_groups[0]["lr"])
            if not math.isfinite(logs["total"]):
                raise FloatingPointError(f"loss became {logs['total']} at step {step + 1}; lower the learning rate")
            bar.update(1)
            if (step + 1) % 10 == 0 or step + 1 == steps:
                bar.set_postfix(loss=f"{logs['total']:.4f}", perplexity=f"{logs['perplexity']:.1f}")
            done = step + 1
            if eval_loader is not None and eval_every and done % eval_every == 0 and done < steps:
                metrics = timed_evaluate(done)
                if progress and is_main_process():
                    bar.write(_format_eval(metrics, time.perf_counter() - t0 - eval_seconds))
                model.train()
            if checkpoint_every and done % checkpoint_every == 0:
                checkpoint(done)
            if callback is not None:
                callback(done, logs)
            step = done
    except KeyboardInterrupt:
        interrupted = True
        step = history["step"][-1] if history["step"] else start
        bar.write(f"interrupted at step {step}" + (f"; checkpoint saved to {checkpoint_path}" if checkpoint_path else ""))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    final_eval = None
    if eval_loader is not None and not interrupted:
        final_eval = timed_evaluate(step)
        if progress and is_main_process():
            print(_format_eval(final_eval, seconds))
    checkpoint(step)
    return TrainResult(history, step, seconds, interrupted, final_eval, checkpoint_path, eval_seconds)


def _format_eval(metrics: dict, seconds: float) -> str:
    return (
        f"step {metrics['step']:>6} | {seconds:6.1f} s training | test mse {metrics['mse']:.5f} nmse {metrics['nmse']:.4f} "
        f"psnr {metrics['psnr']:.2f} dB | perplexity {metrics['perplexity']:.1f} | codes used {metrics['codes_used']}"
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable | Dataset,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    histogram: bool = False,
) -> dict[str, Any]:
    """Reconstruction and codebook metrics over a whole loader (or dataset).

    Returns ``mse``, ``nmse`` (MSE / variance of these images), ``psnr`` (dB, from the pooled MSE),
    ``perplexity`` and ``codes_used`` (over all codes chosen for these images); with
    ``histogram=True`` also ``histogram``, the ``(K,)`` count of each code over these images.
    In a distributed run each process evaluates every ``world_size``-th batch and the sums are
    all-reduced, so every rank returns the metrics of the whole loader.
    """
    loader = _as_loader(loader, 256, False, 0)
    core = unwrap(model)
    dev = next(core.parameters()).device if device is None else pick_device(device)
    dtype = next(core.parameters()).dtype
    k = core.quantizer.num_embeddings
    rank, size = world()
    sse = total = sum_x = sum_x2 = 0.0
    counts = torch.zeros(k, dtype=torch.long)
    with eval_mode(core):
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            if i % size != rank:
                continue
            x = x.to(dev, dtype)
            x_hat, q = core(x)
            sse += float((x_hat.to(x.dtype) - x).pow(2).sum(dtype=torch.float64))
            total += x.numel()
            sum_x += float(x.sum(dtype=torch.float64))
            sum_x2 += float(x.pow(2).sum(dtype=torch.float64))
            counts += torch.bincount(q.indices.flatten().cpu(), minlength=k)
    if size > 1:
        sums = all_reduce_sum(torch.tensor([sse, total, sum_x, sum_x2], dtype=torch.float64))
        sse, total, sum_x, sum_x2 = sums.tolist()
        counts = all_reduce_sum(counts)
    if total == 0:
        raise ValueError("the evaluation loader yielded no images")
    mse = sse / total
    variance = sum_x2 / total - (sum_x / total) ** 2
    metrics: dict[str, Any] = {
        "mse": mse,
        "nmse": nmse(mse, variance),
        "psnr": psnr(mse),
        "perplexity": perplexity(counts),
        "codes_used": codes_used(counts),
    }
    if histogram:
        metrics["histogram"] = counts
    return metrics
