"""Which part of the rotation trick costs on MNIST? Notebook 5's recipe (2,800 steps) with the rotation
trick, its scaling alone, its rotation alone, or changed settings; one variant per process.

    python benchmarks/rotation_trick.py full           # gradient="rotation": lambda R^T g
    python benchmarks/rotation_trick.py scale_only     # value the code, gradient (|e| / |z_e|) g
    python benchmarks/rotation_trick.py rotation_only  # value the code, gradient R^T g
    python benchmarks/rotation_trick.py no_ema         # the full trick with a codebook trained by gradient
    python benchmarks/rotation_trick.py lr1e-3         # the full trick at learning rate 1e-3

The variants are swapped in by assigning ``vqvae_lib.quantizer.rotation_trick``, which the quantizer's
forward looks up at every call when ``gradient="rotation"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

import vqvae_lib.quantizer as quantizer_module
from vqvae_lib import TrainConfig, load_dataset, load_test_set

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import train_vqvae  # noqa: E402

rotation_trick = quantizer_module.rotation_trick


def scale_only(z: Tensor, code: Tensor, eps: float = 1e-12) -> Tensor:
    """Value ``code``; gradient ``(|code| / |z|) g``, not rotated."""
    scale = code.detach().norm(dim=1, keepdim=True) / z.detach().norm(dim=1, keepdim=True).clamp_min(eps)
    return scale * z + (code - scale * z).detach()


def rotation_only(z: Tensor, code: Tensor, eps: float = 1e-12) -> Tensor:
    """Value ``code``; gradient ``R^T g``, rotated but not scaled (``R z`` has ``z``'s length)."""
    unscale = z.detach().norm(dim=1, keepdim=True).clamp_min(eps) / code.detach().norm(dim=1, keepdim=True).clamp_min(eps)
    rotated = rotation_trick(z, code, eps) * unscale
    return rotated + (code - rotated).detach()


VARIANTS = {
    "full": ({}, None),
    "scale_only": ({}, scale_only),
    "rotation_only": ({}, rotation_only),
    "no_ema": ({"ema": False}, None),
    "lr1e-3": ({"lr": 1e-3}, None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides, function = VARIANTS[args.variant]
    if function is not None:
        quantizer_module.rotation_trick = function
    cfg = TrainConfig.preset("mnist", gradient="rotation", **overrides)
    train_set = load_dataset("mnist", "train", in_memory=True)
    test_set, _ = load_test_set("mnist")
    print(f"variant {args.variant}: {overrides or 'the preset'}, gradient function {quantizer_module.rotation_trick.__name__}")
    train_vqvae(cfg, train_set, test_set, cfg.steps, cfg.steps)


if __name__ == "__main__":
    main()
