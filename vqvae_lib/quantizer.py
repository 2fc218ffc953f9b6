"""Vector quantization: the bottleneck of a VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937).

Shapes and vocabulary, used the same way everywhere in this package:

* ``z_e``: encoder output, ``(B, D, H, W)``; each of the ``B*H*W`` vectors of length ``D`` is quantized.
* ``codebook``: the ``(K, D)`` table of code vectors ``e_1 .. e_K`` (``K = num_embeddings``,
  ``D = embedding_dim``).
* ``indices``: ``(B, H, W)`` long, ``k = argmin_j ||z_e - e_j||^2`` at every position.
* ``z_q``: ``(B, D, H, W)``, ``e_k`` at every position, passed on with the straight-through estimator
  ``z_q = z_e + sg[e_k - z_e]`` so that its forward value is the code and its gradient flows to ``z_e``.

The paper's loss is ``log p(x|z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2``. The quantizers here
return the last two terms separately and unscaled (``codebook_loss`` and ``commitment_loss``); the
model multiplies ``commitment_loss`` by ``beta``. Keeping ``beta`` out of the quantizer's outputs is
what makes it impossible to put it on the wrong term.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .runtime import all_gather_rows, all_reduce_sum, broadcast

__all__ = [
    "QuantizerOutput",
    "VectorQuantizer",
    "VectorQuantizerEMA",
    "CodeUsage",
    "GRADIENTS",
    "straight_through",
    "rotation_trick",
    "squared_distances",
    "nearest_code",
    "kmeans",
]

GRADIENTS = ("straight_through", "rotation")


class QuantizerOutput(NamedTuple):
    """What a quantizer returns.

    Attributes:
        z_q: ``(B, D, H, W)`` quantized latents with straight-through gradient to ``z_e``.
        indices: ``(B, H, W)`` long code indices.
        codebook_loss: scalar, ``mean ||sg[z_e] - e||^2`` (moves the codebook; for the EMA quantizer
            it is reported without a gradient, since EMA updates replace it).
        commitment_loss: scalar, ``mean ||z_e - sg[e]||^2``, unscaled (moves the encoder).
        perplexity: scalar, ``exp(entropy)`` of the code usage in this batch: 1 when a single code is
            used, ``K`` when all codes are used equally often.
    """

    z_q: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor


def squared_distances(flat: Tensor, codebook: Tensor) -> Tensor:
    """``(N, K)`` squared Euclidean distances ``||z||^2 - 2 z.e + ||e||^2``.

    The expanded form needs one ``(N, D) x (D, K)`` matrix product and never builds the
    ``(N, K, D)`` difference tensor that ``(z[:, None] - e[None]).pow(2).sum(-1)`` would.
    """
    z_sq = flat.pow(2).sum(dim=1, keepdim=True)
    e_sq = codebook.pow(2).sum(dim=1)
    return torch.addmm(e_sq + z_sq, flat, codebook.t(), alpha=-2.0).clamp_min_(0.0)


_CHUNK_DISTANCES = 2**19  # distances per block in nearest_code on the CPU (2 MB of float32)


def nearest_code(flat: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code for every row of ``flat`` (``(N, D)`` -> ``(N,)`` long).

    ``||z||^2`` is the same for every code, so the argmin needs only ``||e||^2 - 2 z.e``: one fused
    matrix product (``addmm``) and an argmin, which is why this runs close to a bare ``z @ e.T``.
    On the CPU the rows go in chunks of about half a million distances, so that each block is still
    in cache when the argmin reads it: at N = 65,536, K = 512 that is 2.3x faster than one big
    product (which writes and re-reads 128 MB) and keeps peak memory at O(chunk x K).
    """
    e_sq = codebook.pow(2).sum(dim=1)
    n, k = flat.shape[0], codebook.shape[0]
    rows = max(1, _CHUNK_DISTANCES // k)
    if flat.device.type != "cpu" or n <= rows:
        return torch.addmm(e_sq, flat, codebook.t(), alpha=-2.0).argmin(dim=1)
    out = torch.empty(n, dtype=torch.long, device=flat.device)
    for start in range(0, n, rows):
        block = flat[start : start + rows]
        out[start : start + rows] = torch.addmm(e_sq, block, codebook.t(), alpha=-2.0).argmin(dim=1)
    return out


def kmeans(vectors: Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means on ``(N, D)`` vectors; returns ``(k, D)`` centroids.

    Starts from ``k`` random data vectors (drawn with replacement when ``N < k``); a centroid that
    loses all its vectors keeps its previous position rather than becoming NaN.
    """
    vectors = vectors.detach().float()
    n = vectors.shape[0]
    start = _sample_rows(n, k, vectors.device, generator)
    centroids = vectors[start].clone()
    for _ in range(iterations):
        assign = nearest_code(vectors, centroids)
        counts = torch.bincount(assign, minlength=k).to(vectors.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def _sample_rows(n: int, k: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if n >= k:
        return torch.randperm(n, generator=generator)[:k].to(device)
    return torch.randint(n, (k,), generator=generator).to(device)


def straight_through(z: Tensor, code: Tensor) -> Tensor:
    """``z + sg[code - z]``: the value of ``code``, the gradient of the identity to ``z`` (paper, eq. 3's
    estimator). Both ``(N, D)``; ``code`` receives no gradient."""
    return z + (code - z).detach()


def rotation_trick(z: Tensor, code: Tensor, eps: float = 1e-12) -> Tensor:
    """The rotation trick (Fifty et al. 2024, arXiv 2410.06424, section 4): ``sg[lambda R] z``.

    ``R`` is the rotation that turns ``z``'s direction into ``code``'s (in the plane the two span), and
    ``lambda = ||code|| / ||z||``, both treated as constants. With ``u = z/||z||``, ``q = code/||code||``
    and ``r = (u + q)/||u + q||``::

        R = I - 2 r r^T + 2 q u^T,     R u = q,     so   lambda R z = code   (the forward value).

    The gradient reaching ``z`` is ``lambda R^T g`` instead of the straight-through ``g``: rotated by
    the angle between encoder output and code, and scaled by their length ratio, so it tells the
    encoder where its output sits relative to the code. ``R`` is applied as two dot products per row
    (``O(N D)``), never formed as a ``D x D`` matrix. Rows ``(N, D)``; ``code`` receives no gradient.

    The directions and lengths are computed in at least float32 whatever ``z``'s dtype, and the result is
    corrected towards the code (``out + sg[code - out]``, which changes no gradient), so that in float16
    or bfloat16 the forward value is the code to within one rounding, as with :func:`straight_through`. A row with ``||z|| <= eps`` has no direction
    to rotate from; it gets the straight-through gradient.
    """
    work = torch.promote_types(z.dtype, torch.float32)  # float16/bfloat16 -> float32; float64 stays
    zf, cf = z.detach().to(work), code.detach().to(work)
    z_norm, code_norm = zf.norm(dim=1, keepdim=True), cf.norm(dim=1, keepdim=True)
    has_direction = z_norm > eps
    u = zf / z_norm.clamp_min(eps)
    q = cf / code_norm.clamp_min(eps)
    # u = -q leaves r = 0 and R = I + 2 q u^T, which still maps u to q: the formula needs no special case
    r = F.normalize(u + q, dim=1, eps=eps)
    scale = torch.where(has_direction, code_norm / z_norm.clamp_min(eps), torch.ones_like(z_norm))
    r, u, q, scale = (t.to(z.dtype) for t in (r, u, q, scale))
    rotated = z - 2 * r * (r * z).sum(dim=1, keepdim=True) + 2 * q * (u * z).sum(dim=1, keepdim=True)
    out = scale * torch.where(has_direction, rotated, z)
    return out + (code - out).detach()


def batch_perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of code counts ``(K,)``: 1 for one code, ``K`` for uniform use."""
    probs = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())


class CodeUsage(nn.Module):
    """How often each of ``num_embeddings`` codes was chosen in training: shared by every quantizer.

    ``usage_counts`` counts choices since ``reset_usage()``; ``steps_unused`` counts the training steps
    since each code was last chosen (what dead-code restarts read).
    """

    def __init__(self, num_embeddings: int) -> None:
        super().__init__()
        if num_embeddings < 1:
            raise ValueError("num_embeddings must be positive")
        self.num_embeddings = num_embeddings
        self.register_buffer("usage_counts", torch.zeros(num_embeddings, dtype=torch.long))
        self.register_buffer("steps_unused", torch.zeros(num_embeddings, dtype=torch.long))

    def codes_used(self) -> int:
        """How many distinct codes were chosen in training since the last ``reset_usage()``."""
        return int((self.usage_counts > 0).sum())

    def usage_histogram(self) -> Tensor:
        """``(K,)`` counts of how often each code was chosen in training since ``reset_usage()``."""
        return self.usage_counts.detach().cpu().clone()

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    @torch.no_grad()
    def _count_codes(self, indices: Tensor) -> Tensor:
        """``(K,)`` how often each code occurs in ``indices``. In training the counts are summed over
        processes (usage and EMA statistics are global; evaluation stays per process) and recorded in
        ``usage_counts`` and ``steps_unused``."""
        counts = torch.bincount(indices.flatten(), minlength=self.num_embeddings)
        if self.training:
            counts = all_reduce_sum(counts)
            self.usage_counts += counts
            self.steps_unused = torch.where(counts > 0, torch.zeros_like(self.steps_unused), self.steps_unused + 1)
        return counts


class _QuantizerBase(CodeUsage):
    """Shared machinery: nearest-code search, straight-through estimator, codebook health.

    Codebook health, all off by default so that the plain quantizer is the paper's:

    * ``data_init``: ``"kmeans"`` or ``"random"`` initialises the codebook from the first training
      batch of encoder outputs (k-means centroids, or random encoder vectors), so that every code
      starts where the data is and perplexity is high from the first step.
    * ``dead_code_threshold``: a code unused for this many consecutive training steps is re-seeded
      from a random encoder output of the current batch (0 disables).
    * ``usage_counts`` counts how often each code was chosen in training since ``reset_usage()``;
      ``codes_used()`` and ``usage_histogram()`` read it.

    Under ``torch.distributed`` the statistics are summed over ranks and new code vectors are
    broadcast from rank 0, so every rank keeps the same codebook.

    Two later refinements, both off by default:

    * ``gradient="rotation"``: the rotation trick (:func:`rotation_trick`) instead of the
      straight-through identity carries the decoder's gradient to the encoder.
    * ``lookup_dim=d``: factorised, l2-normalised codes (Yu et al. 2022, ViT-VQGAN, arXiv 2110.04627,
      section 3.2): a linear map takes each ``D``-vector to ``d`` dimensions, it is l2-normalised and
      matched to the l2-normalised codes (nearest in Euclidean distance between unit vectors is
      nearest in cosine), and a second linear map takes the chosen code back to ``D``. The codebook is
      then ``(K, d)``, and the losses are measured between unit vectors.
    """

    codebook: Tensor

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float,
        data_init: str | None,
        dead_code_threshold: int,
        kmeans_iterations: int = 10,
        gradient: str = "straight_through",
        lookup_dim: int | None = None,
    ) -> None:
        super().__init__(num_embeddings)
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, not {gradient!r}")
        if lookup_dim is not None and lookup_dim < 1:
            raise ValueError("lookup_dim must be positive (or None for the plain Euclidean lookup)")
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError("num_embeddings and embedding_dim must be positive")
        if data_init not in (None, "kmeans", "random"):
            raise ValueError(f"data_init must be None, 'kmeans' or 'random', not {data_init!r}")
        if dead_code_threshold < 0:
            raise ValueError("dead_code_threshold must be >= 0 (0 disables dead-code restarts)")
        self.embedding_dim = embedding_dim
        self.gradient = gradient
        self.lookup_dim = lookup_dim
        self.code_dim = lookup_dim or embedding_dim  # the length of a codebook row
        if lookup_dim is not None:
            self.project_in = nn.Linear(embedding_dim, lookup_dim)
            self.project_out = nn.Linear(lookup_dim, embedding_dim)
        self.beta = float(beta)
        self.data_init = data_init
        self.dead_code_threshold = int(dead_code_threshold)
        self.kmeans_iterations = kmeans_iterations
        self.register_buffer("initialised", torch.tensor(data_init is None))
        self.restarted_codes = 0  # total number of dead-code restarts, for logging

    # -- codebook access ---------------------------------------------------------------------
    @torch.no_grad()
    def set_codes(self, vectors: Tensor, rows: Tensor | None = None) -> None:
        """Overwrite codes: the whole codebook (``vectors`` ``(K, code_dim)``), or only ``rows`` (a long
        tensor of code indices, ``vectors`` ``(len(rows), code_dim)``). Statistics attached to a code are
        reset as at construction (the EMA quantizer's count becomes 1 and its sum the new code), so an
        EMA codebook keeps the new codes until batches choose them. A ``data_init`` still replaces every
        code at the first training step."""
        if rows is None:
            rows = torch.arange(self.num_embeddings, device=self.codebook.device)
        rows = torch.as_tensor(rows, device=self.codebook.device)
        if vectors.dim() != 2 or vectors.shape != (rows.numel(), self.code_dim):
            raise ValueError(
                f"set_codes needs vectors of shape ({rows.numel()}, {self.code_dim}) for {rows.numel()} rows, "
                f"got {tuple(vectors.shape)}"
            )
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.num_embeddings):
            raise ValueError(f"rows must be code indices in [0, {self.num_embeddings}), got {rows.tolist()}")
        self._set_codes(rows, vectors.to(self.codebook.device, self.codebook.dtype))

    def _set_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Overwrite codebook rows (and any statistics attached to them)."""
        raise NotImplementedError

    def codes(self) -> Tensor:
        """``(K, code_dim)``: the vectors the lookup compares with (the codebook, l2-normalised with
        ``lookup_dim``)."""
        return F.normalize(self.codebook, dim=1) if self.lookup_dim else self.codebook

    def _to_lookup(self, flat: Tensor) -> Tensor:
        """``(N, D)`` encoder vectors -> ``(N, code_dim)`` vectors in the space the codes live in."""
        return F.normalize(self.project_in(flat), dim=1) if self.lookup_dim else flat

    def _from_lookup(self, flat: Tensor) -> Tensor:
        return self.project_out(flat) if self.lookup_dim else flat

    def _lookup_rows(self, z_e: Tensor, in_lookup_space: bool) -> Tensor:
        """``(B, D, H, W)`` encoder outputs or ``(N, D)`` encoder rows -> rows in lookup space; rows that
        are there already (``in_lookup_space``, what the forward pass hands over) pass unchanged."""
        if z_e.dim() == 4:
            return self._to_lookup(self._flatten(z_e))
        return z_e if in_lookup_space else self._to_lookup(z_e)

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """Look up codes: ``(B, H, W)`` long -> ``(B, D, H, W)``."""
        return self._from_lookup(F.embedding(indices, self.codes())).permute(0, 3, 1, 2).contiguous()

    # -- codebook health ---------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, z_e: Tensor, method: str = "kmeans", *, in_lookup_space: bool = False) -> None:
        """Set every code from encoder outputs ``z_e`` (``(B, D, H, W)`` or ``(N, D)``)."""
        flat = self._lookup_rows(z_e, in_lookup_space).detach().float()
        flat = all_gather_rows(flat)  # distributed: initialise from the whole global batch
        if flat.shape[0] < self.num_embeddings:
            warnings.warn(
                f"initialising {self.num_embeddings} codes from only {flat.shape[0]} encoder vectors: codes will "
                "repeat. Use a larger first training batch, or call encode_indices/reconstruct (eval mode) for "
                "lookups before training",
                stacklevel=2,
            )
        if method == "kmeans":
            vectors = kmeans(flat, self.num_embeddings, self.kmeans_iterations)
        elif method == "random":
            vectors = flat[_sample_rows(flat.shape[0], self.num_embeddings, flat.device, None)]
        else:
            raise ValueError(f"method must be 'kmeans' or 'random', not {method!r}")
        vectors = broadcast(vectors.to(self.codebook.dtype).contiguous())
        self._set_codes(torch.arange(self.num_embeddings, device=vectors.device), vectors)
        self.steps_unused.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def restart_dead_codes(self, z_e: Tensor, threshold: int | None = None, *, in_lookup_space: bool = False) -> int:
        """Re-seed codes unused for ``threshold`` steps from random rows of ``z_e``; returns how many."""
        threshold = self.dead_code_threshold if threshold is None else threshold
        if threshold <= 0:
            return 0
        dead = torch.nonzero(self.steps_unused >= threshold).flatten()
        if dead.numel() == 0:
            return 0
        flat = all_gather_rows(self._lookup_rows(z_e, in_lookup_space).detach())
        vectors = flat[_sample_rows(flat.shape[0], dead.numel(), flat.device, None)]
        vectors = broadcast(vectors.to(self.codebook.dtype).contiguous())
        self._set_codes(dead, vectors)
        self.steps_unused[dead] = 0
        self.restarted_codes += int(dead.numel())
        return int(dead.numel())

    # -- the forward pass --------------------------------------------------------------------
    def _flatten(self, z_e: Tensor) -> Tensor:
        if z_e.dim() != 4 or z_e.shape[1] != self.embedding_dim:
            raise ValueError(
                f"expected z_e of shape (B, D={self.embedding_dim}, H, W), got {tuple(z_e.shape)}"
            )
        return z_e.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)

    def _update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """Hook for the EMA variant: called in training after the codes are chosen."""

    def _codebook_loss(self, flat: Tensor, quantized: Tensor) -> Tensor:
        return F.mse_loss(quantized, flat.detach())

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        flat = self._to_lookup(self._flatten(z_e))
        b, _, h, w = z_e.shape
        if self.training:
            if not bool(self.initialised):
                self.init_from_data(flat, self.data_init or "random", in_lookup_space=True)
            self.restart_dead_codes(flat, in_lookup_space=True)

        codes = self.codes()
        # The search runs without autograd: argmin has no gradient, and skipping the graph saves
        # the (N, K) distance matrix from being kept for backward.
        with torch.no_grad():
            indices = nearest_code(flat.detach().to(codes.dtype), codes)
            counts = self._count_codes(indices)
        quantized = F.embedding(indices, codes).to(flat.dtype)
        if self.training:
            self._update_codebook(flat, indices, counts)

        codebook_loss = self._codebook_loss(flat, quantized)
        commitment_loss = F.mse_loss(flat, quantized.detach())
        # forward value: the code; backward: the identity (or the rotation) to the encoder output
        carry = rotation_trick if self.gradient == "rotation" else straight_through
        z_q_flat = self._from_lookup(carry(flat, quantized))

        z_q = z_q_flat.view(b, h, w, self.embedding_dim).permute(0, 3, 1, 2)
        return QuantizerOutput(z_q, indices.view(b, h, w), codebook_loss, commitment_loss, batch_perplexity(counts))

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, beta={self.beta}, "
            f"data_init={self.data_init}, dead_code_threshold={self.dead_code_threshold}, gradient={self.gradient}"
            + (f", lookup_dim={self.lookup_dim} (cosine)" if self.lookup_dim else "")
        )


class VectorQuantizer(_QuantizerBase):
    """The paper's vector quantizer with a learned codebook (section 3.1 and equation 3).

    Args:
        num_embeddings: ``K``, the number of codes.
        embedding_dim: ``D``, the length of each code vector (the channels of ``z_e``).
        beta: commitment weight; stored here for the model's loss, never applied inside.
        data_init: ``None`` (uniform ``U(-1/K, 1/K)`` init, as in the reference code), ``"kmeans"``
            or ``"random"`` (set from the first training batch of encoder outputs).
        dead_code_threshold: restart codes unused for this many training steps (0: never).
        gradient: ``"straight_through"`` (the paper) or ``"rotation"`` (:func:`rotation_trick`).
        lookup_dim: ``None`` (the paper's lookup), or ``d`` for factorised cosine codes of length ``d``.

    Input ``z_e`` ``(B, D, H, W)``; output :class:`QuantizerOutput`. The codebook is an
    ``nn.Parameter`` that receives gradient from ``codebook_loss`` alone.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        data_init: str | None = None,
        dead_code_threshold: int = 0,
        gradient: str = "straight_through",
        lookup_dim: int | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, beta, data_init, dead_code_threshold, gradient=gradient, lookup_dim=lookup_dim
        )
        if lookup_dim is None:
            bound = 1.0 / num_embeddings
            self.codebook = nn.Parameter(torch.empty(num_embeddings, self.code_dim).uniform_(-bound, bound))
        else:  # unit codes: U(-1/K, 1/K) codes would be ~0.01 long, and normalising them amplifies every step
            self.codebook = nn.Parameter(F.normalize(torch.randn(num_embeddings, self.code_dim), dim=1))

    @torch.no_grad()
    def _set_codes(self, rows: Tensor, vectors: Tensor) -> None:
        self.codebook.data[rows] = vectors


