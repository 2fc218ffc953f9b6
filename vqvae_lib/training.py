"""Training: one loop (:func:`fit`) that the VQ-VAE (:func:`train`) and the PixelCNN prior
(:func:`vqvae_lib.prior.train_prior`) both run, with the config dataclasses that drive it.

The loop owns everything a run needs besides the loss: Adam with warm-up and a cosine or constant
schedule, a progress bar, a per-step history, evaluations kept off the training clock, atomic
checkpoints, exact resume, a clean stop on Ctrl-C, and a stop with a clear error when the loss
stops being finite. It is the only place in the package that calls ``backward()``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .checkpoint import read_checkpoint, save_checkpoint
from .data import BatchLoader, as_loader
from .metrics import evaluate
from .model import VQVAE, VQVAEConfig, loss_terms
from .runtime import fast_mode, is_main_process, mean_over_ranks, pick_device, seed_everything, unwrap

__all__ = ["FitConfig", "TrainConfig", "TrainResult", "fit", "train"]


@dataclass
class FitConfig:
    """How long and how to optimise: the fields :func:`fit` reads, shared by :class:`TrainConfig` and
    :class:`~vqvae_lib.PriorConfig`.

    ``steps_fast``, when set, replaces ``steps`` in fast mode (``VQVAE_FAST=1``, see
    :func:`~vqvae_lib.fast_mode`). ``eval_every`` and ``checkpoint_every`` (0: never) count steps; a
    run with test data is also evaluated at the end, and one with a checkpoint path saved at the end.
    """

    steps: int = 3000
    steps_fast: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # or "constant"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float | None = None
    eval_every: int = 500
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "auto"

    @property
    def run_steps(self) -> int:
        """``steps``, or ``steps_fast`` in fast mode when it is set."""
        return self.steps_fast if self.steps_fast is not None and fast_mode() else self.steps


_MODEL_FIELDS = frozenset(f.name for f in fields(VQVAEConfig))


@dataclass
class TrainConfig(FitConfig):
    """A VQ-VAE training run: the data, the model (a :class:`~vqvae_lib.VQVAEConfig`) and how to fit it.

    ``TrainConfig.preset(name)`` gives the notebooks' settings; its keyword overrides may name
    :class:`~vqvae_lib.VQVAEConfig` fields directly (``preset("mnist", num_embeddings=256)``).
    """

    dataset: str = "mnist"
    image_size: int | None = None
    model: VQVAEConfig = field(default_factory=VQVAEConfig)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The notebooks' configuration for ``mnist``, ``cifar10``, ``food101``/``folder``, or
        ``folder-128`` (photos at 128x128 with ``downsample=8``)."""
        codebook = dict(ema=True, decay=0.99, data_init="kmeans", dead_code_threshold=20)
        presets = {
            # tuned on a 2-core CPU (benchmarks/README.md): small batches, a high learning rate and a fast
            # EMA codebook (decay 0.95) reach a lower test error in 90 s than the usual 128 x 2e-3 x 0.99
            "mnist": cls(
                dataset="mnist", steps=2800, steps_fast=200, batch_size=32, lr=4e-3, eval_every=700,
                checkpoint_every=1000,
                model=VQVAEConfig(in_channels=1, hidden_channels=64, embedding_dim=16, num_embeddings=128,
                                  **{**codebook, "decay": 0.95}),
            ),
            # batch 32 and D 32 measured best on CIFAR10 too; the lr and codebook decay stay at 2e-3 and
            # 0.99 there, since the MNIST values made long CIFAR10 runs end worse (benchmarks/README.md)
            "cifar10": cls(
                dataset="cifar10", steps=24000, steps_fast=300, batch_size=32, lr=2e-3, eval_every=4000,
                checkpoint_every=1000,
                model=VQVAEConfig(in_channels=3, hidden_channels=64, embedding_dim=32, num_embeddings=512, **codebook),
            ),
            "food101": cls(
                dataset="food101", image_size=64, steps=2500, steps_fast=100, batch_size=32, lr=2e-3,
                eval_every=500, checkpoint_every=500,
                model=VQVAEConfig(in_channels=3, hidden_channels=64, embedding_dim=64, num_embeddings=512, **codebook),
            ),
        }  # fmt: skip
        presets["folder"] = replace(presets["food101"], dataset="folder")
        # 128x128 photos: one more halving keeps the 16x16 grid of codes (and the bits per image) of the
        # 64x64 model at 1.4x its time per step (notebook 7 measures it), instead of a 32x32 grid at 4x
        presets["folder-128"] = replace(presets["folder"], image_size=128,
                                        model=replace(presets["folder"].model, downsample=8))  # fmt: skip
        if name not in presets:
            raise ValueError(f"no preset {name!r}; choose from {sorted(presets)}")
        config = presets[name]
        model_overrides = {k: overrides.pop(k) for k in list(overrides) if k in _MODEL_FIELDS}
        return replace(config, model=replace(overrides.pop("model", config.model), **model_overrides), **overrides)

    def for_dataset(self, dataset: Dataset) -> "TrainConfig":
        """This configuration fitted to the images it will train on: the model's input channels are
        theirs (a grayscale folder loads with 1), and a batch holds no more images than there are (a
        first try with 17 photos trains on batches of 17, where 32 would not make a single batch)."""
        channels = int(dataset[0][0].shape[0])
        return replace(self, batch_size=min(self.batch_size, len(dataset)), model=replace(self.model, in_channels=channels))

    def build_model(self) -> VQVAE:
        """A fresh model, its weights drawn from ``seed``."""
        seed_everything(self.seed)
        return VQVAE(self.model)


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``history`` has ``step`` and one list per logged term (every step) and
    ``lr``, and ``history["eval"]`` one dict per evaluation."""

    history: dict[str, list] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0  # training time; the evaluations' time is in eval_seconds
    interrupted: bool = False
    final_eval: dict[str, float] | None = None
    checkpoint_path: Path | None = None
    eval_seconds: float = 0.0


def _make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int):
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {schedule!r}")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: nn.Module,
    loss_fn: Callable[[Any, torch.device], dict[str, Tensor]],
    batches: Callable[[int], Iterable[Any]],
    config: FitConfig,
    *,
    loss_key: str = "total",
    evaluate_fn: Callable[[], dict[str, Any]] | None = None,
    describe_eval: Callable[[dict[str, Any], float], str] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | bool | None = None,
    extra: dict | None = None,
    progress: bool = True,
    desc: str = "training",
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Minimise ``loss_fn(batch, device)[loss_key]`` over ``config.run_steps`` steps of Adam.

    Args:
        model: what is trained (a DDP wrapper is fine; checkpoints hold the model inside it).
        loss_fn: ``(batch, device) -> {name: scalar tensor}``; every entry is logged each step, and
            ``loss_key``'s is the one minimised.
        batches: ``batches(start_step)`` yields one batch per step from ``start_step`` on (so that
            a resumed run draws the same batches an uninterrupted one would).
        config: steps, learning rate and schedule, weight decay, gradient clipping, how often to
            evaluate and checkpoint, seed and device (:class:`FitConfig`).
        evaluate_fn: returns test metrics; run every ``config.eval_every`` steps and at the end
            (``describe_eval(metrics, seconds)`` turns them into the line printed).
        checkpoint_path: atomic checkpoints every ``config.checkpoint_every`` steps, at the end, and
            when the run is interrupted, with ``extra`` stored beside the weights.
        resume: a checkpoint to continue from (``True``: ``checkpoint_path``): weights, optimizer,
            schedule, step, history and random state are restored, so that the resumed run matches an
            uninterrupted one.
        callback: ``callback(step, logs)`` after every step.

    A ``KeyboardInterrupt`` stops the loop cleanly: a checkpoint is written (if a path was given) and
    the result comes back with ``interrupted=True``. A loss that is not finite raises
    ``FloatingPointError`` at that step.
    """
    steps = config.run_steps
    dev = pick_device(config.device)
    unwrap(model).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, steps)
    history: dict[str, list] = {"step": [], "lr": [], "eval": []}
    start = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    seed_everything(config.seed)

    if resume:
        resume_path = checkpoint_path if resume is True else Path(resume)
        if resume_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        start, history = _resume(resume_path, model, optimizer, scheduler, history)
        if start >= steps:
            return TrainResult(history, start, 0.0, False, None, resume_path)

    def checkpoint(step: int) -> None:
        if checkpoint_path is not None and is_main_process():
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, step, history, extra)

    from tqdm.auto import tqdm

    show = progress and is_main_process()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not show, dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    eval_seconds = 0.0  # kept off the training clock: how long evaluation takes says nothing about training

    def run_evaluation(at_step: int) -> dict:
        nonlocal eval_seconds
        t_eval = time.perf_counter()
        metrics = {"step": at_step, **evaluate_fn()}  # type: ignore[misc]
        eval_seconds += time.perf_counter() - t_eval
        history["eval"].append(metrics)
        model.train()
        return metrics

    done, interrupted = start, False
    try:
        for step, batch in zip(range(start, steps), batches(start)):
            losses = loss_fn(batch, dev)
            optimizer.zero_grad(set_to_none=True)
            losses[loss_key].backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()

            logs = mean_over_ranks({k: float(v.detach()) for k, v in losses.items()})
            done = step + 1
            history["step"].append(done)
            for k, value in logs.items():
                history.setdefault(k, []).append(value)
            history["lr"].append(optimizer.param_groups[0]["lr"])
            if not math.isfinite(logs[loss_key]):
                raise FloatingPointError(f"loss became {logs[loss_key]} at step {done}; lower the learning rate")
            bar.update(1)
            if done % 10 == 0 or done == steps:
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in (loss_key, "perplexity") if k in logs})
            if evaluate_fn is not None and config.eval_every and done % config.eval_every == 0 and done < steps:
                metrics = run_evaluation(done)
                if show and describe_eval is not None:
                    bar.write(describe_eval(metrics, time.perf_counter() - t0 - eval_seconds))
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint(done)
            if callback is not None:
                callback(done, logs)
        if done < steps:  # a finite iterable of batches ran out
            raise ValueError(f"the batches ran out after step {done} of {steps}")
    except KeyboardInterrupt:
        interrupted = True
        done = history["step"][-1] if history["step"] else start
        bar.write(f"interrupted at step {done}" + (f"; checkpoint saved to {checkpoint_path}" if checkpoint_path else ""))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    final_eval = None
    if evaluate_fn is not None and not interrupted:
        final_eval = run_evaluation(done)
        if show and describe_eval is not None:
            print(describe_eval(final_eval, seconds))
    checkpoint(done)
    return TrainResult(history, done, seconds, interrupted, final_eval, checkpoint_path, eval_seconds)


