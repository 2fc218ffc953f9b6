"""Residual vector quantization (RVQ; Juang and Gray 1982, used in SoundStream, Zeghidour et al. 2021,
arXiv 2107.03312, algorithm 1): several small codebooks, each quantizing what the ones before it missed.

With stages ``1..S`` of ``K_1..K_S`` codes:

    r_1 = z_e,    k_s = argmin_j ||r_s - e^s_j||^2,    r_{s+1} = r_s - e^s_{k_s},    z_q = sum_s e^s_{k_s}

so ``S`` stages of 8 codes describe a position with ``log2(8^S)`` bits, the same as one codebook of
``8^S`` codes, while storing only ``8 S`` vectors. The stage indices are packed into one mixed-radix
index ``k = k_1 + K_1 k_2 + K_1 K_2 k_3 + ...`` in ``[0, prod K_s)``, so ``indices`` is a ``(B, H, W)``
long tensor like every other quantizer's and the PixelCNN prior models the packed code unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizer import GRADIENTS, CodeUsage, QuantizerOutput, VectorQuantizer, VectorQuantizerEMA
from .quantizer import batch_perplexity, rotation_trick, straight_through

__all__ = ["ResidualVectorQuantizer"]


class ResidualVectorQuantizer(CodeUsage):
    """``len(stage_sizes)`` vector quantizers in sequence, each on the residual of the ones before.

    Args:
        stage_sizes: codes per stage, e.g. ``(8, 8, 8)``: ``K = 512`` packed codes.
        embedding_dim: ``D``; every stage's codes have length ``D``.
        beta: commitment weight, stored for the model's loss.
        ema, decay, eps, data_init, dead_code_threshold: each stage's codebook, as in
            :class:`~vqvae_lib.VectorQuantizerEMA` / :class:`~vqvae_lib.VectorQuantizer`.
        gradient: how the decoder's gradient reaches ``z_e`` through the sum of the stages' codes.

    ``codebook_loss`` is the sum of the stages' (each pulls its codes towards its residuals);
    ``commitment_loss`` is ``mean ||z_e - sg[z_q]||^2`` against the sum of all stages.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        embedding_dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        data_init: str | None = None,
        dead_code_threshold: int = 0,
        gradient: str = "straight_through",
    ) -> None:
        stage_sizes = tuple(int(k) for k in stage_sizes)
        if not stage_sizes or min(stage_sizes) < 2:
            raise ValueError(f"stage_sizes must be a non-empty list of integers >= 2, got {stage_sizes}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, not {gradient!r}")
        super().__init__(math.prod(stage_sizes))
        self.stage_sizes = stage_sizes
        self.embedding_dim = embedding_dim
        self.code_dim = embedding_dim
        self.beta = float(beta)
        self.gradient = gradient

        def stage(k: int) -> nn.Module:
            if ema:
                return VectorQuantizerEMA(k, embedding_dim, beta, decay, eps, data_init, dead_code_threshold)
            return VectorQuantizer(k, embedding_dim, beta, data_init, dead_code_threshold)

        self.stages = nn.ModuleList(stage(k) for k in stage_sizes)
        radix = torch.cumprod(torch.tensor((1,) + stage_sizes[:-1], dtype=torch.long), 0)
        self.register_buffer("_radix", radix, persistent=False)
        self.register_buffer("_sizes", torch.tensor(stage_sizes, dtype=torch.long), persistent=False)

    def stage_indices(self, indices: Tensor) -> Tensor:
        """Packed ``(...)`` indices -> ``(..., S)`` per-stage indices."""
        return (indices.unsqueeze(-1) // self._radix) % self._sizes

    def pack(self, stage_indices: Tensor) -> Tensor:
        """``(..., S)`` per-stage indices -> packed ``(...)`` indices."""
        return (stage_indices * self._radix).sum(dim=-1)

    def _sum_of_codes(self, indices: Tensor) -> Tensor:
        """Packed ``(...)`` indices -> ``(..., D)``, the sum of each stage's code."""
        parts = self.stage_indices(indices)
        return sum(F.embedding(parts[..., s], q.codebook) for s, q in enumerate(self.stages))

    @property
    def codebook(self) -> Tensor:
        """``(K, D)``: every packed code's vector (the sum of its stages' codes), in index order."""
        return self._sum_of_codes(torch.arange(self.num_embeddings, device=self._radix.device))

    def codes(self) -> Tensor:
        return self.codebook

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """``(B, H, W)`` long -> ``(B, D, H, W)``."""
        return self._sum_of_codes(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.dim() != 4 or z_e.shape[1] != self.embedding_dim:
            raise ValueError(f"expected z_e of shape (B, D={self.embedding_dim}, H, W), got {tuple(z_e.shape)}")
        residual = z_e.detach()
        total = torch.zeros_like(residual)
        parts, codebook_loss = [], z_e.new_zeros(())
        for stage in self.stages:
            q = stage(residual)
            code = q.z_q.detach()  # the forward value of a stage's z_q is its code
            codebook_loss = codebook_loss + q.codebook_loss
            parts.append(q.indices)
            total = total + code
            residual = residual - code
        indices = self.pack(torch.stack(parts, dim=-1))
        counts = self._count_codes(indices)
        commitment_loss = F.mse_loss(z_e, total)
        flat, flat_code = (t.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim) for t in (z_e, total))
        carry = rotation_trick if self.gradient == "rotation" else straight_through
        b, _, h, w = z_e.shape
        z_q = carry(flat, flat_code).view(b, h, w, self.embedding_dim).permute(0, 3, 1, 2)
        return QuantizerOutput(z_q, indices, codebook_loss, commitment_loss, batch_perplexity(counts))

    def extra_repr(self) -> str:
        return f"stage_sizes={list(self.stage_sizes)} (K={self.num_embeddings}), D={self.embedding_dim}, gradient={self.gradient}"
