"""Checkers for the notebooks' exercises: each runs your function on cases you have not seen and says
what is wrong with it, not only that something is.

    from vqvae_lib.exercises import check_nearest_code
    check_nearest_code(my_nearest_code)      # prints what it found; returns a CheckResult (truthy if right)

Every checker compares against the definition written out in its docstring (not against the library's
code), on seeded random cases, and recognises the usual mistakes by the shape of the wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["CheckResult", "check_nearest_code", "check_straight_through", "check_quantizer_loss"]


@dataclass
class CheckResult:
    """What a checker found: ``passed`` and a message for the reader (printed as well)."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return ("correct: " if self.passed else "not yet: ") + self.message


def _report(passed: bool, message: str) -> CheckResult:
    result = CheckResult(passed, message)
    print(result)
    return result


def _gradients(value: Tensor, *inputs: Tensor) -> tuple[Tensor | None, ...]:
    """d value / d input for each input (None where it does not depend on it); nothing accumulates in
    ``.grad``: a checker inspects gradients, it trains nothing."""
    return torch.autograd.grad(value, inputs, allow_unused=True)


def _cases(seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """(z (N, D), codebook (K, D)) pairs: small and odd shapes, one codebook with a repeated code."""
    g = torch.Generator().manual_seed(seed)
    cases = [(torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)) for n, k, d in [(7, 5, 2), (64, 16, 8), (3, 40, 1)]]
    z, codebook = torch.randn(20, 3, generator=g), torch.randn(6, 3, generator=g)
    codebook[4] = codebook[1]  # a tie: either index is right
    # scaled codes: ||e||^2 then differs a lot between codes, which exposes a search that leaves it out
    cases += [(z, codebook), (torch.randn(50, 4, generator=g), torch.randn(12, 4, generator=g) * torch.linspace(0.2, 3, 12)[:, None])]
    return cases