def _resume(path: Path, model: nn.Module, optimizer, scheduler, history: dict) -> tuple[int, dict]:
    """Restore a run from its checkpoint, read once: weights, optimizer, schedule and the CPU random
    state; returns the step to continue from and the history so far."""
    saved = read_checkpoint(path)
    saved.restore(model, optimizer, scheduler)
    if saved.rng_state is not None:
        torch.set_rng_state(saved.rng_state)
    return saved.step, saved.history or history


def _batches_forever(loader: Iterable, start_step: int) -> Iterator[Any]:
    """Batches from ``start_step`` on, epoch after epoch: a loader is iterated, never re-created per
    step (``next(iter(loader))`` every step would restart its shuffle each time)."""
    if isinstance(loader, BatchLoader):
        yield from loader.batches_from(start_step)
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batches")


def train(
    model: nn.Module,
    loader: Iterable | Dataset,
    config: TrainConfig | FitConfig,
    *,
    eval_loader: Iterable | Dataset | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | bool | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    extra: dict | None = None,
) -> TrainResult:
    """Train a VQ-VAE on ``total = recon + codebook + beta * commitment`` with :func:`fit`.

    Args:
        model: a :class:`VQVAE` (or a wrapper whose ``module`` is one, e.g. DDP). It is already built,
            so ``config.model`` is not read here (:meth:`TrainConfig.build_model` builds from it).
        loader: a :class:`BatchLoader` (exactly resumable), any iterable of ``(x, y)`` batches, or a
            dataset (wrapped in a shuffled :class:`BatchLoader` of ``config.batch_size``).
        config: a :class:`TrainConfig` (or any :class:`FitConfig`): steps, optimiser, schedule,
            evaluation and checkpoint intervals, seed, device.
        eval_loader: test data for :func:`evaluate`, every ``config.eval_every`` steps and at the end.
        checkpoint_path, resume, progress, callback, extra: as in :func:`fit` (``extra`` is stored in
            the checkpoint: notebook 7 records your image folder there, for notebooks 8 and 9).

    ``history`` holds, per step, ``total``, ``recon``, ``codebook``, ``commitment``, ``perplexity`` and
    ``codes_used`` (this batch's), and ``lr``.
    """
    loader = as_loader(loader, config.batch_size, True, config.seed)
    if eval_loader is not None:
        eval_loader = as_loader(eval_loader, 256, False, config.seed)
    core = unwrap(model)
    dtype = next(core.parameters()).dtype  # batches take the model's dtype (float64 for exact checks)

    def loss_fn(batch: Any, device: torch.device) -> dict[str, Tensor]:
        x = batch[0].to(device, dtype, non_blocking=True)
        x_hat, q = model(x)
        terms = loss_terms(x, x_hat, q, core.beta)
        return {k: terms[k] for k in ("total", "recon", "codebook", "commitment", "perplexity", "codes_used")}

    return fit(
        model, loss_fn, lambda start: _batches_forever(loader, start), config,
        evaluate_fn=None if eval_loader is None else lambda: evaluate(model, eval_loader),
        describe_eval=_describe_eval, checkpoint_path=checkpoint_path, resume=resume, progress=progress,
        callback=callback, extra=extra,
    )  # fmt: skip


def _describe_eval(metrics: dict, seconds: float) -> str:
    return (
        f"step {metrics['step']:>6} | {seconds:6.1f} s training | test mse {metrics['mse']:.5f} nmse {metrics['nmse']:.4f} "
        f"psnr {metrics['psnr']:.2f} dB | perplexity {metrics['perplexity']:.1f} | codes used {metrics['codes_used']}"
    )
