"""Quantizers compared at equal bits: the runs behind notebook 10 and ``benchmarks/quantizers_at_equal_bits.py``.

Each option is a notebook preset with only its quantizer changed (``TrainConfig.preset("mnist",
quantizer="fsq", levels=(8, 4, 4))``), so every option describes an image with the same
``h * w * log2(K)`` bits and trains the same encoder and decoder for the same steps. A run is summarised
as a plain dict (JSON-ready), so that a run on one machine can be recorded and set beside another::

    runs, models = compare("mnist", EQUAL_BITS["mnist"], train_set, test_set, seed=0)
    add_prior_bits(models, runs, "mnist", train_set, test_set, steps=600, seed=0)
    print(results_table(runs, (7, 7)))
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .data import make_loader
from .prior import PriorConfig, extract_codes, train_prior
from .training import TrainConfig, train

def _options(levels: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """The five options at the bits of ``prod(levels)`` codes: FSQ rounds to ``levels`` and residual VQ uses
    stages of ``levels`` codes, so both make exactly as many codes as the preset's codebook."""
    grid = "x".join(map(str, levels))
    return {
        "VQ (paper, EMA)": {},
        "rotation trick": dict(gradient="rotation"),
        "cosine, 8-d": dict(quantizer="cosine", lookup_dim=8),
        f"FSQ {grid}": dict(quantizer="fsq", levels=levels),
        f"residual {grid}": dict(quantizer="residual", stage_sizes=levels),
    }


# the same bits per image in every row: 7 bits per position on MNIST's 7x7 grid, 9 on CIFAR10's 8x8
EQUAL_BITS: dict[str, dict[str, dict[str, Any]]] = {"mnist": _options((8, 4, 4)), "cifar10": _options((8, 8, 8))}


