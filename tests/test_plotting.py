"""Figures whose colours must mean something, and strips that fit on a page."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from vqvae_lib.plotting import plot_training_curves, show_code_grids, show_error_maps, show_frames


def test_code_grids_are_coloured_by_how_common_each_code_is():
    indices = torch.tensor([[[3, 3], [3, 7]], [[7, 1], [3, 3]]])
    usage = torch.zeros(10)
    usage[3], usage[7], usage[1] = 6, 3, 1  # shares 0.6, 0.3, 0.1
    fig = show_code_grids(torch.rand(2, 1, 8, 8), indices, usage=usage)
    shown = [ax.images[0].get_array() for ax in fig.axes[1:4:2]]
    np.testing.assert_allclose(shown[0], [[0.6, 0.6], [0.6, 0.3]])  # not the indices 3 and 7
    np.testing.assert_allclose(shown[1], [[0.3, 0.1], [0.6, 0.6]])
    labels = sorted(t.get_text() for t in fig.axes[1].texts)
    assert labels == ["3", "3", "3", "7"] and min(t.get_fontsize() for t in fig.axes[1].texts) >= 9
    plt.close(fig)
    # without usage counts: the share within the grids shown (five 3s, two 7s, one 1 of 8 positions)
    fig = show_code_grids(torch.rand(2, 1, 8, 8), indices)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), [[5 / 8, 5 / 8], [5 / 8, 2 / 8]])
    plt.close(fig)


def test_interpolation_strips_fit_a_page():
    for size in (28, 64, 128):
        fig = show_frames(torch.rand(24, 3, size, size), title="frames")
        width, _ = fig.get_size_inches()
        plt.close(fig)
        assert width <= 14 + 1e-9, (size, width)  # 14 inches, up to the float rounding of a scale factor


def test_error_maps_share_one_scale_so_twice_the_error_looks_brighter(mnist_small):
    """Guards a scale per row: each row stretched to its own maximum makes every model look equally wrong."""
    x = torch.stack([mnist_small[1][i][0] for i in range(6)])
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator)
    fig = show_error_maps(x, {"small error": x + 0.05 * noise, "twice the error": x + 0.10 * noise})
    small, double = (np.asarray(ax.images[0].get_array(), dtype=float) for ax in fig.axes[1:3])
    # inferno's red channel grows with the error; on one scale the doubled row is clearly brighter (1.3x is far
    # below the 2x of the errors, and far above what a scale per row gives: the two rows equal, ratio 1.0)
    assert double[..., 0].mean() > 1.3 * small[..., 0].mean()
    # the titles give each row's own MSE: the same noise at twice the size, four times the MSE
    small_mse = float((0.05 * noise).pow(2).mean())
    assert fig.axes[1].get_title().endswith(f"MSE {small_mse:.4f}")
    assert fig.axes[2].get_title().endswith(f"MSE {4 * small_mse:.4f}")
    plt.close(fig)


def test_training_curves_are_drawn_against_steps_and_seconds():
    runs = {"a": dict(curve_steps=list(range(0, 200, 10)), curve_recon=[1.0] * 20, steps=200, seconds=50.0)}
    fig = plot_training_curves(runs, "t")
    by_steps, by_seconds = (ax.lines[0].get_xdata() for ax in fig.axes)
    # the running mean of 9 drops 4 points at each end; seconds are steps at the run's pace (0.25 s a step)
    assert by_steps[0] == 40 and by_steps[-1] == 150
    np.testing.assert_allclose(by_seconds, by_steps * 0.25)
    plt.close(fig)
