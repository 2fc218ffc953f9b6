"""Reconstruction and codebook metrics, in the units the peers report.

* MSE on images in [0, 1];
* NMSE = MSE / variance of the images (what the Sonnet and Keras VQ-VAE examples call the
  normalised reconstruction error: 1.0 is as bad as predicting the mean pixel);
* PSNR = 10 log10(1 / MSE) dB, computed from the dataset's pooled MSE;
* perplexity = exp(entropy of code usage): 1 when one code does everything, K when all are equal;
* codes used = number of codes chosen at least once.

:func:`evaluate` computes all of them for a model over a whole loader.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .data import as_loader
from .runtime import all_reduce_sum, eval_mode, pick_device, unwrap, world

__all__ = ["nmse", "psnr", "perplexity", "codes_used", "evaluate"]


def nmse(mse: float, variance: float) -> float:
    """Normalised MSE: ``mse / variance``."""
    return mse / variance if variance > 0 else float("nan")


def psnr(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images with values in ``[0, data_range]``."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def perplexity(counts: Tensor) -> float:
    """``exp(entropy)`` of a usage histogram ``(K,)`` of code counts."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def codes_used(counts: Tensor) -> int:
    """How many codes have a non-zero count in a usage histogram ``(K,)``."""
    return int((counts > 0).sum())


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
    loader = as_loader(loader, 256, False, 0)
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
