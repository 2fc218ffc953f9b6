"""Encoder, decoder and the VQ-VAE model (van den Oord et al. 2017, section 4.1).

    x (B, C, H, W) --Encoder--> z_e (B, D, H/s, W/s) --quantizer--> z_q --Decoder--> x_hat (B, C, H, W)

The encoder is ``log2(s)`` strided 4x4 convolutions (stride 2), a 3x3 convolution, a stack of
residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv, plus the skip) and a 1x1 convolution to ``D``
channels. The decoder mirrors it with transposed 4x4 convolutions. With ``s = 4`` this is the
paper's CIFAR10 model: a 32x32 image becomes an 8x8 grid of codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fsq import FiniteScalarQuantizer
from .quantizer import QuantizerOutput, VectorQuantizer, VectorQuantizerEMA
from .residual_vq import ResidualVectorQuantizer
from .runtime import eval_mode

__all__ = [
    "ResidualBlock", "ResidualStack", "Encoder", "Decoder", "VQVAEConfig", "VQVAE", "QUANTIZERS", "build_quantizer",
    "loss_terms",
]  # fmt: skip

QUANTIZERS = ("vq", "cosine", "fsq", "residual")
Quantizer = Union[VectorQuantizer, VectorQuantizerEMA, FiniteScalarQuantizer, ResidualVectorQuantizer]


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``.

    The ReLUs are not in-place: an in-place ReLU on the block's input would overwrite ``x`` itself,
    and the skip connection would silently add ``relu(x)`` instead of ``x``.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden_channels, kernel_size=3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResidualStack(nn.Module):
    """``num_layers`` residual blocks, each with its own weights, followed by a ReLU.

    Built with a comprehension, never ``[ResidualBlock(...)] * n``, which repeats one module (one set
    of weights) ``n`` times.
    """

    def __init__(self, channels: int, num_layers: int, hidden_channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ResidualBlock(channels, hidden_channels) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return F.relu(x)


def _num_halvings(factor: int) -> int:
    n = int(round(math.log2(factor))) if factor > 0 else -1
    if factor < 2 or 2**n != factor:
        raise ValueError(f"downsample must be a power of two >= 2, got {factor}")
    return n


class Encoder(nn.Module):
    """``(B, C, H, W)`` -> ``(B, D, H/downsample, W/downsample)``."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_residual_layers: int,
        residual_hidden_channels: int,
        embedding_dim: int,
        downsample: int = 4,
    ) -> None:
        super().__init__()
        n = _num_halvings(downsample)
        widths = [hidden_channels // 2 ** (n - 1 - i) for i in range(n)]  # ..., hidden/2, hidden
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers += [nn.Conv2d(prev, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            prev = width
        layers += [
            nn.Conv2d(prev, hidden_channels, kernel_size=3, padding=1),
            ResidualStack(hidden_channels, num_residual_layers, residual_hidden_channels),
            nn.Conv2d(hidden_channels, embedding_dim, kernel_size=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """``(B, D, h, w)`` -> ``(B, C, h*upsample, w*upsample)``; the encoder's mirror image."""

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        num_residual_layers: int,
        residual_hidden_channels: int,
        embedding_dim: int,
        upsample: int = 4,
    ) -> None:
        super().__init__()
        n = _num_halvings(upsample)
        widths = [hidden_channels // 2**i for i in range(n)]  # hidden, hidden/2, ...
        layers: list[nn.Module] = [
            nn.Conv2d(embedding_dim, hidden_channels, kernel_size=3, padding=1),
            ResidualStack(hidden_channels, num_residual_layers, residual_hidden_channels),
        ]
        for i, width in enumerate(widths):
            last = i == n - 1
            out = out_channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(width, out, kernel_size=4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z_q: Tensor) -> Tensor:
        return self.net(z_q)


@dataclass(frozen=True)
class VQVAEConfig:
    """A VQ-VAE's hyper-parameters, declared once: :class:`VQVAE` is built from one, checkpoints store
    it, and :class:`~vqvae_lib.TrainConfig` carries one as ``model``. Defaults are the paper's CIFAR10 model.

    Attributes:
        in_channels: 1 for grayscale, 3 for RGB images (values in [0, 1]).
        hidden_channels, num_residual_layers, residual_hidden_channels: widths and depth of the
            encoder and decoder.
        embedding_dim: ``D``, channels of ``z_e`` and length of each code.
        num_embeddings: ``K``, codebook size.
        beta: commitment weight in ``total = recon + codebook + beta * commitment``.
        downsample: spatial reduction (a power of two); an ``HxW`` image becomes
            ``H/downsample x W/downsample`` codes.
        ema: use :class:`VectorQuantizerEMA` (codebook by moving averages) instead of
            :class:`VectorQuantizer` (codebook by gradient).
        decay, eps: EMA settings (ignored unless ``ema``).
        data_init, dead_code_threshold: codebook health, see :class:`VectorQuantizer`.
        quantizer: which bottleneck (all return the same :class:`QuantizerOutput`, with ``indices`` in
            ``[0, num_embeddings)``):

            * ``"vq"``: the paper's (with ``ema``, the codebook by moving averages);
            * ``"cosine"``: the same with factorised, l2-normalised codes of length ``lookup_dim``;
            * ``"fsq"``: finite scalar quantization with ``levels`` (no codebook to learn, so ``ema``,
              ``decay``, ``eps``, ``data_init`` and ``dead_code_threshold`` do not apply, and its
              codebook and commitment losses are zero); ``prod(levels)`` must equal ``num_embeddings``;
            * ``"residual"``: one codebook per entry of ``stage_sizes``, each quantizing what the ones
              before it missed; ``prod(stage_sizes)`` must equal ``num_embeddings``.
        gradient: ``"straight_through"`` (the paper) or ``"rotation"`` (the rotation trick), for the
            quantizers with code vectors (not FSQ, whose rounding is straight-through by definition).
        lookup_dim: the length of the cosine quantizer's codes.
        levels: FSQ's number of values per scalar, e.g. ``(8, 8, 8)``.
        stage_sizes: residual VQ's codes per stage, e.g. ``(8, 8, 8)``.
    """

    in_channels: int = 1
    hidden_channels: int = 128
    num_residual_layers: int = 2
    residual_hidden_channels: int = 32
    embedding_dim: int = 64
    num_embeddings: int = 512
    beta: float = 0.25
    downsample: int = 4
    ema: bool = False
    decay: float = 0.99
    eps: float = 1e-5
    data_init: str | None = None
    dead_code_threshold: int = 0
    quantizer: str = "vq"
    gradient: str = "straight_through"
    lookup_dim: int = 8
    levels: tuple[int, ...] = ()
    stage_sizes: tuple[int, ...] = ()


def build_quantizer(c: VQVAEConfig) -> Quantizer:
    """The quantizer a :class:`VQVAEConfig` names, checked for a consistent number of codes."""
    if c.quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, not {c.quantizer!r}")
    factors = {"fsq": ("levels", c.levels), "residual": ("stage_sizes", c.stage_sizes)}.get(c.quantizer)
    if factors is not None:
        name, sizes = factors
        if not sizes or math.prod(sizes) != c.num_embeddings:
            raise ValueError(
                f"quantizer={c.quantizer!r} needs {name} whose product is num_embeddings={c.num_embeddings}, "
                f"got {name}={tuple(sizes)}; e.g. {name}=(8, 8, 8) with num_embeddings=512"
            )
    if c.quantizer == "fsq":
        if c.gradient != "straight_through":
            raise ValueError("FSQ rounds scalars with a straight-through gradient by definition; use gradient='straight_through'")
        return FiniteScalarQuantizer(c.levels, c.embedding_dim, c.beta)
    if c.quantizer == "residual":
        return ResidualVectorQuantizer(
            c.stage_sizes, c.embedding_dim, c.beta, c.ema, c.decay, c.eps, c.data_init, c.dead_code_threshold, c.gradient
        )
    lookup = dict(gradient=c.gradient, lookup_dim=c.lookup_dim if c.quantizer == "cosine" else None)
    if c.ema:
        return VectorQuantizerEMA(
            c.num_embeddings, c.embedding_dim, c.beta, c.decay, c.eps, c.data_init, c.dead_code_threshold, **lookup
        )
    return VectorQuantizer(c.num_embeddings, c.embedding_dim, c.beta, c.data_init, c.dead_code_threshold, **lookup)


class VQVAE(nn.Module):
    """Encoder, vector quantizer and decoder, with the paper's three-part loss.

    ``VQVAE(config)`` builds from a :class:`VQVAEConfig`; keywords override its fields
    (``VQVAE(in_channels=3, num_embeddings=256)``, ``VQVAE(config, downsample=8)``), and an unknown
    keyword raises ``TypeError``. ``model.config`` records every field as a plain dict; checkpoints
    store it so that ``load_checkpoint(path)`` rebuilds the model without the caller repeating them.
    """

    def __init__(self, config: VQVAEConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        c = replace(config or VQVAEConfig(), **overrides)
        # lists from JSON or a caller become tuples, so that a config compares equal to its saved copy
        c = replace(c, levels=tuple(int(n) for n in c.levels), stage_sizes=tuple(int(k) for k in c.stage_sizes))
        self.config: dict[str, Any] = asdict(c)
        self.downsample = c.downsample
        self.encoder = Encoder(
            c.in_channels, c.hidden_channels, c.num_residual_layers, c.residual_hidden_channels, c.embedding_dim,
            c.downsample,
        )  # fmt: skip
        self.quantizer: Quantizer = build_quantizer(c)
        self.decoder = Decoder(
            c.in_channels, c.hidden_channels, c.num_residual_layers, c.residual_hidden_channels, c.embedding_dim,
            c.downsample,
        )  # fmt: skip

    @staticmethod
    def config_defaults() -> dict[str, Any]:
        """Every config field's default: what a checkpoint written before a field existed meant by it."""
        return asdict(VQVAEConfig())

    @property
    def beta(self) -> float:
        return self.quantizer.beta

    def _check_input(self, x: Tensor) -> None:
        c = self.config["in_channels"]
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"expected images of shape (B, {c}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.downsample or x.shape[3] % self.downsample:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} is not divisible by the downsampling factor "
                f"{self.downsample}; resize or crop the images (e.g. image_size=... in load_dataset)"
            )

    def encode(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` -> ``z_e`` ``(B, D, h, w)``."""
        self._check_input(x)
        return self.encoder(x)

    def quantize(self, z_e: Tensor) -> QuantizerOutput:
        return self.quantizer(z_e)

    def decode(self, z_q: Tensor) -> Tensor:
        """``z_q`` ``(B, D, h, w)`` -> ``x_hat`` ``(B, C, H, W)``."""
        return self.decoder(z_q)

    @torch.no_grad()
    def encode_indices(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` -> code indices ``(B, h, w)``, in eval mode.

        Eval mode because looking up codes must not change them: in training mode the quantizer's
        forward initialises an untrained codebook from the batch it sees (``data_init``), moves EMA
        codes and counts usage, so a shape check on one image before training would seed all K codes
        from that image's h*w vectors.
        """
        with eval_mode(self):
            return self.quantize(self.encode(x)).indices

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices ``(B, h, w)`` -> images ``(B, C, H, W)``."""
        return self.decode(self.quantizer.indices_to_latents(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Returns ``(x_hat, quantizer_output)``."""
        q = self.quantize(self.encode(x))
        return self.decode(q.z_q), q

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """The paper's loss (equation 3) with a Gaussian decoder, i.e. MSE reconstruction.

        Returns ``recon``, ``codebook``, ``commitment`` (unscaled), ``total`` =
        ``recon + codebook + beta * commitment``, ``perplexity`` and ``codes_used`` (in this batch).
        """
        x_hat, q = self(x)
        return loss_terms(x, x_hat, q, self.beta)

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = image_size
        return h // self.downsample, w // self.downsample

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction clamped to [0, 1], in eval mode, without gradient."""
        with eval_mode(self):
            return self(x)[0].clamp(0, 1)


def loss_terms(x: Tensor, x_hat: Tensor, q: QuantizerOutput, beta: float) -> dict[str, Tensor]:
    """``total = recon + codebook + beta * commitment``; kept outside the model so that a wrapped
    model (DistributedDataParallel, ``torch.compile``) can run ``forward`` and share this loss."""
    recon = F.mse_loss(x_hat, x)
    return {
        "recon": recon,
        "codebook": q.codebook_loss,
        "commitment": q.commitment_loss,
        "total": recon + q.codebook_loss + beta * q.commitment_loss,
        "perplexity": q.perplexity,
        "codes_used": torch.tensor(float(torch.unique(q.indices).numel())),
    }
