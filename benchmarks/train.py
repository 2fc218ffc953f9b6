"""Train a notebook configuration from scratch and print speed and test metrics.

    python benchmarks/train.py --dataset mnist
    python benchmarks/train.py --dataset cifar10 --steps 4000 --set hidden_channels=96 batch_size=128

MNIST is evaluated on its 10,000 test images; CIFAR10 on the 1,000 exact-pixel test images of
``cifar10-exact`` when they are in the data root (JPEG test images flatter nothing but also prove
nothing), otherwise on the regular test split. Prints a line every ``--eval-every`` steps and a
summary table at the end.
"""

from __future__ import annotations

import argparse
import ast
import platform
import time

import torch

from vqvae_lib import DatasetNotFoundError, TrainConfig, load_dataset, make_loader, train


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def test_set_for(cfg: TrainConfig):
    if cfg.dataset == "cifar10":
        try:
            return load_dataset("cifar10-exact", "test"), "cifar10-exact test (1,000 exact-pixel images)"
        except DatasetNotFoundError:
            return load_dataset("cifar10", "test"), "cifar10 test (10,000)"
    size = cfg.image_size
    return load_dataset(cfg.dataset, "test", image_size=size, in_memory=True), f"{cfg.dataset} test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10", "food101"])
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's full-mode steps")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override TrainConfig fields")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = TrainConfig.preset(args.dataset, **parse_overrides(args.set))
    steps = args.steps or cfg.steps
    eval_every = args.eval_every or max(1, steps // 6)
    train_set = load_dataset(cfg.dataset, "train", image_size=cfg.image_size, in_memory=True)
    test_set, test_name = test_set_for(cfg)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: {cfg}")
    print(f"train {len(train_set)} images, eval on {test_name}")

    model = cfg.build_model()
    loader = make_loader(train_set, cfg.batch_size, seed=cfg.seed)
    t0 = time.perf_counter()
    result = train(
        model, loader, steps=steps, lr=cfg.lr, lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, device=cfg.device, eval_loader=test_set, eval_every=eval_every, seed=cfg.seed,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    final = result.final_eval
    print("\n| dataset | steps | batch | wall s | train s | images/s | mse | nmse | psnr dB | perplexity | codes used |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {cfg.dataset} | {result.steps} | {cfg.batch_size} | {wall:.0f} | {result.seconds:.0f} | "
        f"{result.steps * cfg.batch_size / result.seconds:.0f} | {final['mse']:.5f} | {final['nmse']:.4f} | "
        f"{final['psnr']:.2f} | {final['perplexity']:.1f} of {cfg.num_embeddings} | {final['codes_used']} |"
    )


if __name__ == "__main__":
    main()
