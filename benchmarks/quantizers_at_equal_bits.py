"""Notebook 10's comparison of five quantizers at equal bits, for another seed.

    python benchmarks/quantizers_at_equal_bits.py --seed 1
    python benchmarks/quantizers_at_equal_bits.py --seed 1 --out data/pretrained/quantizer_comparison_seed1.json

Runs exactly what notebook 10 runs in full mode (``vqvae_lib.comparison``): on MNIST, five models of
2,800 steps and a prior of 600 steps on each one's codes; on CIFAR10, five models of 4,000 steps and a
prior of 400 steps. Every run starts from ``--seed`` (model weights, batch order, prior weights). Prints
each dataset's table and, with ``--out``, writes the runs as JSON in the format of notebook 10's record,
which the notebook sets beside its own run (seed 0) to show how far another seed moves each number.
About 25 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from vqvae_lib import load_dataset, load_test_set
from vqvae_lib.comparison import EQUAL_BITS, add_prior_bits, compare, results_table

# (grid, VQ-VAE steps, prior steps): notebook 10's full-mode budget
BUDGET = {"mnist": ((7, 7), None, 600), "cifar10": ((8, 8), 4000, 400)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--datasets", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    parser.add_argument("--out", type=Path, default=None, help="write the runs here as JSON")
    args = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"seed {args.seed}")  # fmt: skip
    record = {}
    for dataset in args.datasets:
        grid, steps, prior_steps = BUDGET[dataset]
        train_set = load_dataset(dataset, "train")
        test_set, test_name = load_test_set(dataset)
        print(f"\n{dataset}, tested on {test_name}")
        runs, models = compare(dataset, EQUAL_BITS[dataset], train_set, test_set, steps=steps, seed=args.seed,
                               progress=False)  # fmt: skip
        add_prior_bits(models, runs, dataset, train_set, test_set, steps=prior_steps, seed=args.seed)
        print(results_table(runs, grid))
        record[dataset] = runs
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, args.out)  # a finished record or none: never half a file
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
