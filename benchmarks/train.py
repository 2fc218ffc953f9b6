"""Train a notebook configuration from scratch and print speed and test metrics.

    python benchmarks/train.py --dataset mnist
    python benchmarks/train.py --dataset cifar10 --steps 4000 --set hidden_channels=96 batch_size=128
    python benchmarks/train.py --dataset mnist --prior                # then a PixelCNN prior on its codes
    python benchmarks/train.py --dataset cifar10 --prior --pretrained # prior only, on the committed VQ-VAE

MNIST is evaluated on its 10,000 test images; CIFAR10 on the 1,000 exact-pixel test images of
``cifar10-exact`` when they are in the data root (JPEG test images flatter nothing but also prove
nothing), otherwise on the regular test split. Prints a line every ``--eval-every`` steps and a
summary table at the end; "train s" counts from the first step (the codebook's data initialisation
included) and leaves out the evaluations, whose time is "eval s". With ``--prior`` it then encodes
the training and test images and trains notebook 9's Gated PixelCNN on the codes (``--prior-steps``,
``--prior-set FIELD=VALUE``), printing the encoding time, the prior's training time and its test
negative log-likelihood per code.
"""

from __future__ import annotations

import argparse
import ast
import platform
import time
from dataclasses import replace

import torch

from vqvae_lib import (
    PriorConfig, TrainConfig, extract_codes, find_checkpoint, load_checkpoint, load_dataset, load_test_set,
    make_loader, train, train_prior,
)  # fmt: skip


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10", "food101"])
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's full-mode steps")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override TrainConfig fields")
    parser.add_argument("--prior", action="store_true", help="then train a PixelCNN prior on the model's codes")
    parser.add_argument("--pretrained", action="store_true", help="with --prior: skip VQ-VAE training, use data/pretrained")
    parser.add_argument("--prior-steps", type=int, default=None, help="default: notebook 9's")
    parser.add_argument("--prior-set", nargs="*", default=[], metavar="FIELD=VALUE", help="override PriorConfig fields (channels, num_layers, lr, ...)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = TrainConfig.preset(args.dataset, **parse_overrides(args.set))
    train_set = load_dataset(cfg.dataset, "train", image_size=cfg.image_size, in_memory=True)
    test_set, test_name = load_test_set(cfg.dataset, image_size=cfg.image_size)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"config: {cfg}")
    print(f"train {len(train_set)} images, eval on {test_name}")

    if args.prior and args.pretrained:
        path = find_checkpoint(cfg.dataset, prefer="pretrained")
        model = load_checkpoint(path)
        print(f"VQ-VAE: the committed {path}")
    else:
        model = train_vqvae(cfg, train_set, test_set, args.steps or cfg.steps, args.eval_every)
    if args.prior:
        benchmark_prior(model, cfg.dataset, train_set, test_set, args.prior_steps, parse_overrides(args.prior_set))


def train_vqvae(cfg: TrainConfig, train_set, test_set, steps: int, eval_every: int | None):
    cfg = replace(cfg, steps=steps, steps_fast=None, eval_every=eval_every or max(1, steps // 6), checkpoint_every=0)
    model = cfg.build_model()
    loader = make_loader(train_set, cfg.batch_size, seed=cfg.seed)
    t0 = time.perf_counter()
    result = train(model, loader, cfg, eval_loader=test_set)
    wall = time.perf_counter() - t0
    final = result.final_eval
    print("\n| dataset | steps | batch | train s | eval s | wall s | images/s | mse | nmse | psnr dB | perplexity | codes used |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {cfg.dataset} | {result.steps} | {cfg.batch_size} | {result.seconds:.0f} | {result.eval_seconds:.0f} | {wall:.0f} | "
        f"{result.steps * cfg.batch_size / result.seconds:.0f} | {final['mse']:.5f} | {final['nmse']:.4f} | "
        f"{final['psnr']:.2f} | {final['perplexity']:.1f} of {cfg.model.num_embeddings} | {final['codes_used']} |"
    )
    return model


def benchmark_prior(model, dataset: str, train_set, test_set, steps: int | None, overrides: dict) -> None:
    pcfg = PriorConfig.preset(dataset, **overrides)
    steps = steps or pcfg.steps
    pcfg = replace(pcfg, steps=steps, steps_fast=None, eval_every=max(1, steps // 5))
    t0 = time.perf_counter()
    codes, labels = extract_codes(model, train_set, progress=False)
    test_codes, test_labels = extract_codes(model, test_set, progress=False)
    encode_s = time.perf_counter() - t0
    k = model.quantizer.num_embeddings
    prior = pcfg.build_prior(k, tuple(codes.shape[1:]), num_classes=int(labels.max()) + 1)
    print(f"\nprior: {sum(p.numel() for p in prior.parameters()):,} parameters, {pcfg}, {steps} steps")
    result = train_prior(prior, codes, labels, pcfg, eval_codes=(test_codes, test_labels), progress=False)
    final = result.final_eval
    print("\n| dataset | grid | K | encode s | prior steps | prior train s | grids/s | test NLL nats | bits per code | log K nats |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {dataset} | {codes.shape[1]}x{codes.shape[2]} | {k} | {encode_s:.0f} | {result.steps} | {result.seconds:.0f} | "
        f"{result.steps * pcfg.batch_size / result.seconds:.0f} | {final['nll_nats']:.3f} | {final['bits_per_code']:.3f} | "
        f"{final['uniform_nats']:.3f} |"
    )

if __name__ == "__main__":
    main()
