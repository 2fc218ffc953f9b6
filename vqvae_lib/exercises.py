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
from torch import Tensor, nn

__all__ = [
    "CheckResult",
    "check_nearest_code",
    "check_straight_through",
    "check_quantizer_loss",
    "check_ema_update",
    "check_residual_block",
    "check_slerp",
    "check_causal_mask",
]


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
        # float32 searches may round a near-tie either way: the expanded form and cdist err by at most
        # 2e-6 of (1 + best) on these cases, so 1e-5 is 5x that, and 12x below the smallest real gap
        # between a nearest and a second-nearest code here (1.2e-4)
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
    except Exception as err:
        return _report(False, f"it raised {type(err).__name__}: {err}")
    if not isinstance(out, Tensor):
        return _report(False, f"it returned a {type(out).__name__}; return a tensor")
    if out.shape != z_q.shape:
        return _report(False, f"it returned shape {tuple(out.shape)}; the output has z_q's shape {tuple(z_q.shape)}")
    grad_z_e, grad_z_q = _gradients((out * upstream.to(out.dtype)).sum(), z_e, z_q) if out.requires_grad else (None, None)
    if grad_z_q is not None and grad_z_q.abs().sum() > 0:  # first: this mistake also disturbs z_e's gradient
        return _report(False, "the gradient also reaches z_q, so the decoder would move the codes: z_q may only appear inside .detach()")
    # z_e + (z_q - z_e) rounds in float32: two roundings of numbers below ~5, so 1e-5 is ~20x that error
    if not torch.allclose(out.detach().double(), z_q.detach().double(), rtol=0, atol=1e-5):
        close_to_ze = torch.allclose(out.detach().double(), z_e.detach().double(), atol=1e-5)
        return _report(False, "its value is z_e: the decoder must receive the codes z_q" if close_to_ze else "its value is not z_q")
    if grad_z_e is None or not grad_z_e.abs().sum() > 0:
        return _report(False, "z_e receives no gradient: the encoder would never learn (notebook 2's broken model)")
    if not torch.allclose(grad_z_e.double(), upstream.double(), rtol=0, atol=1e-6):  # an identity backward is exact up to rounding
        return _report(False, "z_e's gradient is not the incoming gradient: straight-through copies it unchanged")
    return _report(True, "value z_q, gradient to z_e unchanged, none to z_q")