class VectorQuantizerEMA(_QuantizerBase):
    """Vector quantizer whose codebook follows exponential moving averages (paper, appendix A.1).

    With ``n_k`` the number of encoder vectors assigned to code ``k`` in a batch and ``s_k`` their sum:

        N_k <- decay * N_k + (1 - decay) * n_k
        m_k <- decay * m_k + (1 - decay) * s_k
        e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing)

    so each code moves towards the mean of the vectors assigned to it, with no optimizer and no
    codebook-loss gradient; the smoothing keeps an unused code finite (it decays towards the origin,
    which is what ``dead_code_threshold`` repairs). ``N`` and ``m`` start at 1 and the initial
    codes, so that the first update is a weighted mean rather than a jump.

    ``codebook_loss`` is still returned, detached, so the curves show how far codes sit from the
    encoder outputs; adding it to a total changes no gradient. With ``lookup_dim`` the averages are of
    unit vectors, and the lookup normalises each mean again (spherical k-means, one step at a time).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        data_init: str | None = None,
        dead_code_threshold: int = 0,
        gradient: str = "straight_through",
        lookup_dim: int | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, beta, data_init, dead_code_threshold, gradient=gradient, lookup_dim=lookup_dim
        )
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.decay = float(decay)
        self.eps = float(eps)
        codebook = torch.randn(num_embeddings, self.code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_cluster_size", torch.ones(num_embeddings))
        self.register_buffer("ema_embed_sum", codebook.clone())

    @torch.no_grad()
    def _set_codes(self, rows: Tensor, vectors: Tensor) -> None:
        self.codebook[rows] = vectors
        self.ema_embed_sum[rows] = vectors
        self.ema_cluster_size[rows] = 1.0

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat.detach().to(self.ema_embed_sum.dtype))
        embed_sum = all_reduce_sum(embed_sum)
        self.ema_cluster_size.mul_(self.decay).add_(counts.to(self.ema_cluster_size.dtype), alpha=1 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        n = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))

    def _codebook_loss(self, flat: Tensor, quantized: Tensor) -> Tensor:
        return F.mse_loss(quantized, flat.detach()).detach()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay={self.decay}, eps={self.eps}"

