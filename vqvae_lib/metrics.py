"""Reconstruction and codebook metrics, in the units the peers report.

* MSE on images in [0, 1];
* NMSE = MSE / variance of the images (what the Sonnet and Keras VQ-VAE examples call the
  normalised reconstruction error: 1.0 is as bad as predicting the mean pixel);
* PSNR = 10 log10(1 / MSE) dB, computed from the dataset's pooled MSE;
* perplexity = exp(entropy of code usage): 1 when one code does everything, K when all are equal;
* codes used = number of codes chosen at least once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["nmse", "psnr", "perplexity", "codes_used"]


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
