"""Figures the notebooks show: image grids, reconstructions, training curves, codebook usage."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "show_images", "show_reconstructions", "plot_history", "plot_codebook_usage", "show_frames"]


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> one ``(H', W', 3)`` array for ``imshow``."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)
    return grid.permute(1, 2, 0).numpy()


def show_images(images: Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 1.0):
    """Show a grid of images; returns the axes."""
    grid = image_grid(images, nrow)
    if ax is None:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(scale * w / 40, scale * h / 40))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def show_reconstructions(x: Tensor, x_hat: Tensor, n: int = 8, title: str | None = None):
    """Targets on the top row, reconstructions below; returns the figure."""
    n = min(n, len(x))
    fig, axes = plt.subplots(2, 1, figsize=(1.2 * n, 3.0))
    show_images(x[:n], nrow=n, ax=axes[0], title="x (target)")
    show_images(x_hat[:n], nrow=n, ax=axes[1], title="x_hat (reconstruction)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: dict, num_embeddings: int | None = None, smooth: int = 20, title: str | None = None):
    """Loss terms (log scale), perplexity and codes used against steps; evaluations as dots."""
    steps = np.asarray(history["step"])

    def smoothed(values: Sequence[float]) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        if smooth > 1 and len(v) > smooth:
            kernel = np.ones(smooth) / smooth
            return np.convolve(v, kernel, mode="valid")
        return v

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for key, label in [("total", "total"), ("recon", "recon (MSE)"), ("codebook", "codebook"), ("commitment", "commitment (unscaled)")]:
        v = smoothed(history[key])
        axes[0].plot(steps[len(steps) - len(v):], v, label=label)
    evals = history.get("eval") or []
    if evals:
        axes[0].plot([e["step"] for e in evals], [e["mse"] for e in evals], "ko", ms=4, label="test MSE")
    axes[0].set_yscale("log")
    axes[0].set_title("loss terms")
    axes[0].legend(fontsize=8)
    for ax, key, name in [(axes[1], "perplexity", "perplexity (batch)"), (axes[2], "codes_used", "codes used (batch)")]:
        v = smoothed(history[key])
        ax.plot(steps[len(steps) - len(v):], v)
        if num_embeddings:
            ax.axhline(num_embeddings, color="gray", ls="--", lw=1, label=f"K = {num_embeddings}")
            ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_codebook_usage(counts: Tensor, title: str = "codebook usage", ax=None):
    """Bar chart of how often each code is used, sorted from most to least used."""
    counts = torch.as_tensor(counts).detach().cpu().double()
    order = torch.argsort(counts, descending=True)
    share = (counts[order] / counts.sum().clamp_min(1)).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.8))
    ax.bar(np.arange(len(share)), share, width=1.0)
    used = int((counts > 0).sum())
    ax.set_title(f"{title}: {used} of {len(counts)} codes used")
    ax.set_xlabel("code (sorted by usage)")
    ax.set_ylabel("share of positions")
    return ax


def show_frames(frames: Tensor, title: str | None = None, max_frames: int = 12):
    """A static strip of interpolation frames (evenly chosen if there are more than ``max_frames``)."""
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    ax = show_images(frames[idx], nrow=len(idx), title=title, scale=2.0)
    return ax.figure
