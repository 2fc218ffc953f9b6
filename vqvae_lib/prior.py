"""A Gated PixelCNN prior over the grid of code indices: the VQ-VAE paper's second stage.

A trained VQ-VAE turns an image into an ``(h, w)`` grid of code indices. The prior models that grid
autoregressively in raster order (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders", arXiv 1606.05328)::

    p(k) = prod_{i, j} p(k_ij | k_<ij, label)

so sampling a grid one position at a time and decoding it with the VQ-VAE's decoder generates new
images. Shapes, in the package's vocabulary:

* ``indices``: ``(B, h, w)`` long in ``[0, K)``; each index is embedded into ``channels`` features
  (an embedding, not one float channel: index 7 is not "between" 6 and 8).
* ``logits``: ``(B, K, h, w)``; ``logits[:, :, i, j]`` depends only on positions before ``(i, j)`` in
  raster order, and on ``labels`` ``(B,)`` when the prior is class-conditional.

Why two stacks: a stack of masked 3x3 convolutions (the original PixelCNN) never sees a growing
wedge of pixels up and to the right, the "blind spot". Here a *vertical* stack sees every row
strictly above, as wide as its receptive field grows, and a *horizontal* stack sees the current row
to the left; the vertical stack feeds the horizontal one, never the other way. The first layer masks
the centre of both kernels so that position ``(i, j)`` never sees its own index; later layers can
include the centre because their inputs at ``(i, j)`` already exclude it. The masks are built into
the kernels' shapes (:class:`CausalConv2d`) rather than multiplied in. Every layer is gated,
``tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y)``, with the class embedding ``y`` as a bias.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from .data import make_loader
from .runtime import eval_mode, pick_device, seed_everything, unwrap
from .training import FitConfig, TrainResult, fit

__all__ = [
    "CausalConv2d",
    "GatedPixelCNN",
    "PriorConfig",
    "extract_codes",
    "evaluate_prior",
    "train_prior",
]


class CausalConv2d(nn.Conv2d):
    """A convolution that only looks at the past, built from a cropped kernel instead of a masked one.

    ``direction="vertical"``: the top ``k//2 + 1`` rows of a ``k x k`` kernel, i.e. the rows above the
    centre and the centre row, all ``k`` columns. ``direction="horizontal"``: the left ``k//2 + 1``
    taps of a ``1 x k`` kernel, the centre and its left. ``exclude_center=True`` drops the centre row
    (vertical) or the centre tap (horizontal), so the output at ``(i, j)`` cannot see ``(i, j)``.

    This equals a full ``k x k`` (or ``1 x k``) convolution whose weights below/right of the centre
    are masked to zero, but it never multiplies by those zeros: a third fewer FLOPs for ``k = 3``.
    The input is padded only above (and left and right, or only left), then the output cropped to
    the input's size.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, direction: str, exclude_center: bool = False
    ) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, not {kernel_size}")
        c = kernel_size // 2
        keep = c if exclude_center else c + 1
        if keep == 0:
            raise ValueError("exclude_center needs kernel_size >= 3")
        if direction == "vertical":
            shape, self.pad = (keep, kernel_size), (c, c, c, 0)  # (left, right, top, bottom)
        elif direction == "horizontal":
            shape, self.pad = (1, keep), (c, 0, 0, 0)
        else:
            raise ValueError(f"direction must be 'vertical' or 'horizontal', not {direction!r}")
        super().__init__(in_channels, out_channels, shape, padding=0)
        self.direction = direction

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return F.conv2d(F.pad(x, self.pad), self.weight, self.bias)[..., :h, :w]


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks, with a residual connection on the horizontal stack."""

    def __init__(self, channels: int, kernel_size: int, num_classes: int | None) -> None:
        super().__init__()
        self.v_conv = CausalConv2d(channels, 2 * channels, kernel_size, "vertical")
        self.h_conv = CausalConv2d(channels, 2 * channels, kernel_size, "horizontal")
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.label_bias = nn.Embedding(num_classes, 4 * channels) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        v_feat = self.v_conv(v)
        h_feat = self.h_conv(h) + self.v_to_h(v_feat)
        if self.label_bias is not None and labels is not None:
            bv, bh = self.label_bias(labels)[:, :, None, None].chunk(2, dim=1)
            v_feat, h_feat = v_feat + bv, h_feat + bh
        return _gate(v_feat), h + self.h_out(_gate(h_feat))


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over ``(h, w)`` grids of ``K`` code indices.

    Args:
        num_embeddings: ``K``, the VQ-VAE's codebook size.
        grid_shape: ``(h, w)`` of the VQ-VAE's code grid (the default shape for sampling).
        channels: features per position in both stacks.
        num_layers: gated layers after the first (masked-centre) layer; with ``kernel_size=3`` each
            layer grows the receptive field by one row and one column, so ``num_layers >= h + w``
            surely covers a whole grid; fewer can (notebook 9's 10 layers see all of an 8x8 grid's
            past, which a test checks).
        kernel_size: odd width of the masked kernels.
        num_classes: number of labels for class conditioning, or ``None`` for an unconditional prior.

    ``forward(indices, labels)`` returns logits ``(B, K, h, w)``; ``nll(indices, labels)`` the mean
    negative log-likelihood per code in nats. ``config`` holds the arguments for checkpoints.
    """

    def __init__(
        self,
        num_embeddings: int,
        grid_shape: tuple[int, int] = (8, 8),
        channels: int = 64,
        num_layers: int = 12,
        kernel_size: int = 3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            num_embeddings=num_embeddings,
            grid_shape=tuple(grid_shape),
            channels=channels,
            num_layers=num_layers,
            kernel_size=kernel_size,
            num_classes=num_classes,
        )
        self.num_embeddings = num_embeddings
        self.grid_shape = tuple(grid_shape)
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_embeddings, channels)
        self.v_in = CausalConv2d(channels, channels, kernel_size, "vertical", exclude_center=True)
        self.h_in = CausalConv2d(channels, channels, kernel_size, "horizontal", exclude_center=True)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel_size, num_classes) for _ in range(num_layers))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, 2 * channels, 1), nn.ReLU(), nn.Conv2d(2 * channels, num_embeddings, 1)
        )

    def _check(self, indices: Tensor, labels: Tensor | None) -> None:
        if indices.dim() != 3 or indices.dtype != torch.long:
            raise ValueError(f"expected long indices of shape (B, h, w), got {indices.dtype} {tuple(indices.shape)}")
        if self.num_classes and labels is None:
            raise ValueError(f"this prior is class-conditional ({self.num_classes} classes): pass labels")
        if not self.num_classes and labels is not None:
            raise ValueError("this prior is unconditional: it was built with num_classes=None, so pass no labels")

    def forward(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """``indices`` ``(B, h, w)``, ``labels`` ``(B,)`` -> logits ``(B, K, h, w)``."""
        self._check(indices, labels)
        x = self.embedding(indices).permute(0, 3, 1, 2)
        v, h = self.v_in(x), self.h_in(x)
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def nll(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood per code, in nats (``log K`` for a uniform guess)."""
        return F.cross_entropy(self(indices, labels), indices)


# -- configuration and data --------------------------------------------------------------------------


@dataclass
class PriorConfig(FitConfig):
    """A prior's size and how notebook 9 trains it; :meth:`preset` gives its settings per dataset.

    The size (48 channels, 10 gated layers) was chosen by a sweep on MNIST codes
    (``benchmarks/README.md``). The optimisation fields are :class:`~vqvae_lib.training.FitConfig`'s.
    """

    channels: int = 48
    num_layers: int = 10
    kernel_size: int = 3

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PriorConfig":
        """Notebook 9's prior for the codes of the ``mnist``, ``cifar10`` or ``food101``/``folder`` VQ-VAE: five
        evaluations in full mode, one at the end in fast mode."""
        presets = {
            "mnist": cls(steps=1200, steps_fast=150, eval_every=240),
            "cifar10": cls(steps=1500, steps_fast=150, eval_every=300),
            # the 16x16 grids of notebook 7's photos: a step costs 4x a CIFAR10 one per grid (265 ms for 32
            # grids on a 2-core CPU), and there are only hundreds of photos (or dozens of yours) to learn from
            "food101": cls(steps=600, steps_fast=30, batch_size=32, eval_every=150),
        }
        presets["folder"] = presets["food101"]  # your own photos
        if name not in presets:
            raise ValueError(f"no prior preset {name!r}; choose from {sorted(presets)}")
        return replace(presets[name], **overrides)

    def build_prior(
        self, num_embeddings: int, grid_shape: tuple[int, int], num_classes: int | None = None
    ) -> GatedPixelCNN:
        """A fresh prior, its weights drawn from ``seed`` (as :meth:`TrainConfig.build_model` does)."""
        seed_everything(self.seed)
        return GatedPixelCNN(
            num_embeddings, grid_shape, self.channels, self.num_layers, self.kernel_size, num_classes
        )


@torch.no_grad()
def extract_codes(
    vqvae: nn.Module, dataset, batch_size: int = 256, device: str | torch.device = "auto", progress: bool = True
) -> tuple[Tensor, Tensor]:
    """Encode every image of ``dataset`` once: ``(codes (N, h, w) long, labels (N,) long)`` on the CPU."""
    from tqdm.auto import tqdm

    dev = pick_device(device)
    vqvae = unwrap(vqvae)
    codes, labels = [], []
    with eval_mode(vqvae.to(dev)):
        for x, y in tqdm(make_loader(dataset, batch_size, shuffle=False), desc="encoding", disable=not progress):
            codes.append(vqvae.encode_indices(x.to(dev)).cpu())
            labels.append(torch.as_tensor(y).long())
    return torch.cat(codes), torch.cat(labels)


# -- training and evaluation ------------------------------------------------------------------------


@torch.no_grad()
def evaluate_prior(
    prior: GatedPixelCNN, codes: Tensor, labels: Tensor | None = None, batch_size: int = 512
) -> dict[str, float]:
    """Test negative log-likelihood: ``nll_nats`` and ``bits_per_code`` per code, ``uniform_nats`` (``log K``)
    for comparison, and ``bits_per_image`` for a whole grid."""
    dev = next(prior.parameters()).device
    total = 0.0
    with eval_mode(prior):
        for start in range(0, len(codes), batch_size):
            idx = codes[start : start + batch_size].to(dev)
            lab = labels[start : start + batch_size].to(dev) if prior.num_classes else None
            total += float(F.cross_entropy(prior(idx, lab), idx, reduction="sum"))
    nats = total / codes.numel()
    h, w = codes.shape[1:]
    return {
        "nll_nats": nats,
        "bits_per_code": nats / math.log(2),
        "uniform_nats": math.log(prior.num_embeddings),
        "bits_per_image": nats / math.log(2) * h * w,
    }


def train_prior(
    prior: GatedPixelCNN,
    codes: Tensor,
    labels: Tensor | None,
    config: PriorConfig | FitConfig,
    *,
    eval_codes: tuple[Tensor, Tensor | None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | bool | None = None,
    extra: dict | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit the prior to code grids by cross-entropy with :func:`~vqvae_lib.training.fit`.

    ``codes`` ``(N, h, w)`` and ``labels`` ``(N,)`` (or ``None``) come from :func:`extract_codes`;
    ``eval_codes`` is a held-out ``(codes, labels)`` pair for :func:`evaluate_prior`. Batches are a
    fresh seeded permutation of the grids each epoch, so a resumed run sees the ones an uninterrupted
    run would. ``history["nll"]`` is the training loss in nats per code, every step; ``extra`` is stored
    in the checkpoint (e.g. which VQ-VAE made the codes).
    """
    use_labels = labels is not None and bool(prior.num_classes)
    dev = pick_device(config.device)
    grids = TensorDataset(codes.to(dev), labels.to(dev)) if use_labels else TensorDataset(codes.to(dev))  # type: ignore[union-attr]
    loader = make_loader(grids, config.batch_size, seed=config.seed)  # a fresh seeded shuffle per epoch

    def loss_fn(batch: tuple[Tensor, ...], device: torch.device) -> dict[str, Tensor]:
        return {"nll": prior.nll(batch[0], batch[1] if use_labels else None)}

    def evaluate_fn() -> dict[str, float]:
        test_codes, test_labels = eval_codes  # type: ignore[misc]
        return evaluate_prior(prior, test_codes, test_labels if use_labels else None)

    return fit(
        prior, loss_fn, loader.batches_from, config, loss_key="nll", evaluate_fn=None if eval_codes is None else evaluate_fn,
        describe_eval=_describe_eval, checkpoint_path=checkpoint_path, resume=resume, extra=extra, progress=progress,
        desc="training prior", callback=callback,
    )  # fmt: skip


def _describe_eval(m: dict, seconds: float) -> str:
    return (f"step {m['step']:>6} | {seconds:6.1f} s training | test nll {m['nll_nats']:.3f} nats = "
            f"{m['bits_per_code']:.3f} bits per code (uniform {m['uniform_nats']:.3f} nats)")  # fmt: skip