def compare(
    preset: str,
    options: dict[str, dict[str, Any]],
    train_set,
    eval_set,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """Train one model per option and test it on ``eval_set``.

    Every run starts from ``seed`` (weights and batch order), with ``steps`` steps (default: the preset's
    full- or fast-mode steps) and no intermediate evaluations or checkpoints. Returns ``(runs, models)``:
    ``runs[name]`` holds ``steps``, ``seconds`` (training time), the final test ``nmse``, ``psnr``,
    ``perplexity`` and ``codes_used``, ``K`` and the training curve (``curve_steps``, ``curve_recon``,
    thinned to at most about 200 points); ``models[name]`` is the trained model in eval mode.
    """
    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for name, overrides in options.items():
        cfg = TrainConfig.preset(preset, **overrides)
        cfg = replace(cfg, steps=steps or cfg.run_steps, steps_fast=None, eval_every=0, checkpoint_every=0, seed=seed)
        model = cfg.build_model()
        loader = make_loader(train_set, cfg.batch_size, seed=cfg.seed)
        result = train(model, loader, cfg, eval_loader=eval_set, progress=progress)
        final = result.final_eval
        every = max(1, result.steps // 200)
        runs[name] = dict(
            seed=seed, steps=result.steps, seconds=round(result.seconds, 1), nmse=final["nmse"], psnr=final["psnr"],
            perplexity=final["perplexity"], codes_used=final["codes_used"], K=cfg.model.num_embeddings,
            curve_steps=result.history["step"][::every], curve_recon=result.history["recon"][::every],
        )  # fmt: skip
        models[name] = model.eval()
        print(f"{name}: trained {result.steps} steps in {result.seconds:.0f} s; test NMSE {final['nmse']:.4f}, "
              f"{final['psnr']:.2f} dB, perplexity {final['perplexity']:.1f}, "
              f"{final['codes_used']} of {cfg.model.num_embeddings} codes")  # fmt: skip
    return runs, models


def add_prior_bits(
    models: dict[str, nn.Module],
    runs: dict[str, dict[str, Any]],
    preset: str,
    train_set,
    test_set,
    *,
    steps: int,
    seed: int = 0,
    channels: int = 32,
    num_layers: int = 8,
    device: str | torch.device = "auto",
) -> None:
    """Train one small class-conditional prior on each model's training codes and store its test negative
    log-likelihood in ``runs[name]["prior_bits"]``: bits per image, of the ``h * w * log2(K)`` a uniform
    guess needs. The priors are equal (``channels``, ``num_layers``, ``steps``, ``seed``) so that the
    rows compare the codes, not the priors."""
    pcfg = PriorConfig.preset(preset, channels=channels, num_layers=num_layers, steps=steps, steps_fast=30,
                              eval_every=0, seed=seed)  # fmt: skip
    for name, model in models.items():
        codes, labels = extract_codes(model, train_set, device=device, progress=False)
        test_codes, test_labels = extract_codes(model, test_set, device=device, progress=False)
        prior = pcfg.build_prior(model.quantizer.num_embeddings, tuple(codes.shape[1:]), num_classes=10)
        result = train_prior(prior, codes, labels, pcfg, eval_codes=(test_codes, test_labels), progress=False)
        positions = codes.shape[1] * codes.shape[2]
        runs[name]["prior_bits"] = result.final_eval["bits_per_code"] * positions
        uniform = math.log2(model.quantizer.num_embeddings) * positions
        print(f"{name}: prior test NLL {result.final_eval['bits_per_code']:.3f} bits per code = "
              f"{runs[name]['prior_bits']:.0f} of {uniform:.0f} bits per image, {result.seconds:.0f} s")  # fmt: skip


def results_table(runs: dict[str, dict[str, Any]], grid: tuple[int, int]) -> str:
    """The runs as a fixed-width table: training seconds, test NMSE and PSNR, perplexity, codes used and,
    where measured, the prior's bits per image."""
    bits = grid[0] * grid[1] * math.log2(next(iter(runs.values()))["K"])
    with_prior = all("prior_bits" in r for r in runs.values())
    lines = [f"{bits:.0f} bits per image in every row",
             f"{'':20} {'train s':>8} {'test NMSE':>10} {'PSNR dB':>8} {'perplexity':>11} {'codes used':>11}"
             + (f" {'prior bits':>11}" if with_prior else "")]  # fmt: skip
    for name, r in runs.items():
        row = (f"{name:20} {r['seconds']:8.0f} {r['nmse']:10.4f} {r['psnr']:8.2f} {r['perplexity']:11.1f} "
               f"{r['codes_used']:>6} of {r['K']}")  # fmt: skip
        lines.append(row + (f" {r['prior_bits']:11.0f}" if with_prior else ""))
    return "\n".join(lines)


def seed_table(by_seed: dict[int, dict[str, dict[str, Any]]], keys: tuple[str, ...] = ("nmse", "prior_bits")) -> str:
    """Each option's ``keys`` under every seed, side by side, each followed by its spread (largest minus
    smallest): the least a difference between two options must exceed before it says anything."""
    seeds = sorted(by_seed)
    names = list(by_seed[seeds[0]])
    label = {"nmse": "test NMSE", "prior_bits": "prior bits per image", "psnr": "PSNR dB", "perplexity": "perplexity"}
    width = 8 * (len(seeds) + 1)
    lines = [f"{'':20}" + "".join(f"   {label.get(k, k):<{width}}" for k in keys),
             f"{'':20}" + "".join("   " + "".join(f"{f'seed {s}':>8}" for s in seeds) + f"{'spread':>8}" for _ in keys)]
    for name in names:
        row = f"{name:20}"
        for key in keys:
            values = [by_seed[s][name].get(key) for s in seeds]
            known = [v for v in values if v is not None]
            spread = max(known) - min(known) if len(known) == len(values) else None
            row += "   " + "".join(f"{_fmt(key, v):>8}" for v in values + [spread])
        lines.append(row)
    return "\n".join(lines)


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if key == "nmse" else f"{value:.0f}" if key == "prior_bits" else f"{value:.2f}"
