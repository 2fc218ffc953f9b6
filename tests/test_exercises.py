"""The exercise checkers accept the reference solutions and reject each plausible wrong answer with the
message that explains it (a checker that passes everything would teach nothing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqvae_lib import VectorQuantizerEMA, nearest_code
from torch import nn

from vqvae_lib.exercises import (
    check_causal_mask,
    check_ema_update,
    check_nearest_code,
    check_quantizer_loss,
    check_residual_block,
    check_slerp,
    check_straight_through,
)
from vqvae_lib.model import ResidualBlock

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


# -- residual block (notebook 5) -------------------------------------------------------------------


class ResidualBlockReference(nn.Module):
    def __init__(self, channels, hidden, inplace=False, bias=False, skip="x", padding=1):
        super().__init__()
        self.skip = skip
        self.branch = nn.Sequential(
            nn.ReLU(inplace=inplace), nn.Conv2d(channels, hidden, 3, padding=padding, bias=bias),
            nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=bias),
        )

    def forward(self, x):
        if self.skip == "none":
            return self.branch(x)
        if self.skip == "relu-after":
            return torch.relu(x + self.branch(x))
        return x + self.branch(x)


@pytest.mark.parametrize("solution", [ResidualBlockReference, ResidualBlock, lambda c, h: ResidualBlockReference(c, h, bias=True)],
                         ids=["inline", "library", "with-biases"])
def test_correct_residual_blocks_pass(solution):
    assert check_residual_block(solution)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda c, h: ResidualBlockReference(c, h, inplace=True), "in-place ReLU"),
        (lambda c, h: ResidualBlockReference(c, h, skip="none"), "skip connection (x + ...) is missing"),
        (lambda c, h: ResidualBlockReference(c, h, skip="relu-after"), "returns relu(x)"),
        (lambda c, h: ResidualBlockReference(c, h, padding=0), "RuntimeError"),
        (lambda c, h: ResidualBlockReference(c, c), "parameters have sizes"),  # hidden width ignored
    ],
    ids=["inplace-relu", "no-skip", "relu-after-sum", "no-padding", "wrong-width"],
)
def test_wrong_residual_blocks_are_explained(wrong, message):
    result = check_residual_block(wrong)
    assert not result and message in result.message


# -- slerp (notebook 8) ---------------------------------------------------------------------------


def slerp_reference(a, b, t):
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    arc = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.where(parallel, torch.ones_like(sin), sin)
    return torch.where(parallel, (1 - t) * a + t * b, arc)


def test_slerp():
    assert check_slerp(slerp_reference)
    assert check_slerp(lambda a, b, t: slerp_reference(a.double(), b.double(), t).float())

    def unguarded(a, b, t):
        omega = torch.arccos((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1, 1))
        return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)

    def one_angle_for_all_rows(a, b, t):
        omega = torch.arccos((F.normalize(a.flatten(), dim=0) * F.normalize(b.flatten(), dim=0)).sum().clamp(-1, 1))
        return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)

    cases = {
        "straight line": lambda a, b, t: (1 - t) * a + t * b,
        "NaN or inf where a and b are parallel": unguarded,
        "angle of each row pair": one_angle_for_all_rows,
        "one interpolated row per row": lambda a, b, t: slerp_reference(a, b, t).sum(0),
        "raised ValueError": lambda a, b, t: float("x"),
    }
    for message, wrong in cases.items():
        result = check_slerp(wrong)
        assert not result and message in result.message, (message, result.message)


# -- causal masks (notebook 9) --------------------------------------------------------------------


def causal_mask_reference(k, include_center):
    mask = torch.ones(k, k)
    mask[k // 2, k // 2 + int(include_center) :] = 0
    mask[k // 2 + 1 :] = 0
    return mask


def test_causal_mask():
    assert check_causal_mask(causal_mask_reference)
    assert check_causal_mask(lambda k, c: causal_mask_reference(k, c).bool())

    def centre_row_only(k, c):
        mask = torch.zeros(k, k)
        mask[k // 2, : k // 2 + int(c)] = 1
        return mask

    cases = {
        "centre is wrong in mask A": lambda k, c: causal_mask_reference(k, not c),  # A and B swapped
        "below the centre row": lambda k, c: causal_mask_reference(k, c).T,
        "right of the centre": lambda k, c: torch.cat([torch.ones(k // 2, k), torch.tensor([[1.0] * (k // 2) + [float(c)] + [1.0] * (k // 2)]), torch.zeros(k // 2, k)]),
        "should be": centre_row_only,  # forgets the rows above
        "not a (3, 3) tensor": lambda k, c: causal_mask_reference(k, c)[:-1],
    }
    for message, wrong in cases.items():
        result = check_causal_mask(wrong)
        assert not result and message in result.message, (message, result.message)
