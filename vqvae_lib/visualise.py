"""Pictures of the model drawn from the model itself: architecture diagrams and codebook views.

``python tools/draw_model_figures.py`` draws the ones in ``model_visualisation/``.

The architecture diagram runs a dummy image through the real modules with forward hooks and labels
every stage with the shape it actually produced, so the picture cannot drift from the code. The
codebook figures read a trained checkpoint: how often each code is used, where the codes lie (a
2-D PCA of the ``K x D`` codebook, sized by usage), and what the most used codes draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial


import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import Tensor, nn

from .fsq import FiniteScalarQuantizer
from .model import VQVAE, ResidualStack
from .residual_vq import ResidualVectorQuantizer
from .runtime import eval_mode

__all__ = ["Stage", "trace_stages", "summary_table", "draw_architecture", "draw_codebook", "code_patches", "draw_gated_layer"]


@dataclass
class Stage:
    """One step of the forward pass: its module, the shape it output and its own parameter count."""

    part: str  # "encoder", "quantizer" or "decoder"
    name: str
    shape: tuple[int, ...]
    parameters: int


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose2d):
        return f"ConvT {module.kernel_size[0]}x{module.kernel_size[1]} /{module.stride[0]}"
    if isinstance(module, nn.Conv2d):
        stride = f" /{module.stride[0]}" if module.stride[0] > 1 else ""
        return f"Conv {module.kernel_size[0]}x{module.kernel_size[1]}{stride}"
    if isinstance(module, ResidualStack):
        return f"{len(module.layers)} x residual block"
    return type(module).__name__


@torch.no_grad()
def trace_stages(model: VQVAE, image_shape: tuple[int, int, int]) -> list[Stage]:
    """Run one dummy image ``(C, H, W)`` through ``model`` and record each stage's output shape."""
    stages: list[Stage] = [Stage("input", "image x", (1, *image_shape), 0)]
    hooks = []

    def record(part: str, module: nn.Module):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            params = sum(p.numel() for p in module.parameters())
            stages.append(Stage(part, _describe(module), tuple(out.shape), params))

        return hook

    for part, seq in (("encoder", model.encoder.net), ("decoder", model.decoder.net)):
        for module in seq:
            if not isinstance(module, nn.ReLU):
                hooks.append(module.register_forward_hook(record(part, module)))
    hooks.append(model.quantizer.register_forward_hook(record("quantizer", model.quantizer)))
    try:
        with eval_mode(model):
            model(torch.zeros(1, *image_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    for s in stages:
        if s.part == "quantizer":
            s.name, s.parameters = _describe_quantizer(model.quantizer)
    return stages


def _describe_quantizer(q: nn.Module) -> tuple[str, int]:
    """The quantizer's stage name and its own numbers (code vectors and, where it has them, maps)."""
    k, d = q.num_embeddings, q.embedding_dim
    maps = sum(p.numel() for name, p in q.named_parameters() if name.startswith("project_"))
    if isinstance(q, FiniteScalarQuantizer):
        return f"FSQ: {len(q.levels)} numbers rounded to {'x'.join(map(str, q.levels))} levels ({k} codes, no codebook)", maps
    if isinstance(q, ResidualVectorQuantizer):
        sizes = ", ".join(map(str, q.stage_sizes))
        return f"residual VQ: stages of {sizes} codes of length {d} ({k} combinations)", sum(q.stage_sizes) * d
    if getattr(q, "lookup_dim", None):
        return f"cosine lookup ({k} x {q.lookup_dim} unit codes, maps {d} -> {q.lookup_dim} -> {d})", k * q.lookup_dim + maps
    return f"nearest code ({k} x {d} codebook)", k * d


def summary_table(model: VQVAE, image_shape: tuple[int, int, int]) -> str:
    """A markdown table of every stage's output shape and parameters, with totals."""
    rows = ["| part | stage | output shape | parameters |", "| --- | --- | --- | --- |"]
    ema = bool(model.config.get("ema")) and not isinstance(model.quantizer, FiniteScalarQuantizer)
    plain = model.config.get("quantizer", "vq") == "vq"
    for s in trace_stages(model, image_shape):
        note = ""
        if s.part == "quantizer" and ema:
            note = " (a buffer: EMA-updated, not trained)" if plain else " (the code vectors are buffers, EMA-updated)"
        rows.append(f"| {s.part} | {s.name} | {' x '.join(map(str, s.shape[1:]))} | {s.parameters:,}{note} |")
    total = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    rows.append(f"| total | | | {total:,} trainable (+ {buffers:,} in buffers) |")
    return "\n".join(rows)


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape[1:]))


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 9.5, weight: str = "normal") -> None:
    """A rounded box with its lower left corner at ``(x, y)`` and ``text`` in its centre (the diagrams' one box)."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=color, ec="#333333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _arrow(ax, x0: float, y0: float, x1: float, y1: float, color: str = "#333333", style: str = "-|>", ls: str = "-",
           lw: float = 1.3, rad: float = 0.0, head: float = 12) -> None:
    """An arrow from ``(x0, y0)`` to ``(x1, y1)``, bent by ``rad`` (the diagrams' one arrow)."""
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=head, color=color,
                                 linestyle=ls, lw=lw, connectionstyle=f"arc3,rad={rad}"))  # fmt: skip


