"""Figures whose colours must mean something, and strips that fit on a page."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch

from vqvae_lib.plotting import show_code_grids, show_frames


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
