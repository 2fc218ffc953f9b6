"""The exercise checkers accept the reference solutions and reject each plausible wrong answer with the
message that explains it (a checker that passes everything would teach nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqvae_lib import nearest_code
from vqvae_lib.exercises import check_nearest_code, check_quantizer_loss, check_straight_through

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
    }
    for message, wrong in cases.items():
        result = check_straight_through(wrong)
        assert not result and message in result.message, (message, result.message)


def test_quantizer_loss_catches_beta_on_the_wrong_term():
    assert check_quantizer_loss(quantizer_loss_reference)
    cases = {
        "beta is on the codebook term": lambda z_e, e, beta: beta * F.mse_loss(e, z_e.detach()) + F.mse_loss(z_e, e.detach()),
        "stop-gradients are missing": lambda z_e, e, beta: (1 + beta) * F.mse_loss(z_e, e),
        "a sum over elements": lambda z_e, e, beta: (1 + beta) * ((z_e - e.detach()) ** 2).sum(),
        "expected": lambda z_e, e, beta: F.mse_loss(e, z_e.detach()) + F.mse_loss(z_e, e.detach()),  # no beta
        "no gradient at all": lambda z_e, e, beta: (1 + beta) * F.mse_loss(z_e.detach(), e.detach()).requires_grad_(),
    }
    for message, wrong in cases.items():
        result = check_quantizer_loss(wrong)
        assert not result and message in result.message, (message, result.message)