def draw_architecture(model: VQVAE, image_shape: tuple[int, int, int], title: str | None = None):
    """Encoder -> z_e -> nearest code -> z_q -> decoder, with the shapes the modules really produced,
    the ``K x D`` codebook, the three loss terms and the straight-through gradient path."""
    stages = trace_stages(model, image_shape)
    enc = [s for s in stages if s.part == "encoder"]
    dec = [s for s in stages if s.part == "decoder"]
    z_e, z_q = enc[-1], next(s for s in stages if s.part == "quantizer")
    k, d = model.quantizer.num_embeddings, model.quantizer.embedding_dim
    beta = model.beta

    # 15 x 8.1 units on 12 x 6.2 inches, the axes filling the figure: at the notebooks' 80 dpi the figure is
    # 960 px wide, and no label is below 11 pt (12 px), the size the notebooks' figures are read at
    fig, ax = plt.subplots(figsize=(12, 6.2))
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=0.94)
    ax.set_xlim(0, 15)
    ax.set_ylim(-0.9, 7.2)
    ax.axis("off")

    box, arrow = partial(_box, ax), partial(_arrow, ax)
    col_w, row_h, step, top = 2.45, 0.64, 0.82, 5.6

    def column(x, stages_, color, label):
        ax.text(x + col_w / 2, top + row_h + 0.25, label, ha="center", fontsize=12.5, weight="bold")
        for i, s in enumerate(stages_):
            y = top - i * step
            box(x, y, col_w, row_h, f"{s.name}\n{_shape(s.shape)}", color, fontsize=11.5)
            if i:
                arrow(x + col_w / 2, y + step, x + col_w / 2, y + row_h + 0.02)
        return top - (len(stages_) - 1) * step

    # input image, encoder
    box(0.05, 4.75, 1.45, 1.0, f"x\n{_shape(stages[0].shape)}", "#eeeeee", fontsize=12, weight="bold")
    enc_bottom = column(1.8, enc, "#cfe2f3", "encoder")
    arrow(1.5, 5.25, 1.8, top + row_h / 2)
    # z_e, quantizer and codebook
    box(4.6, 2.85, 1.65, 0.95, f"z_e\n{_shape(z_e.shape)}", "#cfe2f3", fontsize=12, weight="bold")
    arrow(1.8 + col_w, enc_bottom + row_h / 2, 4.6, 3.3, rad=0.15)
    box(6.55, 2.7, 2.55, 1.25, "nearest code\nargmin_j ||z_e - e_j||²\nat each position", "#fde9c9", fontsize=11.5)
    arrow(6.25, 3.32, 6.55, 3.32)
    # the codebook as a K x D grid
    cb_x, cb_y, cb_w, cb_h = 7.05, 4.75, 1.55, 1.35
    ax.add_patch(Rectangle((cb_x, cb_y), cb_w, cb_h, fc="#fde9c9", ec="#333333"))
    for r in np.linspace(cb_y, cb_y + cb_h, 9)[1:-1]:
        ax.plot([cb_x, cb_x + cb_w], [r, r], color="#c9a26b", lw=0.6)
    ax.text(cb_x + cb_w / 2, cb_y + cb_h + 0.2, f"codebook: K = {k} codes x D = {d}", ha="center", fontsize=12.5, weight="bold")
    ax.text(cb_x - 0.12, cb_y + cb_h / 2, "K", ha="right", va="center", fontsize=11.5)
    ax.text(cb_x + cb_w / 2, cb_y - 0.1, "D", ha="center", va="top", fontsize=11.5)
    arrow(cb_x + cb_w / 2, cb_y - 0.45, cb_x + cb_w / 2, 4.0)
    box(9.4, 2.85, 1.75, 0.95, f"z_q = e_k\n{_shape(z_q.shape)}", "#fde9c9", fontsize=12, weight="bold")
    arrow(9.1, 3.32, 9.4, 3.32)
    # decoder, then the reconstruction below it
    dec_x = 12.2
    dec_bottom = column(dec_x, dec, "#d9ead3", "decoder")
    arrow(11.15, 3.6, dec_x, top + row_h / 2, rad=-0.25)
    box(dec_x + (col_w - 1.45) / 2, 1.0, 1.45, 1.0, f"x̂\n{_shape(dec[-1].shape)}", "#eeeeee", fontsize=12, weight="bold")
    arrow(dec_x + col_w / 2, dec_bottom, dec_x + col_w / 2, 2.02)

    # straight-through gradient: from z_q back to z_e, around the argmin
    arrow(10.2, 2.8, 5.45, 2.8, color="#c0392b", ls="--", lw=1.6, rad=-0.35)
    ax.text(7.8, 1.05, "straight-through gradient: ∂L/∂z_e := ∂L/∂z_q\n(argmin has no gradient; z_q = z_e + sg[e_k - z_e])",
            ha="center", fontsize=11, color="#c0392b")  # fmt: skip
    # the three loss terms
    ax.text(
        0.1, -0.75,
        f"loss = ||x - x̂||²  (reconstruction: encoder + decoder)\n"
        f"      + ||sg[z_e] - e_k||²  (codebook: moves e_k{'; replaced by EMA updates' if model.config['ema'] else ''})\n"
        f"      + β ||z_e - sg[e_k]||²  (commitment, β = {beta}: moves the encoder)",
        fontsize=11, family="monospace", va="bottom",
    )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    ax.set_title(title or f"VQ-VAE for {_shape(stages[0].shape)} images: {params:,} parameters", fontsize=13)
    return fig


