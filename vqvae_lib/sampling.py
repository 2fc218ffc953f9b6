"""Sampling from a trained prior: draw code grids position by position, decode them into images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prior import GatedPixelCNN
from .runtime import eval_mode, unwrap

__all__ = ["sample", "sample_indices"]


def _labels_for(prior: GatedPixelCNN, label: int | Tensor | None, n: int, device: torch.device) -> Tensor | None:
    if label is None:
        if prior.num_classes:
            raise ValueError(f"this prior is class-conditional: pass label= (0 .. {prior.num_classes - 1})")
        return None
    if not prior.num_classes:
        raise ValueError("this prior is unconditional: pass label=None")
    labels = torch.as_tensor(label, dtype=torch.long, device=device)
    labels = labels.expand(n).clone() if labels.dim() == 0 else labels
    if labels.shape != (n,):
        raise ValueError(f"label must be one int or {n} labels, got shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= prior.num_classes:
        raise ValueError(f"labels must lie in 0 .. {prior.num_classes - 1}")
    return labels


@torch.no_grad()
def sample_indices(
    prior: GatedPixelCNN,
    n: int,
    label: int | Tensor | None = None,
    temperature: float = 1.0,
    grid_shape: tuple[int, int] | None = None,
    seed: int | None = None,
) -> Tensor:
    """Draw ``n`` code grids ``(n, h, w)`` position by position in raster order.

    ``label``: one class for all ``n`` grids or a ``(n,)`` tensor (class-conditional priors only).
    ``temperature`` divides the logits: below 1 sharper and less varied, above 1 noisier.
    ``seed`` makes the draw reproducible (a private generator; the global RNG is left alone).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    dev = next(prior.parameters()).device
    labels = _labels_for(prior, label, n, dev)
    h, w = grid_shape or prior.grid_shape
    generator = torch.Generator(device=dev)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    grid = torch.zeros(n, h, w, dtype=torch.long, device=dev)
    with eval_mode(prior):
        for i in range(h):
            for j in range(w):
                probs = F.softmax(prior(grid, labels)[:, :, i, j].float() / temperature, dim=1)
                grid[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return grid


@torch.no_grad()
def sample(
    prior: GatedPixelCNN,
    vqvae: nn.Module,
    n: int,
    label: int | Tensor | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Tensor:
    """Generate ``n`` images ``(n, C, H, W)`` in [0, 1]: sample code grids, decode them with ``vqvae``."""
    vqvae = unwrap(vqvae)
    k = vqvae.quantizer.num_embeddings
    if k != prior.num_embeddings:
        raise ValueError(f"the prior models {prior.num_embeddings} codes but the VQ-VAE has {k}")
    grid = sample_indices(prior, n, label, temperature, seed=seed)
    with eval_mode(vqvae):
        dev = next(vqvae.parameters()).device
        return vqvae.decode_indices(grid.to(dev)).clamp(0, 1)

