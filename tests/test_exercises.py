"""The exercise checkers accept the reference solutions and reject each plausible wrong answer with the
message that explains it (a checker that passes everything would teach nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqvae_lib import VectorQuantizerEMA, nearest_code
from vqvae_lib.exercises import check_ema_update, check_nearest_code, check_quantizer_loss, check_straight_through

# -- reference solutions --------------------------------------------------------------------------


def nearest_code_reference(z, codebook):
    return ((z[:, None] - codebook[None]) ** 2).sum(-1).argmin(dim=1)


def straight_through_reference(z_e, z_q):
    return z_e + (z_q - z_e).detach()


def quantizer_loss_reference(z_e, e, beta):
    return F.mse_loss(e, z_e.detach()) + beta * F.mse_loss(z_e, e.detach())


@pytest.mark.parametrize(
    "solution", [nearest_code_reference, nearest_code, lambda z, e: torch.cdist(z, e).argmin(1)], ids=["inline", "library", "cdist"]
)
def test_correct_nearest_code_searches_pass(solution, capsys):
    assert check_nearest_code(solution)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda z, e: ((z[:, None] - e[None]) ** 2).sum(-1).argmax(dim=1), "argmax instead of argmin"),
        (lambda z, e: (-2 * z @ e.T).argmin(dim=1), "leaves out ||e||^2"),
        (lambda z, e: ((z[:, None] - e[None]) ** 2).sum(-1), "take the argmin"),
        (lambda z, e: ((z[:, None] - e[None]) ** 2).sum(-1).argmin(dim=1).float(), "integers"),
        (lambda z, e: ((z[:, None] - e[None]).abs()).sum(-1).argmin(dim=1), "nearest is at"),  # L1, not L2
        (lambda z, e: z.argmin(), "shape"),
        (lambda z, e: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["argmax", "no-e-norm", "distances", "floats", "l1", "scalar", "raises"],
)
def test_wrong_nearest_code_searches_are_explained(wrong, message):
    result = check_nearest_code(wrong)
    assert not result and message in result.message


def test_straight_through(capsys):
    assert check_straight_through(straight_through_reference)
    cases = {
        "z_e receives no gradient": lambda z_e, z_q: z_q.detach(),
        "its value is z_e": lambda z_e, z_q: z_e,
        "also reaches z_q": lambda z_e, z_q: z_e + (z_q - z_e),  # the detach forgotten
        "not the incoming gradient": lambda z_e, z_q: 2 * z_e + (z_q - 2 * z_e).detach(),
        "shape": lambda z_e, z_q: (z_e + (z_q - z_e).detach()).T,
    }
    assert check_straight_through(lambda z_e, z_q: z_e - (z_e - z_q).detach())  # the same, written the other way
    assert check_straight_through(lambda z_e, z_q: z_e.double() + (z_q.double() - z_e.double()).detach())  # float64 is fine
    for message, wrong in cases.items():
        result = check_straight_through(wrong)
        assert not result and message in result.message, (message, result.message)


def test_quantizer_loss_catches_beta_on_the_wrong_term():
    assert check_quantizer_loss(quantizer_loss_reference)
    assert check_quantizer_loss(lambda z_e, e, beta: ((e - z_e.detach()) ** 2).mean() + beta * ((z_e - e.detach()) ** 2).mean())
    cases = {
        "beta is on the codebook term": lambda z_e, e, beta: beta * F.mse_loss(e, z_e.detach()) + F.mse_loss(z_e, e.detach()),
        "stop-gradients are swapped": lambda z_e, e, beta: F.mse_loss(e.detach(), z_e) + beta * F.mse_loss(z_e.detach(), e),
        "stop-gradients are missing": lambda z_e, e, beta: (1 + beta) * F.mse_loss(z_e, e),
        "one stop-gradient is missing": lambda z_e, e, beta: F.mse_loss(e, z_e) + beta * F.mse_loss(z_e, e.detach()),
        "a sum over elements": lambda z_e, e, beta: (1 + beta) * ((z_e - e.detach()) ** 2).sum(),
        "expected": lambda z_e, e, beta: F.mse_loss(e, z_e.detach()) + F.mse_loss(z_e, e.detach()),  # no beta
        "beta = 0.25 whatever": lambda z_e, e, beta: F.mse_loss(e, z_e.detach()) + 0.25 * F.mse_loss(z_e, e.detach()),
        "neither z_e nor e gets a gradient": lambda z_e, e, beta: (1 + beta) * F.mse_loss(z_e.detach(), e.detach()),
        "return one tensor": lambda z_e, e, beta: (F.mse_loss(e, z_e.detach()), F.mse_loss(z_e, e.detach())),
    }
    for message, wrong in cases.items():
        result = check_quantizer_loss(wrong)
        assert not result and message in result.message, (message, result.message)


def ema_update_reference(cluster_size, embed_sum, z, indices, decay, eps):
    n_k = torch.bincount(indices, minlength=len(cluster_size)).float()
    s_k = torch.zeros_like(embed_sum).index_add_(0, indices, z)
    cluster_size = decay * cluster_size + (1 - decay) * n_k
    embed_sum = decay * embed_sum + (1 - decay) * s_k
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + len(cluster_size) * eps) * n
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def ema_update_by_the_library(cluster_size, embed_sum, z, indices, decay, eps):
    # the library's quantizer, given the same state, takes the same step
    q = VectorQuantizerEMA(len(cluster_size), embed_sum.shape[1], decay=decay, eps=eps).train()
    q.ema_cluster_size.copy_(cluster_size), q.ema_embed_sum.copy_(embed_sum)
    q._update_codebook(z, indices, torch.bincount(indices, minlength=len(cluster_size)))
    return q.ema_cluster_size, q.ema_embed_sum, q.codebook


def test_ema_update():
    assert check_ema_update(ema_update_reference)
    assert check_ema_update(ema_update_by_the_library)

    def variant(decay_weights=False, mean=False, smooth=True):
        def fn(cluster_size, embed_sum, z, indices, decay, eps):
            n_k = torch.bincount(indices, minlength=len(cluster_size)).float()
            s_k = torch.zeros_like(embed_sum).index_add_(0, indices, z)
            if mean:
                s_k = s_k / n_k.clamp_min(1)[:, None]
            a, b = (1 - decay, decay) if decay_weights else (decay, 1 - decay)
            cluster_size, embed_sum = a * cluster_size + b * n_k, a * embed_sum + b * s_k
            n = cluster_size.sum()
            size = (cluster_size + eps) / (n + len(cluster_size) * eps) * n if smooth else cluster_size
            return cluster_size, embed_sum, embed_sum / size[:, None]

        return fn

    cases = {
        "weight the new counts by decay": variant(decay_weights=True),
        "averages the assigned vectors": variant(mean=True),
        "Laplace-smoothed": variant(smooth=False),
        "return three tensors": lambda *args: args[0],
        "minlength": lambda size, total, z, idx, decay, eps: ema_update_reference(size[:6], total, z, idx, decay, eps),
        "come back unchanged": lambda size, total, z, idx, decay, eps: (size, *ema_update_reference(size, total, z, idx, decay, eps)[1:]),
    }
    for message, wrong in cases.items():
        result = check_ema_update(wrong)
        assert not result and message in result.message, (message, result.message)
