"""The vector quantizer: exact nearest codes, straight-through gradients, losses, EMA, codebook health."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqvae_lib import VQVAE, VectorQuantizer, VectorQuantizerEMA, squared_distances


def _brute_force(flat: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(flat.double(), codebook.double()) ** 2
    return d.argmin(dim=1), d


def _float32_distance_error(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Per row, a bound on float32's error in ``||z||^2 - 2 z.e + ||e||^2`` (``u = eps / 2``, the unit
    roundoff): each D-term sum of products is off by at most D u of its magnitudes, so the three
    terms by D u (||z||^2 + ||e||^2 + 2 |z||e|) <= 2 D u (||z||^2 + ||e||^2); the two additions of
    partial sums up to 2 (||z||^2 + ||e||^2) add 4 u of that. In all (2 D + 4) u <= (D + 2) eps; we
    allow (2 D + 2) eps, about twice the bound, for kernels that accumulate in blocks."""
    d, eps = flat.shape[1], torch.finfo(torch.float32).eps
    return (2 * d + 2) * eps * (flat.double().pow(2).sum(1) + codebook.double().pow(2).sum(1).max())


# 40 x 8 x 8 = 2,560 vectors at K = 512 cross nearest_code's CPU blocks of 1,024 rows (the last one partial)
@pytest.mark.parametrize("b,d,h,w,k", [(2, 4, 3, 5, 7), (8, 64, 8, 8, 512), (1, 1, 1, 1, 3), (3, 16, 7, 7, 128), (40, 64, 8, 8, 512)])
@pytest.mark.parametrize("cls", [VectorQuantizer, VectorQuantizerEMA])
def test_nearest_code_is_exact_against_brute_force(cls, b, d, h, w, k):
    torch.manual_seed(b * 1000 + d + k)
    q = cls(k, d).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.randn(k, d))
    z_e = torch.randn(b, d, h, w)
    out = q(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    ref_idx, dist = _brute_force(flat, q.codebook)
    chosen = dist.gather(1, out.indices.reshape(-1, 1)).squeeze(1)
    best = dist.min(dim=1).values
    # the chosen code is a nearest one: float32 can prefer another only when the two distances lie
    # within the sum of their rounding errors ...
    bound = 2 * _float32_distance_error(flat, q.codebook)
    assert (chosen - best <= bound).all()
    # ... and where the best code is ahead by more than that, the index is the brute-force one
    top2 = dist.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > bound
    assert clear.float().mean() > 0.9  # random Gaussian codes: near-ties are rare
    assert torch.equal(out.indices.reshape(-1)[clear], ref_idx[clear])
    assert out.indices.shape == (b, h, w) and out.indices.dtype == torch.long
    assert out.z_q.shape == z_e.shape
    torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1).reshape(-1, d), q.codebook[out.indices.reshape(-1)])


def test_squared_distances_match_cdist():
    torch.manual_seed(0)
    flat, codebook = torch.randn(100, 8), torch.randn(30, 8)
    exact = torch.cdist(flat.double(), codebook.double()) ** 2
    error = (squared_distances(flat, codebook).double() - exact).abs()
    assert (error <= _float32_distance_error(flat, codebook)[:, None]).all()


def test_search_never_materialises_n_by_k_by_d():
    """Peak allocation of any op stays far below N*K*D floats (the naive broadcast's size)."""
    n, k, d = 4096, 512, 64
    q = VectorQuantizer(k, d)
    z_e = torch.randn(4, d, 32, 32, requires_grad=True)
    with torch.autograd.profiler.profile(profile_memory=True) as prof:
        q(z_e).z_q.sum().backward()
    biggest = max(e.cpu_memory_usage for e in prof.key_averages())
    nkd_bytes = n * k * d * 4
    assert biggest < nkd_bytes / 16, f"an op allocated {biggest / 2**20:.0f} MiB"

    # the naive implementation does trip the same measurement, so the check can fail
    with torch.autograd.profiler.profile(profile_memory=True) as prof:
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, d)
        ((flat[:, None, :] - q.codebook.detach()[None]) ** 2).sum(-1).argmin(1)
    assert max(e.cpu_memory_usage for e in prof.key_averages()) >= nkd_bytes


