"""Walking between two images in latent space, and writing the walk as a GIF."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .model import VQVAE
from .runtime import eval_mode

__all__ = ["interpolate_latents", "frames_to_uint8", "save_gif"]


@torch.no_grad()
def interpolate_latents(model: VQVAE, x_a: Tensor, x_b: Tensor, steps: int = 16, space: str = "continuous") -> Tensor:
    """Decode ``steps`` images on the straight line between two inputs' latents.

    ``space="continuous"`` interpolates the encoder outputs ``z_e`` and quantizes every point, so the
    picture stays on the codebook and snaps from code to code; ``space="quantized"`` interpolates
    the quantized latents ``z_q`` themselves and decodes the blends, which lie between codes.

    ``x_a``, ``x_b``: ``(C, H, W)`` or ``(1, C, H, W)`` images. Returns ``(steps, C, H, W)`` in
    [0, 1]; the first frame is the reconstruction of ``x_a`` and the last that of ``x_b``. All frames
    are decoded in one batched call.
    """
    if space not in ("continuous", "quantized"):
        raise ValueError(f"space must be 'continuous' or 'quantized', not {space!r}")
    if steps < 2:
        raise ValueError("steps must be at least 2")
    with eval_mode(model):
        device = next(model.parameters()).device
        pair = torch.stack([x.reshape(x.shape[-3:]) for x in (x_a, x_b)]).to(device)
        z_e = model.encode(pair)
        t = torch.linspace(0, 1, steps, device=device).view(-1, 1, 1, 1)
        if space == "continuous":
            z = (1 - t) * z_e[0:1] + t * z_e[1:2]
            z_q = model.quantize(z).z_q
        else:
            z_q_ends = model.quantize(z_e).z_q
            z_q = (1 - t) * z_q_ends[0:1] + t * z_q_ends[1:2]
        return model.decode(z_q).clamp(0, 1).cpu()


def frames_to_uint8(frames: Tensor, scale: int = 1) -> np.ndarray:
    """``(T, C, H, W)`` floats in [0, 1] -> ``(T, H*scale, W*scale, C)`` uint8 (C dropped when 1)."""
    arr = (frames.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    arr = arr.permute(0, 2, 3, 1).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def save_gif(frames: Tensor, path: str | os.PathLike, fps: float = 8.0, scale: int = 1, boomerang: bool = True) -> Path:
    """Write frames ``(T, C, H, W)`` in [0, 1] as a looping GIF; ``boomerang`` plays back and forth.

    ``scale`` enlarges by pixel repetition (nearest neighbour), which keeps 28x28 digits crisp.
    """
    import imageio.v3 as iio

    arr = frames_to_uint8(frames, scale)
    if boomerang and len(arr) > 2:
        arr = np.concatenate([arr, arr[-2:0:-1]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    return path
