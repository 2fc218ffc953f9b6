"""Train a VQ-VAE from the command line, in one process or many under ``torchrun``.

    python -m vqvae_lib.cli --preset mnist
    python -m vqvae_lib.cli --preset cifar10 --steps 8000 --hidden-channels 96 --out runs/cifar10.pt
    torchrun --nproc_per_node 4 -m vqvae_lib.cli --preset cifar10 --amp      # 4 GPUs (or CPU processes)
    python -m vqvae_lib.cli --preset mnist --out runs/mnist.pt --resume       # continue a run
    python -m vqvae_lib.cli --folder ~/Pictures/holiday --image-size 128     # your own photos

A run writes the checkpoint and, beside it, ``<name>_reconstructions.png`` (test images over their
reconstructions) and ``<name>_interpolation.gif`` (the path between two of those images' latents).
``--folder`` trains on a folder of your own images (flat, or one subfolder per class), holding out a
tenth of them (chosen by a hash of each file's path, the same split as notebook 7) to test on; it picks
the ``folder`` preset, or ``folder-128`` (one more halving) for ``--image-size 128`` and larger. A
folder with fewer images than a batch trains on batches of all of them.

Every field of :class:`vqvae_lib.TrainConfig` and of its model's :class:`vqvae_lib.VQVAEConfig` is an
option (``--batch-size``, ``--num-embeddings``, ...);
``--preset`` picks the notebooks' values first. ``--batch-size`` is the *global* batch: under ``torchrun``
each of the ``W`` processes takes ``batch_size / W`` images of every batch, gradients are averaged by
DistributedDataParallel (gloo on CPUs, NCCL on GPUs), the codebook statistics are all-reduced, the
loss terms and test metrics are reduced over the processes, and only rank 0 writes checkpoints. With
the same seed, a distributed run follows the single-process one up to floating-point summation order.

This module is the command line only; the training loop it calls is ``vqvae_lib.train`` (the
function, from :mod:`vqvae_lib.training`). It was ``vqvae_lib/train.py`` before, and importing it then
replaced that function on the package with the module.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch

from .data import DatasetNotFoundError, make_loader
from .image_folder import describe_split
from .metrics import evaluate
from .sources import load_dataset, load_test_set
from .paths import checkpoint_dir
from .model import VQVAEConfig
from .runtime import end_distributed, init_distributed, pick_device, replica_difference, unwrap, wrap_distributed
from .training import TrainConfig
from .training import train as train_loop


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _parse_int_tuple(text: str) -> tuple[int, ...]:
    """``8,8,8``, ``8x8x8`` or ``(8, 8, 8)`` -> ``(8, 8, 8)``; anything else is refused."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("()[]")) if p.strip()]
    if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise argparse.ArgumentTypeError(f"expected positive integers such as 8,8,8, not {text!r}")
    return tuple(int(p) for p in parts)


def _field_type(field: dataclasses.Field) -> Any:
    name = str(field.type)
    if "bool" in name:
        return _parse_bool
    if name.startswith("tuple"):  # --levels 8,8,8 (FSQ) or --stage-sizes 8,8,8 (residual VQ)
        return _parse_int_tuple
    if "int" in name:
        return lambda s: None if s.lower() == "none" else int(s)
    if "float" in name:
        return float
    return lambda s: None if s.lower() == "none" else s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vqvae_lib.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default=None, choices=["mnist", "cifar10", "food101", "folder", "folder-128"],
                        help="start from the notebooks' configuration for this dataset (default: mnist, or "
                             "folder / folder-128 with --folder)")  # fmt: skip
    parser.add_argument("--folder", type=Path, default=None, help="a folder of your own images to train on")
    parser.add_argument("--data-root", default=None, help="dataset root (default: VQVAE_DATA_ROOT or data/); "
                        "for --preset folder, the image folder (or use --folder)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="checkpoint path (default: data/checkpoints/<preset>.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images (a quick run)")
    parser.add_argument("--eval-subset", type=int, default=None, help="evaluate on this many test images")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored elsewhere)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for title, field_list in zip(("TrainConfig", "VQVAEConfig"), _config_fields()):
        group = parser.add_argument_group(f"{title} fields (default: the preset's value)")
        for field in field_list:
            # SUPPRESS: an option not given is absent, so that "none" can set a field to None
            group.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=_field_type(field),
                               default=argparse.SUPPRESS, metavar=field.name.upper())  # fmt: skip
    return parser


# the command line runs --steps whatever the fast mode (only the notebooks shorten their runs), and
# checkpoints every 500 steps unless told otherwise, as it always has
_CLI_ONLY = {"steps_fast": None, "checkpoint_every": 500}


