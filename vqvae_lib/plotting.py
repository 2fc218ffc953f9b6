"""Figures the notebooks show: image grids, reconstructions, training curves, code grids, codebook usage."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "image_grid", "show_images", "show_reconstructions", "plot_history", "show_code_grids", "plot_codebook_usage",
    "show_frames", "show_error_maps", "plot_training_curves",
]  # fmt: skip


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> one ``(H', W', 3)`` array for ``imshow``."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)
    return grid.permute(1, 2, 0).numpy()


def show_images(images: Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 1.0, pad_value: float = 1.0):
    """Show a grid of images; returns the axes. ``pad_value`` is the grey of the frame between them (1.0
    white; a darker frame shows where white images end)."""
    grid = image_grid(images, nrow, pad_value=pad_value)
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


# what a history's keys are called on a figure: in a legend, and as the title of a panel of their own
_LABELS = {
    "recon": "recon (MSE)", "commitment": "commitment (unscaled)", "perplexity": "perplexity (batch)",
    "codes_used": "codes used (batch)", "nll": "training batches", "mse": "test MSE", "nll_nats": "test grids",
}  # fmt: skip
_TITLES = {"nll": "negative log-likelihood per code"}
_VQVAE_PANELS = (("total", "recon", "codebook", "commitment"), ("perplexity",), ("codes_used",))


def plot_history(
    history: dict,
    panels: Sequence[Sequence[str]] | None = None,
    test: dict[str, str] | None = None,
    lines: dict[str, tuple[float, str]] | None = None,
    log_scale: Sequence[str] | None = None,
    num_embeddings: int | None = None,
    smooth: int = 20,
    ylabel: str | None = None,
    title: str | None = None,
):
    """Any training history (what :func:`~vqvae_lib.training.fit` returns) against steps, one panel per
    group of per-step series, smoothed over ``smooth`` steps, with the evaluations as dots.

    Args:
        panels: groups of history keys, one panel each. Default: for a VQ-VAE the loss terms, perplexity
            and codes used; for any other history one panel per logged series.
        test: ``{history key: evaluation key}``: plot ``history["eval"]``'s values of the evaluation key on
            that key's panel (default for a VQ-VAE: test MSE beside the reconstruction loss).
        lines: ``{history key: (value, label)}``: a dashed horizontal line on that key's panel;
            ``num_embeddings=K`` adds ``K`` to the perplexity and codes-used panels.
        log_scale: keys whose panel has a log y axis (default for a VQ-VAE: the loss terms).
    """
    logged = [k for k in history if k not in ("step", "lr", "eval")]
    is_vqvae = all(k in history for group in _VQVAE_PANELS for k in group)
    panels = panels or (_VQVAE_PANELS if is_vqvae else [(k,) for k in logged])
    test = test if test is not None else ({"recon": "mse"} if is_vqvae else {})
    log_scale = log_scale if log_scale is not None else (("total",) if is_vqvae else ())
    lines = dict(lines or {})
    if num_embeddings:
        lines.update({k: (num_embeddings, f"K = {num_embeddings}") for k in ("perplexity", "codes_used") if k in history})
    steps = np.asarray(history["step"])
    evals = history.get("eval") or []

    def smoothed(values: Sequence[float]) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        if smooth > 1 and len(v) > smooth:
            return np.convolve(v, np.ones(smooth) / smooth, mode="valid")
        return v

    fig, axes = plt.subplots(1, len(panels), figsize=(max(7, 5 * len(panels)), 3.6), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        # a lone series needs no legend entry unless test points share its panel
        named = len(keys) > 1 or any(k in test for k in keys)
        for key in keys:
            v = smoothed(history[key])
            ax.plot(steps[len(steps) - len(v) :], v, label=_LABELS.get(key, key) if named else None)
            if key in test and evals:
                metric = test[key]
                ax.plot([e["step"] for e in evals], [e[metric] for e in evals], "ko", ms=4, label=_LABELS.get(metric, metric))
            if key in lines:
                ax.axhline(lines[key][0], color="gray", ls="--", lw=1, label=lines[key][1])
        if any(k in log_scale for k in keys):
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        if title and len(panels) == 1:  # one panel: the figure's title is the panel's
            ax.set_title(title)
        else:
            ax.set_title("loss terms" if len(keys) > 1 else _TITLES.get(keys[0], _LABELS.get(keys[0], keys[0])))
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        if ylabel:
            ax.set_ylabel(ylabel)
    if title and len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_code_grids(images: Tensor, indices: Tensor, max_labelled: int = 8, *, usage: Tensor | None = None):
    """Each image beside its ``(h, w)`` grid of code indices, each position coloured by how common its
    code is: its share of all positions in ``usage`` (``(K,)`` counts, e.g. ``evaluate(...)["histogram"]``),
    else in the grids shown. Colouring by the index itself would be noise: neighbouring indices are
    unrelated codes. Grids up to ``max_labelled`` rows also print each index.
    ``images`` ``(N, C, H, W)``, ``indices`` ``(N, h, w)``."""
    images, indices = images.detach().cpu(), indices.detach().cpu()
    n = len(images)
    k = int(indices.max()) + 1 if usage is None else len(usage)
    counts = torch.bincount(indices.flatten(), minlength=k) if usage is None else torch.as_tensor(usage).detach().cpu()
    share = (counts.double() / counts.sum().clamp_min(1)).numpy()
    vmax = float(share.max()) or 1.0
    fig, axes = plt.subplots(1, 2 * n, figsize=(4.4 * n, 2.6), gridspec_kw={"width_ratios": [1, 1.25] * n}, layout="constrained")
    for i in range(n):
        axes[2 * i].imshow(images[i].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2 * i].axis("off")
        grid = indices[i].numpy()
        shown = axes[2 * i + 1].imshow(share[grid], cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        if indices.shape[1] <= max_labelled:
            for (r, c), code in np.ndenumerate(grid):
                dark = share[code] < 0.6 * vmax
                axes[2 * i + 1].text(c, r, int(code), ha="center", va="center", fontsize=9, color="white" if dark else "black")
        axes[2 * i + 1].set_title(f"{tuple(indices.shape[1:])} code indices", fontsize=10)
        axes[2 * i + 1].axis("off")
    bar = fig.colorbar(shown, ax=list(axes), fraction=0.02, pad=0.01)
    bar.set_label("share of positions\nusing that code", fontsize=9)
    bar.ax.tick_params(labelsize=9)
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
    width = image_grid(frames[idx], len(idx)).shape[1]
    # twice the pixels' size, but never wider than 14 inches (1,120 pixels at the notebooks' 80 dpi)
    ax = show_images(frames[idx], nrow=len(idx), title=title, scale=min(2.0, 14 * 40 / width))
    return ax.figure


def show_error_maps(x: Tensor, reconstructions: dict[str, Tensor], title: str | None = None):
    """Where each model's reconstruction is wrong: the images ``x`` ``(N, C, H, W)`` on the top row, then one
    row per model of ``|x - x_hat|`` (averaged over colours) on one shared colour scale, so that a row twice
    as bright has twice the error. Each row is labelled with its model's mean squared error on these images.
    Differences too small to see in the reconstructions themselves show here. Returns the figure."""
    from matplotlib import colormaps

    x = x.detach().cpu().float()
    reconstructions = {name: x_hat.detach().cpu().float() for name, x_hat in reconstructions.items()}
    errors = {name: (x_hat - x).abs().mean(1) for name, x_hat in reconstructions.items()}
    # the 99th percentile over every model's pixels is the brightest colour: the same scale in every row
    top = float(torch.cat([e.flatten() for e in errors.values()]).quantile(0.99).clamp_min(1e-8))
    n = len(x)
    fig, axes = plt.subplots(len(errors) + 1, 1, figsize=(min(14.0, 1.1 * n + 2.5), 1.35 * (len(errors) + 1)))
    show_images(x, nrow=n, ax=axes[0], title="test images")
    for ax, (name, error) in zip(axes[1:], errors.items()):
        heat = torch.from_numpy(colormaps["inferno"]((error / top).clamp(0, 1).numpy())[..., :3]).permute(0, 3, 1, 2)
        mse = F.mse_loss(reconstructions[name], x).item()
        show_images(heat, nrow=n, ax=ax, pad_value=1.0)
        ax.set_title(f"{name}: |x - x_hat|, MSE {mse:.4f}", fontsize=11)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(runs: dict[str, dict], title: str, smooth: int = 9):
    """Several runs' training reconstruction error against steps (left) and against seconds (right, each
    run's mean pace), as a running mean of ``smooth`` logged points. ``runs[name]`` holds ``curve_steps``,
    ``curve_recon``, ``steps`` and ``seconds`` (as :func:`vqvae_lib.comparison.compare` returns them)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, r in runs.items():
        steps, recon = np.array(r["curve_steps"]), np.array(r["curve_recon"])
        mean = np.convolve(recon, np.ones(smooth) / smooth, mode="valid")
        half = smooth // 2
        for ax, x in zip(axes, (steps, steps * r["seconds"] / r["steps"])):
            ax.plot(x[half : half + len(mean)], mean, label=name)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training seconds (each run's mean pace)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("training reconstruction MSE")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    fig.suptitle(f"{title} (running mean of {smooth} logged points)")
    fig.tight_layout()
    return fig
