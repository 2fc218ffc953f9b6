"""Notebook 10's comparison at equal bits (vqvae_lib.comparison): every option really spends the same bits,
a run is reproduced by its seed and moved by another, and the tables report what the runs hold."""

from __future__ import annotations

import math

import pytest

from vqvae_lib import TrainConfig
from vqvae_lib.comparison import EQUAL_BITS, add_prior_bits, compare, results_table, seed_table

GRIDS = {"mnist": (7, 7), "cifar10": (8, 8)}


@pytest.mark.parametrize("preset", sorted(EQUAL_BITS))
def test_every_option_spends_the_same_bits(preset):
    """The comparison is only fair if each model's indices take the same K values on the same grid."""
    bits = set()
    for name, overrides in EQUAL_BITS[preset].items():
        model = TrainConfig.preset(preset, **overrides).build_model()
        channels = 1 if preset == "mnist" else 3
        size = 28 if preset == "mnist" else 32
        grid = tuple(model.latent_shape((size, size)))
        assert grid == GRIDS[preset], name
        bits.add(grid[0] * grid[1] * math.log2(model.quantizer.num_embeddings))
        assert model.config["in_channels"] == channels
    assert len(bits) == 1, bits


def test_a_run_is_reproduced_by_its_seed_and_moved_by_another(mnist_small):
    """Guards the seed reaching the weights and the batch order: without it, 'seed 1' repeats seed 0 and the
    notebook's seed-to-seed spread reads zero. Equality is exact: the same seed on one machine runs the same
    float operations in the same order."""
    train_set, test_set = mnist_small[0].subset(256, seed=0), mnist_small[1].subset(128, seed=0)
    options = {"VQ (paper, EMA)": EQUAL_BITS["mnist"]["VQ (paper, EMA)"]}
    first, _ = compare("mnist", options, train_set, test_set, steps=4, seed=0, progress=False)
    again, models = compare("mnist", options, train_set, test_set, steps=4, seed=0, progress=False)
    other, _ = compare("mnist", options, train_set, test_set, steps=4, seed=1, progress=False)
    name = "VQ (paper, EMA)"
    assert first[name]["nmse"] == again[name]["nmse"] and first[name]["curve_recon"] == again[name]["curve_recon"]
    assert first[name]["curve_recon"] != other[name]["curve_recon"]
    assert first[name]["steps"] == 4 and first[name]["K"] == 128 and first[name]["seed"] == 0

    add_prior_bits(models, again, "mnist", train_set, test_set, steps=2, seed=0)
    bits = again[name]["prior_bits"]
    # an untrained prior on 49 positions of 7 bits: near the 343 bits of a uniform guess, never near 0
    assert 250 < bits < 450, bits
    table = results_table(again, (7, 7)).splitlines()
    assert table[0] == "343 bits per image in every row" and "prior bits" in table[1]
    assert f"{again[name]['nmse']:.4f}" in table[2] and f"{bits:.0f}" in table[2]


def test_seed_table_gives_each_spread():
    runs = {0: {"a": dict(nmse=0.0300, prior_bits=170.0)}, 1: {"a": dict(nmse=0.0275, prior_bits=181.4)}}
    names, seeds, row = seed_table(runs).splitlines()
    assert names.split() == ["test", "NMSE", "prior", "bits", "per", "image"]
    assert seeds.split() == ["seed", "0", "seed", "1", "spread"] * 2
    assert row.split()[1:] == ["0.0300", "0.0275", "0.0025", "170", "181", "11"]

