"""Draw the architecture and codebook figures in model_visualisation/ from the real modules.

    python tools/draw_model_figures.py                  # writes model_visualisation/*.png, prints summaries
    python tools/draw_model_figures.py --out /tmp/figs  # somewhere else
    python tools/draw_model_figures.py --no-codebook    # only the architecture (no checkpoints or data needed)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vqvae_lib import TrainConfig, evaluate, find_checkpoint, load_checkpoint, load_test_set  # noqa: E402
from vqvae_lib.paths import project_dir  # noqa: E402
from vqvae_lib.visualise import draw_architecture, draw_codebook, summary_table  # noqa: E402

_IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=project_dir() / "model_visualisation")
    parser.add_argument("--no-codebook", action="store_true", help="only the architecture (no checkpoints or data needed)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, shape in _IMAGE_SHAPES.items():
        cfg = TrainConfig.preset(name)
        model = cfg.build_model()
        print(f"\n## {name} (TrainConfig.preset({name!r}))\n")
        print(summary_table(model, shape))
        fig = draw_architecture(model, shape, title=f"VQ-VAE, {name} configuration: {sum(p.numel() for p in model.parameters()):,} parameters")
        path = args.out / f"architecture_{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        print(f"\nwrote {path}")
        if args.no_codebook:
            continue
        ckpt = find_checkpoint(name, prefer="pretrained")
        trained = load_checkpoint(ckpt).eval()
        test_set, test_name = load_test_set(name)
        metrics = evaluate(trained, test_set, histogram=True)
        grid_shape = trained.latent_shape(shape[1:])
        fig = draw_codebook(trained, metrics["histogram"], grid_shape, title=f"{name}: the codebook of {ckpt.name} on {test_name}")
        path = args.out / f"codebook_{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
