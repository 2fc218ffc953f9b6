"""Finite scalar quantization (FSQ; Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple", arXiv 2309.15505): no codebook to learn, so nothing to collapse.

Each of the ``B*H*W`` encoder vectors is mapped by a linear layer to ``d = len(levels)`` numbers, and
number ``i`` is squashed into a bounded range and rounded to one of ``L_i = levels[i]`` values:

    bound(z)_i = tanh(z_i + s_i) * h_i - o_i,    h_i = (L_i - 1)(1 - 1e-3) / 2,
                 o_i = 0.5 if L_i is even else 0,   s_i = tan(o_i / h_i)
    zhat_i     = round(bound(z)_i) / floor(L_i / 2)      (rounding with a straight-through gradient)

(the paper's appendix A.1, ``tan`` included: the shift only has to make ``bound(0)`` round to 0, and
``tan`` does so for every ``L``, where ``atanh`` would be undefined at ``L = 2``).

so ``zhat_i`` takes ``L_i`` evenly spaced values in ``[-1, 1]``, and the implicit codebook is the grid
of all ``K = prod(L_i)`` combinations. A second linear layer maps ``zhat`` back to the decoder's ``D``
channels. A code's index is the mixed-radix number of its digits ``zhat_i * floor(L_i/2) + floor(L_i/2)``
(digit ``0`` varies fastest), so ``indices`` is a ``(B, H, W)`` long tensor in ``[0, K)`` like every
other quantizer's: the PixelCNN prior and sampling need no change. There is no codebook or commitment
loss; both are returned as zeros.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .quantizer import CodeUsage, QuantizerOutput, batch_perplexity

__all__ = ["FiniteScalarQuantizer"]


class FiniteScalarQuantizer(CodeUsage):
    """FSQ with ``levels`` per scalar (``[8, 8, 8]``: 512 codes in 3 numbers).

    Args:
        levels: the number of values of each of the ``d`` scalars, each at least 2.
        embedding_dim: ``D``, the channels of ``z_e`` and of the decoder's input.
        beta: stored for the model's loss like the other quantizers'; FSQ's commitment loss is zero,
            so it changes nothing.

    Input ``z_e`` ``(B, D, H, W)``; output :class:`~vqvae_lib.QuantizerOutput`.
    """

    def __init__(self, levels: Sequence[int], embedding_dim: int, beta: float = 0.25) -> None:
        levels = tuple(int(n) for n in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        super().__init__(math.prod(levels))
        self.levels = levels
        self.embedding_dim = embedding_dim
        self.code_dim = len(levels)
        self.beta = float(beta)
        self.project_in = nn.Linear(embedding_dim, self.code_dim)
        self.project_out = nn.Linear(self.code_dim, embedding_dim)
        levels_t = torch.tensor(levels, dtype=torch.long)
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_radix", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels_t[:-1]]), 0),
                             persistent=False)  # fmt: skip
        self.register_buffer("_half_width", levels_t // 2, persistent=False)

    # -- the scalar quantizer ----------------------------------------------------------------
    def bound(self, z: Tensor) -> Tensor:
        """``(..., d)`` -> ``(..., d)`` in ``(-h_i - o_i, h_i - o_i)``, rounding to exactly ``L_i`` integers."""
        levels = self._levels.to(z.dtype)
        half = (levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.tan(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize_scalars(self, z: Tensor) -> Tensor:
        """``(..., d)`` -> ``zhat`` on the grid in ``[-1, 1]``; gradient straight through the rounding."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width.to(z.dtype)

    def codes_to_indices(self, zhat: Tensor) -> Tensor:
        """``(..., d)`` grid points -> ``(...)`` long indices (mixed radix, digit 0 fastest)."""
        digits = torch.round(zhat * self._half_width + self._half_width).long()
        return (digits * self._radix).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` long indices -> ``(..., d)`` grid points in ``[-1, 1]``; inverse of :meth:`codes_to_indices`."""
        digits = (indices.unsqueeze(-1) // self._radix) % self._levels
        return (digits - self._half_width).float() / self._half_width

    @property
    def codebook(self) -> Tensor:
        """``(K, d)``: the implicit codebook, every grid point in index order."""
        return self.indices_to_codes(torch.arange(self.num_embeddings, device=self._levels.device))

    def codes(self) -> Tensor:
        return self.codebook

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """``(B, H, W)`` long -> ``(B, D, H, W)``: what the decoder receives for these codes."""
        zhat = self.indices_to_codes(indices).to(self.project_out.weight.dtype)
        return self.project_out(zhat).permute(0, 3, 1, 2).contiguous()

    # -- the forward pass --------------------------------------------------------------------
    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.dim() != 4 or z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"expected z_e of shape (B, D={self.embedding_dim}, H, W), got {tuple(z_e.shape)}")
        zhat = self.quantize_scalars(self.project_in(z_e.permute(0, 2, 3, 1)))  # (B, H, W, d)
        with torch.no_grad():
            indices = self.codes_to_indices(zhat)
            counts = self._count_codes(indices)
        z_q = self.project_out(zhat).permute(0, 3, 1, 2)
        zero = z_e.new_zeros(())
        return QuantizerOutput(z_q, indices, zero, zero, batch_perplexity(counts))

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)} (K={self.num_embeddings}), D={self.embedding_dim}"