def test_straight_through_passes_gradient_unchanged():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4)
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z_e)
    z_q = out.z_q
    z_q.retain_grad()
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z_e.grad, z_q.grad)
    torch.testing.assert_close(z_e.grad, weights)
    assert q.codebook.grad is None  # the straight-through path carries nothing to the codebook


def _grads(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [0.0 if g is None else float(g.abs().sum()) for g in gs]


def test_each_loss_term_moves_only_its_parameters():
    torch.manual_seed(0)
    model = VQVAE(in_channels=1, hidden_channels=16, residual_hidden_channels=8, embedding_dim=4, num_embeddings=8)
    x = torch.rand(4, 1, 8, 8)
    losses = model.loss(x)
    enc = list(model.encoder.parameters())
    dec = list(model.decoder.parameters())
    book = [model.quantizer.codebook]
    # codebook loss: codebook only
    assert sum(_grads(losses["codebook"], enc)) == 0 and sum(_grads(losses["codebook"], dec)) == 0
    assert _grads(losses["codebook"], book)[0] > 0
    # commitment: encoder only
    assert sum(_grads(losses["commitment"], enc)) > 0
    assert sum(_grads(losses["commitment"], dec)) == 0 and _grads(losses["commitment"], book)[0] == 0
    # reconstruction: encoder (through straight-through) and decoder, never the codebook
    assert sum(_grads(losses["recon"], enc)) > 0 and sum(_grads(losses["recon"], dec)) > 0
    assert _grads(losses["recon"], book)[0] == 0


def test_beta_scales_only_the_commitment_term():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    results = {}
    for beta in (0.25, 2.0):
        torch.manual_seed(1)
        model = VQVAE(in_channels=1, hidden_channels=16, residual_hidden_channels=8, embedding_dim=4, num_embeddings=8, beta=beta)
        losses = model.loss(x)
        torch.testing.assert_close(losses["total"], losses["recon"] + losses["codebook"] + beta * losses["commitment"])
        losses["total"].backward()
        results[beta] = (
            losses,
            model.quantizer.codebook.grad.clone(),
            torch.cat([p.grad.flatten() for p in model.decoder.parameters()]),
            torch.cat([p.grad.flatten() for p in model.encoder.parameters()]),
        )
    (l1, book1, dec1, enc1), (l2, book2, dec2, enc2) = results[0.25], results[2.0]
    for key in ("recon", "codebook", "commitment"):  # the terms themselves do not depend on beta
        torch.testing.assert_close(l1[key], l2[key])
    torch.testing.assert_close(book1, book2)  # codebook gradient: independent of beta
    torch.testing.assert_close(dec1, dec2)
    assert not torch.allclose(enc1, enc2)  # the encoder's does depend on it


def test_losses_are_the_papers_terms():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 3)
    z_e = torch.randn(2, 3, 4, 4)
    out = q(z_e)
    e = q.codebook[out.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.codebook_loss, F.mse_loss(e, z_e))
    torch.testing.assert_close(out.commitment_loss, F.mse_loss(z_e, e))
    counts = torch.bincount(out.indices.flatten(), minlength=8).double()
    p = counts / counts.sum()
    p = p[p > 0]
    torch.testing.assert_close(out.perplexity.double(), torch.exp(-(p * p.log()).sum()), rtol=1e-5, atol=1e-5)