def check_nearest_code(fn: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``fn(z, codebook)``: ``z`` ``(N, D)``, ``codebook`` ``(K, D)`` -> ``(N,)`` integer indices with
    ``indices[i] = argmin_k ||z[i] - codebook[k]||^2`` (either index of tied codes is accepted)."""
    for z, codebook in _cases():
        try:
            out = fn(z.clone(), codebook.clone())
        except Exception as err:  # the reader's code: whatever it raises is the finding
            return _report(False, f"it raised {type(err).__name__}: {err} (z {tuple(z.shape)}, codebook {tuple(codebook.shape)})")
        if not isinstance(out, Tensor):
            return _report(False, f"it returned a {type(out).__name__}; return a tensor of indices")
        n, k = len(z), len(codebook)
        if out.shape != (n,):
            hint = " (distances? take the argmin over the codes)" if out.shape == (n, k) else ""
            return _report(False, f"for z {tuple(z.shape)} and codebook {tuple(codebook.shape)} it returned shape {tuple(out.shape)}, not ({n},){hint}")
        if out.is_floating_point():
            return _report(False, "it returned floats; indices are integers (torch.long)")
        if out.min() < 0 or out.max() >= k:
            return _report(False, f"it returned indices outside 0 .. {k - 1}")
        distances = (z.double()[:, None] - codebook.double()[None]).pow(2).sum(-1)  # the definition, in float64
        best = distances.min(dim=1).values
        chosen = distances.gather(1, out.long()[:, None]).squeeze(1)
        # float32 searches may round a near-tie either way: 1e-5 of the distances' scale is ~100x the
        # float32 error of ||z||^2 - 2 z.e + ||e||^2 at these magnitudes, and far below any real gap
        wrong = (chosen - best) > 1e-5 * (1 + best)
        if wrong.any():
            i = int(wrong.nonzero()[0])
            if torch.equal(out.long(), distances.argmax(dim=1)):
                why = "it picks the farthest code: argmax instead of argmin"
            elif torch.equal(out.long(), (-2 * z.double() @ codebook.double().T).argmin(dim=1)):
                why = "it leaves out ||e||^2: only ||z||^2 is the same for every code and can be dropped"
            else:
                why = f"for z[{i}] it chose code {int(out[i])} at squared distance {float(chosen[i]):.4f}, but the nearest is at {float(best[i]):.4f}"
            return _report(False, why)
    return _report(True, f"the nearest code on all {len(_cases())} cases, ties included")


def check_straight_through(fn: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``fn(z_e, z_q)`` -> a tensor whose *value* is ``z_q`` and whose *gradient* goes to ``z_e`` unchanged
    (the identity), with no gradient to ``z_q`` (the codes are trained by the codebook loss, not by
    the decoder's gradient)."""
    g = torch.Generator().manual_seed(1)
    z_e = torch.randn(6, 3, generator=g, requires_grad=True)
    z_q = torch.randn(6, 3, generator=g, requires_grad=True)  # stands for codebook rows that could learn
    upstream = torch.randn(6, 3, generator=g)
    try:
        out = fn(z_e, z_q)
        grad_z_e = grad_z_q = None
        if isinstance(out, Tensor) and out.requires_grad:
            grad_z_e, grad_z_q = _gradients((out * upstream).sum(), z_e, z_q)
    except Exception as err:
        return _report(False, f"it raised {type(err).__name__}: {err}")
    if not isinstance(out, Tensor):
        return _report(False, f"it returned a {type(out).__name__}; return a tensor")
    # z_e + (z_q - z_e) rounds in float32: two roundings of numbers below ~5, so 1e-5 is ~20x that error
    if grad_z_q is not None and grad_z_q.abs().sum() > 0:  # first: this mistake also disturbs z_e's gradient
        return _report(False, "the gradient also reaches z_q: detach (z_q - z_e) so the codes only learn from the codebook loss")
    if out.shape != z_q.shape or not torch.allclose(out.detach(), z_q.detach(), rtol=0, atol=1e-5):
        close_to_ze = out.shape == z_e.shape and torch.allclose(out.detach(), z_e.detach(), atol=1e-5)
        return _report(False, "its value is z_e: the decoder must receive the codes z_q" if close_to_ze else "its value is not z_q")
    if grad_z_e is None or not grad_z_e.abs().sum() > 0:
        return _report(False, "z_e receives no gradient: the encoder would never learn (notebook 2's broken model)")
    if not torch.allclose(grad_z_e, upstream, rtol=0, atol=1e-6):  # an identity backward is exact up to rounding
        return _report(False, "z_e's gradient is not the incoming gradient: straight-through copies it unchanged")
    return _report(True, "value z_q, gradient to z_e unchanged, none to z_q")


def check_quantizer_loss(fn: Callable[[Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``fn(z_e, e, beta)`` -> ``||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2`` as a mean over elements:
    the codebook term moves only the codes ``e``, the commitment term (scaled by ``beta``) only ``z_e``."""
    g = torch.Generator().manual_seed(2)
    z_e = torch.randn(10, 4, generator=g, requires_grad=True)
    e = torch.randn(10, 4, generator=g, requires_grad=True)
    beta = 0.25
    try:
        loss = fn(z_e, e, beta)
        to_z, to_e = _gradients(loss, z_e, e) if loss.requires_grad and loss.numel() == 1 else (None, None)
    except Exception as err:
        return _report(False, f"it raised {type(err).__name__}: {err}")
    diff = (z_e - e).detach()
    expected = float(diff.pow(2).mean()) * (1 + beta)
    unit = 2 * diff / diff.numel()  # the gradient of mean((z_e - e)^2) with respect to z_e
    # relative 1e-5: float32 sums of 40 squares; any real mistake is off by a factor (beta, N, 2)
    if loss.numel() != 1:
        return _report(False, f"it returned shape {tuple(loss.shape)}; the loss is one number (a mean)")
    value = float(loss.detach())
    if abs(value - expected) > 1e-5 * expected:
        if abs(value - expected * diff.numel()) < 1e-4 * expected * diff.numel():
            return _report(False, "the value is a sum over elements; use the mean, as the reconstruction term does")
        return _report(False, f"the value is {value:.5f}, expected {expected:.5f} = (1 + beta) * mean((z_e - e)^2)")
    if to_e is None or to_z is None:
        return _report(False, "one side gets no gradient at all: the codes need the codebook term, the encoder the commitment term")
    if torch.allclose(to_e, -beta * unit, rtol=1e-4) and torch.allclose(to_z, unit, rtol=1e-4):
        return _report(False, "beta is on the codebook term: it must scale the commitment term (the encoder's side)")
    if torch.allclose(to_z, (1 + beta) * unit, rtol=1e-4):
        return _report(False, "the stop-gradients are missing: both terms move both z_e and e")
    if not (torch.allclose(to_e, -unit, rtol=1e-4) and torch.allclose(to_z, beta * unit, rtol=1e-4)):
        return _report(False, "the gradients are not those of codebook + beta * commitment with stop-gradients")
    return _report(True, "the value, and each term's gradient on its own side: codes by the codebook term, z_e by beta * commitment")