def check_quantizer_loss(fn: Callable[[Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``fn(z_e, e, beta)`` -> ``||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2`` as a mean over elements:
    the codebook term moves only the codes ``e``, the commitment term (scaled by ``beta``) only ``z_e``."""
    g = torch.Generator().manual_seed(2)
    z_e = torch.randn(10, 4, generator=g, requires_grad=True)
    e = torch.randn(10, 4, generator=g, requires_grad=True)
    beta = 0.4  # not the usual 0.25, so that an answer with beta written in is caught
    try:
        loss = fn(z_e, e, beta)
    except Exception as err:
        return _report(False, f"it raised {type(err).__name__}: {err}")
    if not isinstance(loss, Tensor):
        return _report(False, f"it returned a {type(loss).__name__}; return one tensor, codebook + beta * commitment")
    to_z, to_e = _gradients(loss.sum(), z_e, e) if loss.requires_grad and loss.numel() == 1 else (None, None)
    diff = (z_e - e).detach()
    expected = float(diff.pow(2).mean()) * (1 + beta)
    unit = 2 * diff / diff.numel()  # the gradient of mean((z_e - e)^2) with respect to z_e
    # relative 1e-5 on the value and 1e-4 on gradients: float32 sums of 40 squares err by ~1e-7; every
    # mistake below is off by a factor (beta against 1, 1 + beta, N, 2)
    if loss.numel() != 1:
        return _report(False, f"it returned shape {tuple(loss.shape)}; the loss is one number (a mean)")
    value = float(loss.detach())
    if not abs(value - expected) <= 1e-5 * expected:  # written so that NaN fails
        if abs(0.25 - beta) and abs(value - expected / (1 + beta) * 1.25) <= 1e-5 * expected:
            return _report(False, "the value uses beta = 0.25 whatever beta is passed: use the argument")
        if abs(value - expected * diff.numel()) < 1e-4 * expected * diff.numel():
            return _report(False, "the value is a sum over elements; use the mean, as the reconstruction term does")
        return _report(False, f"the value is {value:.5f}, expected {expected:.5f} = (1 + beta) * mean((z_e - e)^2)")
    if to_e is None or to_z is None:
        if to_e is None and to_z is None:
            which = "neither z_e nor e gets a gradient"
        else:
            which = ("e (the codes)" if to_e is None else "z_e (the encoder)") + " gets no gradient"
        return _report(False, f"{which}: the codes need the codebook term, the encoder the commitment term")
    if torch.allclose(to_e, -beta * unit, rtol=1e-4) and torch.allclose(to_z, unit, rtol=1e-4):
        return _report(False, "beta scales the codes' side: it must scale the commitment term, whose gradient goes to z_e "
                       "(either beta is on the codebook term, or the two stop-gradients are swapped)")
    if torch.allclose(to_z, (1 + beta) * unit, rtol=1e-4) and torch.allclose(to_e, -(1 + beta) * unit, rtol=1e-4):
        return _report(False, "the stop-gradients are missing: both terms move both z_e and e")
    if torch.allclose(to_z, (1 + beta) * unit, rtol=1e-4) or torch.allclose(to_e, -(1 + beta) * unit, rtol=1e-4):
        return _report(False, "one stop-gradient is missing: the codebook term must not move z_e (sg[z_e]), the commitment term not e (sg[e])")
    if not (torch.allclose(to_e, -unit, rtol=1e-4) and torch.allclose(to_z, beta * unit, rtol=1e-4)):
        return _report(False, "the gradients are not those of codebook + beta * commitment with stop-gradients")
    return _report(True, "the value, and each term's gradient on its own side: codes by the codebook term, z_e by beta * commitment")


def _ema_reference(cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor, decay: float, eps: float):
    """Appendix A.1 with Laplace smoothing, in float64 (the definition the checker holds answers to)."""
    k = len(cluster_size)
    n_k = torch.bincount(indices, minlength=k).double()
    s_k = torch.zeros(k, z.shape[1], dtype=torch.float64).index_add_(0, indices, z.double())
    size = decay * cluster_size.double() + (1 - decay) * n_k
    total = decay * embed_sum.double() + (1 - decay) * s_k
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    return size, total, total / smoothed[:, None]


def check_ema_update(fn: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> CheckResult:
    """``fn(cluster_size (K,), embed_sum (K, D), z (N, D), indices (N,), decay, eps)`` -> the new
    ``(cluster_size, embed_sum, codebook)`` of one EMA step (appendix A.1), with ``n_k`` the number of
    rows of ``z`` assigned to code ``k`` and ``s_k`` their sum::

        N_k <- decay * N_k + (1 - decay) * n_k        m_k <- decay * m_k + (1 - decay) * s_k
        e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j

    The case has a code that has gone unused for long (``N_k`` near 0), where the smoothing matters, and
    two codes that no row is assigned to in this step."""
    g = torch.Generator().manual_seed(3)
    k, d, decay, eps = 8, 3, 0.9, 1e-3
    cluster_size = torch.rand(k, generator=g) * 5 + 0.5
    cluster_size[6] = 1e-6  # a code nobody has chosen for a long time
    embed_sum = torch.randn(k, d, generator=g) * cluster_size[:, None]
    z = torch.randn(40, d, generator=g)
    indices = torch.randint(0, 6, (40,), generator=g)  # codes 6 and 7 get nothing this step
    inputs = (cluster_size, embed_sum, z, indices)
    try:
        out = fn(*(t.clone() for t in inputs), decay, eps)
    except Exception as err:
        hint = " (bincount(indices, minlength=K) counts codes that no row chose too)" if "size of tensor" in str(err) else ""
        return _report(False, f"it raised {type(err).__name__}: {err}{hint}")
    try:
        size, total, codebook = (torch.as_tensor(t).double() for t in out)
    except Exception:
        return _report(False, "it should return three tensors: (cluster_size, embed_sum, codebook)")
    want_size, want_total, want_codebook = _ema_reference(*inputs, decay, eps)

    # float32 inputs, a handful of float32 operations each (~1e-6 relative); 1e-4 is 100x that, while
    # every mistake below moves values by a factor (0.9 against 0.1, a smoothing of the 1e-6 count);
    # atol 1e-6 only matters for the near-zero entries of the long-unused code
    def same(a: Tensor, b: Tensor) -> bool:
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6))

    swapped = _ema_reference(*inputs, 1 - decay, eps)
    if not same(size, want_size):
        if same(size, cluster_size.double()):
            return _report(False, "the cluster sizes come back unchanged: N_k moves too, decay * N_k + (1 - decay) * n_k")
        if same(size, swapped[0]):
            return _report(False, "the cluster sizes weight the new counts by decay: the old value keeps decay, the batch gets 1 - decay")
        return _report(False, "the cluster sizes N_k are wrong: decay * N_k + (1 - decay) * n_k, n_k counted with bincount(indices, minlength=K)")
    if not same(total, want_total):
        means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, indices, z.double())
        means = means / torch.bincount(indices, minlength=k).clamp_min(1).double()[:, None]
        if same(total, decay * embed_sum.double() + (1 - decay) * means):
            return _report(False, "embed_sum averages the assigned vectors: it accumulates their sum s_k (the division comes at the end)")
        return _report(False, "embed_sum m_k is wrong: decay * m_k + (1 - decay) * s_k, s_k the sum of the rows assigned to k")
    if not same(codebook, want_codebook):
        if same(codebook, want_total / want_size[:, None]):
            return _report(False, "the codes of rarely used entries are wrong: divide by the Laplace-smoothed N~_k, not N_k")
        if same(codebook[:6], want_codebook[:6]):
            return _report(False, "codes 6 and 7, which no row chose this step, are wrong: e_k = m_k / N~_k holds for every code")
        return _report(False, "the codebook is wrong: e_k = m_k / N~_k with the smoothed counts")
    return _report(True, "cluster sizes, sums and codes of one EMA step, the long-unused code included")


def check_residual_block(block_class: Callable[[int, int], nn.Module]) -> CheckResult:
    """``block_class(channels, hidden_channels)`` -> a module computing ``x + conv1x1(relu(conv3x3(relu(x))))``
    on ``(B, channels, H, W)`` (section 4.1 of the paper): the same shape out, the input ``x`` itself on
    the skip path, and a residual branch of a 3x3 and a 1x1 convolution (with or without biases)."""
    c, hidden = 6, 4
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, c, 5, 7, generator=g)
    try:
        block = block_class(c, hidden)
        out = block(x_in := x.clone())
    except Exception as err:
        return _report(False, f"it raised {type(err).__name__}: {err} (block_class({c}, {hidden}) on x {tuple(x.shape)})")
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return _report(False, f"on x {tuple(x.shape)} it returned {got}; a residual block keeps the shape (padding=1 on the 3x3)")
    if not torch.equal(x_in, x):
        return _report(False, "the block changed its input: an in-place ReLU (inplace=True or relu_) overwrote x, "
                       "so the skip path adds relu(x) instead of x")
    sizes = sorted(p.numel() for p in block.parameters())
    want = sorted([hidden * c * 9, c * hidden])
    if sizes not in (want, sorted(want + [hidden, c])):
        return _report(False, f"its parameters have sizes {sizes}; a 3x3 conv {c}->{hidden} and a 1x1 conv {hidden}->{c} "
                       f"have {want} (plus biases {hidden} and {c} if you keep them)")
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()  # the residual branch is now exactly 0: what is left is the skip path alone
        skip = block(x.clone())
    if torch.equal(skip, x):
        return _report(True, "x + branch(x), the input untouched, with the 3x3 and 1x1 convolutions of the paper")
    if torch.equal(skip, torch.relu(x)):
        return _report(False, "with the branch at zero it returns relu(x), not x: the ReLU is applied to the sum or to the skip path")
    if not skip.abs().any():
        return _report(False, "with the branch at zero it returns 0: the skip connection (x + ...) is missing")
    return _report(False, "with the branch at zero it does not return x: the skip path must carry x unchanged")


def _slerp_reference(a: Tensor, b: Tensor, t: float) -> Tensor:
    a, b = a.double(), b.double()
    cos = (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1, keepdim=True)
    omega = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    slerp = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(near, (1 - t) * a + t * b, slerp)


def check_slerp(fn: Callable[[Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``fn(a, b, t)``: rows ``a``, ``b`` ``(N, D)`` and ``t`` in [0, 1] -> ``(N, D)`` spherical interpolation,
    row by row: with ``omega`` the angle between ``a`` and ``b``,

        slerp(a, b, t) = sin((1 - t) omega) / sin(omega) * a + sin(t omega) / sin(omega) * b

    and the straight line ``(1 - t) a + t b`` where ``a`` and ``b`` are (nearly) parallel, ``sin(omega)``
    about 0. Between two unit vectors it stays on the unit sphere, where a straight line cuts inside it."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g) * 2
    a[7], b[7] = torch.tensor([1.0, 0, 0, 0]), torch.tensor([3.0, 0, 0, 0])  # parallel: cos exactly 1, sin(omega) = 0
    for t in (0.0, 0.3, 0.5, 1.0):
        try:
            out = fn(a.clone(), b.clone(), t)
        except Exception as err:
            return _report(False, f"it raised {type(err).__name__}: {err} (t = {t})")
        if not isinstance(out, Tensor) or out.shape != a.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            return _report(False, f"for a, b of shape {tuple(a.shape)} it returned {got}: one interpolated row per row")
        out = out.double()
        if not torch.isfinite(out).all():
            return _report(False, "it returned NaN or inf where a and b are parallel (sin(omega) = 0): use the straight line there")
        want = _slerp_reference(a, b, t)
        # float32 inputs through arccos and sin: ~1e-6 relative; 1e-4 is 100x that, while a straight line
        # or a per-matrix angle misses by more than 1e-2 on these rows
        if not torch.allclose(out, want, rtol=1e-4, atol=1e-4):
            if torch.allclose(out, (1 - t) * a.double() + t * b.double(), atol=1e-4):
                return _report(False, f"at t = {t} it is the straight line (1 - t) a + t b; slerp follows the arc")
            if t in (0.0, 1.0):
                return _report(False, f"at t = {t} it should return {'a' if t == 0 else 'b'} exactly")
            wrong = int((out - want).abs().amax(-1).argmax())
            return _report(False, f"at t = {t}, row {wrong} is off; omega is the angle of each row pair, torch.arccos of the "
                           "cosine of the normalised rows (clamped to [-1, 1])")
    return _report(True, "the arc between each pair of rows, the ends exact and parallel rows handled")


def check_causal_mask(fn: Callable[[int, bool], Tensor]) -> CheckResult:
    """``fn(k, include_center)`` -> the ``(k, k)`` 0/1 mask of a PixelCNN's masked convolution: 1 on every
    row above the centre, and on the centre row left of the centre; the centre itself is 1 only with
    ``include_center`` (mask B, later layers) and 0 without (mask A, the first layer). Nothing below the
    centre row, nothing right of the centre: the output at a position sees only positions before it."""
    for k in (3, 5, 7):
        c = k // 2
        for include_center in (False, True):
            want = torch.zeros(k, k)
            want[:c] = 1
            want[c, : c + int(include_center)] = 1
            try:
                mask = fn(k, include_center)
            except Exception as err:
                return _report(False, f"it raised {type(err).__name__}: {err} (k = {k}, include_center = {include_center})")
            if not isinstance(mask, Tensor) or mask.shape != (k, k):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                return _report(False, f"for k = {k} it returned {got}, not a ({k}, {k}) tensor")
            mask = mask.double()
            if torch.equal(mask, want.double()):
                continue
            name = "mask B (include_center=True)" if include_center else "mask A (include_center=False)"
            if mask[c + 1 :].any():
                return _report(False, f"for k = {k} it keeps weights below the centre row: those positions come later in raster order")
            if mask[c, c + 1 :].any():
                return _report(False, f"for k = {k} it keeps weights right of the centre on its row: those come later")
            if mask[c, c] != want[c, c]:
                return _report(False, f"the centre is wrong in {name}: the first layer must not see the code it predicts, later layers may")
            return _report(False, f"for k = {k}, {name} is\n{mask.int()}\nbut should be\n{want.int()}")
    return _report(True, "masks A and B for k = 3, 5 and 7")