def test_ema_codebook_moves_towards_assigned_outputs_without_optimizer():
    torch.manual_seed(0)
    q = VectorQuantizerEMA(4, 2, decay=0.9).train()
    q.set_codes(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
    target = torch.tensor([1.0, 1.0])
    z_e = (target + 0.01 * torch.randn(64, 2)).T.reshape(1, 2, 8, 8)
    before = (q.codebook[0] - target).norm()
    for _ in range(30):
        q(z_e)
    after = (q.codebook[0] - target).norm()
    assert after < 0.1 * before
    assert not any(p.requires_grad for p in q.parameters())
    assert q(z_e).codebook_loss.requires_grad is False


@pytest.mark.parametrize("cls", [VectorQuantizer, VectorQuantizerEMA])
def test_set_codes_replaces_codes_and_resets_their_statistics(cls):
    torch.manual_seed(0)
    q = cls(4, 2, decay=0.5) if cls is VectorQuantizerEMA else cls(4, 2)
    q.train()(torch.randn(1, 2, 4, 4))  # one update: an EMA quantizer's counts are no longer 1
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    q.set_codes(codes)
    assert torch.equal(q.codebook, codes)
    q.set_codes(torch.tensor([[5.0, 5.0]]), rows=torch.tensor([2]))
    assert torch.equal(q.codebook[2], torch.tensor([5.0, 5.0])) and torch.equal(q.codebook[1], codes[1])
    if cls is VectorQuantizerEMA:  # as at construction: count 1, sum the code, so the next mean starts there
        assert torch.equal(q.ema_cluster_size, torch.ones(4)) and torch.equal(q.ema_embed_sum, q.codebook)
    # the lookup uses them: a point next to a code is assigned to it
    assert q.eval()(torch.tensor([9.0, -9.0]).reshape(1, 2, 1, 1)).indices.item() == 3
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        q.set_codes(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="code indices"):
        q.set_codes(torch.zeros(1, 2), rows=torch.tensor([4]))


def test_ema_stays_finite_with_unused_codes():
    torch.manual_seed(0)
    q = VectorQuantizerEMA(64, 8, decay=0.99).train()
    z_e = torch.randn(2, 8, 4, 4) * 0.01 + 5.0  # one tight cluster: most codes never chosen
    for _ in range(500):
        out = q(z_e)
    assert torch.isfinite(q.codebook).all()
    assert torch.isfinite(out.z_q).all() and torch.isfinite(out.commitment_loss)
    # the case under test: one tight cluster of 32 vectors leaves codes unused for 500 EMA updates
    # (measured: 1 code used, seeds 0-5), and usage is counted (at least one code)
    assert 0 < q.codes_used() < 64


def _clusters(n_clusters: int = 16, per: int = 64, dim: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 5
    points = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(n_clusters * per, dim, generator=g)
    return points.T.reshape(1, dim, n_clusters, per)  # (1, D, H, W)


@pytest.mark.parametrize("cls", [VectorQuantizer, VectorQuantizerEMA])
def test_dead_code_restart_revives_unused_codes(cls):
    torch.manual_seed(0)
    z_e = _clusters()
    q = cls(16, 2, dead_code_threshold=3).train()
    # every code far away on one side: one code wins everything
    q.set_codes(torch.full((16, 2), 100.0) + torch.arange(16.0)[:, None])
    first = q(z_e)
    assert torch.unique(first.indices).numel() == 1
    for _ in range(4):
        q(z_e)
    assert q.restarted_codes >= 15
    out = q(z_e)
    assert torch.unique(out.indices).numel() > 8
    # revived codes sit on the data
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.cdist(q.codebook, flat).min(dim=1).values.median() < 1.0


@pytest.mark.parametrize("method", ["kmeans", "random"])
@pytest.mark.parametrize("cls", [VectorQuantizer, VectorQuantizerEMA])
def test_data_init_gives_high_perplexity_from_the_first_step(cls, method):
    z_e = _clusters()
    torch.manual_seed(0)
    plain = cls(16, 2).train()
    plain.set_codes(torch.rand(16, 2) * 0.01 + 20)
    torch.manual_seed(0)
    initialised = cls(16, 2, data_init=method).train()
    low, high = plain(z_e).perplexity, initialised(z_e).perplexity
    assert low < 2.0
    assert high > (10.0 if method == "kmeans" else 6.0)
    assert bool(initialised.initialised)
    # the initialisation happens once: a second batch does not re-seed the codebook
    book = initialised.codebook.clone()
    initialised.eval()(z_e * 3)
    assert torch.equal(book, initialised.codebook)


def test_usage_histogram_counts_training_assignments():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2).train()
    z_e = torch.randn(2, 2, 4, 4)
    out = q(z_e)
    hist = q.usage_histogram()
    assert torch.equal(hist, torch.bincount(out.indices.flatten(), minlength=8))
    assert q.codes_used() == int((hist > 0).sum())
    q.eval()(z_e)  # evaluation does not count
    assert torch.equal(q.usage_histogram(), hist)
    q.reset_usage()
    assert q.codes_used() == 0


def test_quantizer_rejects_wrong_shapes():
    q = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match="D=4"):
        q(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="data_init"):
        VectorQuantizer(8, 4, data_init="pca")