def _config_fields() -> tuple[list[dataclasses.Field], list[dataclasses.Field]]:
    """The options: every TrainConfig field but the nested model and steps_fast, then every VQVAEConfig field."""
    own = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("model", "steps_fast")]
    return own, list(dataclasses.fields(VQVAEConfig))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with every option given on the command line applied."""
    given = {f.name: getattr(args, f.name) for group in _config_fields() for f in group if hasattr(args, f.name)}
    return TrainConfig.preset(_preset(args), **{**_CLI_ONLY, **given})


def _preset(args: argparse.Namespace) -> str:
    if args.preset is not None:
        return args.preset
    if args.folder is not None:
        return "folder-128" if (getattr(args, "image_size", None) or 64) >= 128 else "folder"
    return "mnist"


def _take(dataset, n: int, seed: int):
    """``n`` images of ``dataset`` drawn with ``seed`` (all of them if it has fewer)."""
    if n >= len(dataset):
        return dataset
    if hasattr(dataset, "subset"):
        return dataset.subset(n, seed=seed)
    from torch.utils.data import Subset

    return Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.folder is not None and cfg.dataset != "folder":
        raise SystemExit(f"--folder trains on your images, but --preset {args.preset} is for {cfg.dataset}: "
                         f"leave --preset out, or give folder or folder-128")  # fmt: skip
    rank, world, dist_device = init_distributed()
    main_process = rank == 0
    device = dist_device or pick_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(device))
    root = args.folder or args.data_root
    out = args.out or checkpoint_dir() / (f"{Path(root).expanduser().resolve().name}.pt" if args.folder else f"{_preset(args)}.pt")
    if cfg.dataset == "folder":
        if root is None:
            raise SystemExit("--preset folder needs --folder PATH_TO_IMAGES")
        try:
            train_set = load_dataset("folder", "train", root=root, image_size=cfg.image_size)
            test_set = load_dataset("folder", "test", root=root, image_size=cfg.image_size)
        except DatasetNotFoundError as err:
            raise SystemExit(str(err)) from None
        test_name = f"the {len(test_set):,} held-out image(s)"
    else:
        train_set = load_dataset(cfg.dataset, "train", root=root, image_size=cfg.image_size)
        test_set, test_name = load_test_set(cfg.dataset, root=root, image_size=cfg.image_size)
    if args.train_subset:
        train_set = _take(train_set, args.train_subset, cfg.seed)
    if args.eval_subset:
        test_name = f"{min(args.eval_subset, len(test_set)):,} of {test_name}"
        test_set = _take(test_set, args.eval_subset, cfg.seed)
    if cfg.dataset == "folder":  # fitted to what is left: channels, and a batch no larger than the images
        cfg = cfg.for_dataset(train_set)
        cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size - cfg.batch_size % world or world)
        if main_process:
            print(describe_split(len(train_set), len(test_set), cfg.batch_size))
    if cfg.batch_size % world:
        raise SystemExit(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")

    model = wrap_distributed(cfg.build_model().to(device), device)  # the seed gives every process the same weights
    if args.amp and device.type == "cuda":
        _autocast_forward(model)
    loader = make_loader(train_set, cfg.batch_size // world, seed=cfg.seed, rank=rank, world_size=world)
    if main_process:
        print(f"{world} process(es) on {device}; config: {cfg}")
        print(f"train {len(train_set):,} images, evaluate on {test_name}; checkpoint {out}")
    # a folder's model records where its images are, so that notebooks 8 and 9 can offer it
    extra = {"image_folder": str(Path(root).expanduser().resolve()), "image_size": cfg.image_size} if cfg.dataset == "folder" else None
    result = train_loop(model, loader, cfg, eval_loader=test_set, checkpoint_path=out, extra=extra,
                        resume=bool(args.resume and out.exists()), progress=not args.no_progress)  # fmt: skip
    trained = unwrap(model)
    if world > 1:
        difference = replica_difference(model)
        if main_process:
            print(f"max weight difference across {world} processes: {difference:.3g}")
        del model  # the DDP wrapper holds the process group: gone before the group is (end_distributed)
        end_distributed()
        if difference > 0:
            print("the processes' weights diverged", file=sys.stderr)
            return 1
    if main_process:
        print(f"{'interrupted' if result.interrupted else 'finished'} at step {result.steps} "
              f"in {result.seconds:.0f} s; checkpoint: {result.checkpoint_path}")  # fmt: skip
        if result.final_eval:
            e = result.final_eval
            print(f"test ({test_name}): NMSE {e['nmse']:.4f}, PSNR {e['psnr']:.2f} dB, codes used {e['codes_used']}")
            if cfg.dataset == "folder":  # the gap to the images it trained on says how well it generalises
                seen = evaluate(trained, _take(train_set, 1000, seed=1))
                print(f"training ({min(1000, len(train_set)):,} of the {len(train_set):,} training images): "
                      f"NMSE {seen['nmse']:.4f}, PSNR {seen['psnr']:.2f} dB")
        for path in write_pictures(trained, test_set, out, train_set):
            print(f"wrote {path}")
    return 0


def write_pictures(model: torch.nn.Module, test_set, out: Path, train_set=None) -> list[Path]:
    """``<out>_reconstructions.png`` (up to 8 test images over their reconstructions) and
    ``<out>_interpolation.gif`` (16 frames between the latents of the first and last of those images,
    decoded). A test set of fewer than 8 images (a small folder's held-out part) is completed with
    training images, and the title says how many of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .interpolation import interpolate_latents, save_gif
    from .plotting import show_reconstructions

    device = next(model.parameters()).device
    held = min(8, len(test_set))
    images = [test_set[i][0] for i in range(held)]
    if train_set is not None:
        images += [train_set[i][0] for i in range(min(8 - held, len(train_set)))]
    n = len(images)
    x = torch.stack(images).to(device)
    title = None if n == held else f"the first {held} held out, the other {n - held} training images"
    figure = show_reconstructions(x.cpu(), model.reconstruct(x).cpu(), n=n, title=title)
    grid = out.with_name(out.stem + "_reconstructions.png")
    grid.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(grid, dpi=100)
    plt.close(figure)
    written = [grid]
    if n >= 2:
        frames = interpolate_latents(model, x[0], x[n - 1], steps=16).cpu()
        written.append(save_gif(frames, out.with_name(out.stem + "_interpolation.gif"), scale=max(1, 128 // x.shape[-1])))
    return written


def _autocast_forward(model: torch.nn.Module) -> None:
    """Run ``model``'s forward under bf16 autocast (the loss is computed in float32 outside it)."""
    forward = model.forward

    def autocast_forward(self, *args, **kwargs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x_hat, q = forward(*args, **kwargs)
        return x_hat.float(), q

    model.forward = types.MethodType(autocast_forward, model)


if __name__ == "__main__":
    sys.exit(main())