# -- codebook pictures --------------------------------------------------------------------------


@torch.no_grad()
def code_patches(model: VQVAE, codes: Tensor, grid_shape: tuple[int, int], background: int) -> Tensor:
    """What each code draws: a grid of the ``background`` code with ``code`` in the middle, decoded,
    and cropped to the middle position's neighbourhood. Returns ``(len(codes), C, p, p)``."""
    h, w = grid_shape
    grids = torch.full((len(codes), h, w), background, dtype=torch.long, device=codes.device)
    grids[:, h // 2, w // 2] = codes
    images = model.decode_indices(grids).clamp(0, 1)
    f = model.downsample
    cy, cx = (h // 2) * f + f // 2, (w // 2) * f + f // 2
    r = f  # one position's footprint plus half a position on each side
    return images[:, :, max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r]


def draw_codebook(model: VQVAE, counts: Tensor, grid_shape: tuple[int, int], top: int = 32, title: str = ""):
    """Usage histogram, 2-D PCA of the code vectors sized by usage, and the patches of the ``top`` codes."""
    from .metrics import perplexity
    from .plotting import image_grid, plot_codebook_usage

    counts = torch.as_tensor(counts).double().cpu()
    q = model.quantizer
    codebook = (q.codes() if hasattr(q, "codes") else q.codebook).detach().double().cpu()  # what the lookup compares
    if codebook.shape[1] < 2:  # a one-number code space: PCA needs a second axis
        codebook = torch.cat([codebook, torch.zeros_like(codebook)], dim=1)
    order = torch.argsort(counts, descending=True)
    share = counts / counts.sum().clamp_min(1)

    fig = plt.figure(figsize=(15, 4.4))
    grid = fig.add_gridspec(1, 3, width_ratios=[1.2, 1, 1.2])
    plot_codebook_usage(counts, title=f"perplexity {perplexity(counts):.0f}", ax=fig.add_subplot(grid[0]))

    ax = fig.add_subplot(grid[1])
    centred = codebook - codebook.mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()
    explained = (s[:2] ** 2).sum() / (s**2).sum()
    sizes = 4 + 300 * (share / share.max().clamp_min(1e-12)).numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=np.where(counts.numpy() > 0, "#4c72b0", "#dd8452"), alpha=0.6, lw=0)
    ax.set_title(f"codebook, 2-D PCA ({100 * explained:.0f}% of variance)\nsize = usage, orange = unused")
    ax.set_xticks([]), ax.set_yticks([])

    ax = fig.add_subplot(grid[2])
    device = next(model.parameters()).device
    patches = code_patches(model.eval(), order[:top].to(device), grid_shape, int(order[0]))
    ax.imshow(image_grid(patches.cpu(), nrow=8, padding=1), interpolation="nearest")
    ax.set_title(f"what the {top} most used codes draw (most used first),\neach amid the most used code, decoded")
    ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_gated_layer(channels: int = 48, kernel_size: int = 3):
    """One layer of the Gated PixelCNN (:class:`vqvae_lib.prior.GatedLayer`) as a diagram: the vertical
    stack on top, the horizontal stack below, the label's bias into both gates, the vertical features
    feeding the horizontal stack and never the other way, and the horizontal stack's residual path."""
    c, k = channels, kernel_size
    fig, ax = plt.subplots(figsize=(14, 4.6))  # 1,120 pixels wide at the notebooks' 80 dpi
    ax.set_xlim(0, 15), ax.set_ylim(-0.2, 6.3)
    ax.axis("off")

    def box(x, y, text, color, w, h=0.9):  # placed by its centre
        _box(ax, x - w / 2, y - h / 2, w, h, text, color, fontsize=10.5)

    def plus(x, y):
        ax.add_patch(plt.Circle((x, y), 0.22, fc="white", ec="#333333", lw=1))
        ax.text(x, y, "+", ha="center", va="center", fontsize=12)

    arrow = partial(_arrow, ax, head=13)

    top, bottom, label_y = 4.5, 1.8, 5.8
    blue, green, orange, grey = "#d6e4f5", "#dcefd8", "#fbe3c8", "#eeeeee"
    box(1.1, top, "v: the rows above", grey, 1.9)
    box(3.9, top, f"{k}x{k} conv: rows above\nand this row, {2 * c} ch.", blue, 2.7)
    plus(6.0, top)
    box(8.6, top, "gate: tanh(a) x sigmoid(b)", blue, 3.0)
    box(11.6, top, "v out", grey, 1.3)
    box(1.1, bottom, "h: this row, left", grey, 1.9)
    box(3.9, bottom, f"1x{k} conv: the left and\nthis position, {2 * c} ch.", green, 2.7)
    plus(5.6, bottom)
    plus(6.3, bottom)
    box(8.6, bottom, "gate: tanh(a) x sigmoid(b)", green, 3.0)
    box(11.0, bottom, "1x1 conv", green, 1.2)
    plus(12.4, bottom)
    box(13.8, bottom, "h out", grey, 1.3)
    box(5.0, (top + bottom) / 2, "1x1 conv", blue, 1.2, 0.6)
    box(9.6, label_y, "label y -> embedding: one bias per class", orange, 4.2, 0.55)
    arrow(2.05, top, 2.55, top), arrow(5.25, top, 5.78, top), arrow(6.22, top, 7.1, top), arrow(10.1, top, 10.95, top)
    arrow(2.05, bottom, 2.55, bottom), arrow(5.25, bottom, 5.38, bottom), arrow(5.82, bottom, 6.08, bottom)
    arrow(6.52, bottom, 7.1, bottom), arrow(10.1, bottom, 10.4, bottom), arrow(11.6, bottom, 12.18, bottom)
    arrow(12.62, bottom, 13.15, bottom)
    arrow(5.0, top - 0.45, 5.0, (top + bottom) / 2 + 0.3)  # the vertical features, before the gate, go down
    arrow(5.0, (top + bottom) / 2 - 0.3, 5.5, bottom + 0.2)
    arrow(7.5, label_y - 0.28, 6.15, top + 0.18, color="#c26b1a")
    arrow(8.2, label_y - 0.28, 6.45, bottom + 0.2, color="#c26b1a", rad=-0.25)
    arrow(1.1, bottom - 0.45, 12.4, bottom - 0.22, color="#555555", rad=0.15, ls="--")
    ax.text(6.8, 0.05, "residual: h out = h + ...", fontsize=10, color="#555555")
    ax.text(0.1, 3.15, "the vertical stack feeds\nthe horizontal one,\nnever the other way", fontsize=10, va="center")
    ax.set_title(f"one gated layer of the Gated PixelCNN ({c} channels per stack)", fontsize=12)
    return fig
