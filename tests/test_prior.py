"""The Gated PixelCNN prior: causal masking without a blind spot, conditioning, learning, sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqvae_lib import find_checkpoint, load_checkpoint
from vqvae_lib.prior import (
    CausalConv2d,
    GatedPixelCNN,
    PriorConfig,
    evaluate_prior,
    extract_codes,
    train_prior,
)
from vqvae_lib.sampling import sample, sample_indices


def _tiny_prior(num_classes=None, h=5, w=6, k=11, layers=None) -> GatedPixelCNN:
    torch.manual_seed(0)
    prior = GatedPixelCNN(k, (h, w), channels=8, num_layers=layers or h + w, num_classes=num_classes).double()
    return prior.eval()


@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
@pytest.mark.parametrize("exclude_center", [False, True])
def test_causal_conv_equals_a_masked_full_convolution(direction, exclude_center):
    torch.manual_seed(0)
    conv = CausalConv2d(3, 4, 5, direction, exclude_center).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.double)
    # the textbook version: a full kernel with the future zeroed
    full_shape = (5, 5) if direction == "vertical" else (1, 5)
    weight = torch.zeros(4, 3, *full_shape, dtype=torch.double)
    kh, kw = conv.weight.shape[-2:]
    weight[..., :kh, :kw] = conv.weight
    padding = (2, 2) if direction == "vertical" else (0, 2)
    expected = F.conv2d(x, weight, conv.bias, padding=padding)
    torch.testing.assert_close(conv(x), expected)
    centre = weight[..., full_shape[0] // 2, 2]
    assert bool(centre.abs().sum() == 0) == exclude_center


@pytest.mark.parametrize("num_classes", [None, 4])
def test_no_logit_sees_its_own_or_a_later_position_and_there_is_no_blind_spot(num_classes):
    h, w, k = 5, 6, 11
    prior = _tiny_prior(num_classes, h, w, k)
    torch.manual_seed(1)
    grid = torch.randint(0, k, (1, h, w))
    labels = torch.tensor([2]) if num_classes else None
    base = prior(grid, labels)
    raster = torch.arange(h * w).view(h, w)
    for i in range(h):
        for j in range(w):
            changed = grid.clone()
            changed[0, i, j] = (changed[0, i, j] + 1) % k
            diff = (prior(changed, labels) - base).abs().amax(dim=1)[0]  # (h, w)
            at_or_before = raster <= raster[i, j]
            assert diff[at_or_before].max() == 0, f"a logit at or before {(i, j)} saw position {(i, j)}"
            # every later position sees (i, j): the receptive field covers the whole past
            assert (diff[~at_or_before] > 0).all(), f"blind spot: some later position ignores {(i, j)}"


def test_a_shallow_stack_leaves_far_positions_unseen_which_the_default_depth_covers():
    # with kernel 3 the field grows by one row/column per layer: 2 layers cannot see across 6 columns
    shallow = _tiny_prior(h=5, w=6, layers=2)
    grid = torch.zeros(1, 5, 6, dtype=torch.long)
    changed = grid.clone()
    changed[0, 0, 5] = 1  # top-right corner
    assert (shallow(changed) - shallow(grid))[0, :, 4, 0].abs().max() == 0
    deep = _tiny_prior(h=5, w=6)
    assert (deep(changed) - deep(grid))[0, :, 4, 0].abs().max() > 0


@pytest.mark.parametrize("name, k, grid", [("mnist", 128, (7, 7)), ("cifar10", 512, (8, 8))])
def test_notebook_priors_see_every_earlier_code_of_their_grid(name, k, grid):
    # notebook 9's presets are shallower than h + w layers; the vertical stack must still reach the
    # top-right corner from the bottom-left, or part of the past would be silently ignored
    prior = PriorConfig.preset(name).build_prior(k, grid, num_classes=10).double().eval()
    h, w = grid
    raster = torch.arange(h * w).view(h, w)
    labels = torch.tensor([3])
    zeros = torch.zeros(1, h, w, dtype=torch.long)
    base = prior(zeros, labels)
    for i in range(h):
        for j in range(w):
            changed = zeros.clone()
            changed[0, i, j] = 1
            diff = (prior(changed, labels) - base).abs().amax(dim=1)[0]
            later = raster > raster[i, j]
            assert (diff[later] > 0).all(), f"{name}: a later position ignores the code at {(i, j)}"
            assert diff[~later].max() == 0


def test_prior_config_presets_overrides_and_fast_mode(monkeypatch):
    cfg = PriorConfig.preset("cifar10", channels=16)
    prior = cfg.build_prior(512, (8, 8), num_classes=10)
    assert prior.config["channels"] == 16 and prior.config["num_layers"] == cfg.num_layers
    assert prior(torch.zeros(2, 8, 8, dtype=torch.long), torch.tensor([0, 1])).shape == (2, 512, 8, 8)
    torch.randn(7)  # whatever ran before, the weights come from the config's seed
    again = cfg.build_prior(512, (8, 8), num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(prior.state_dict().values(), again.state_dict().values()))
    monkeypatch.setenv("VQVAE_FAST", "1")
    assert cfg.run_steps == cfg.steps_fast < cfg.steps
    monkeypatch.setenv("VQVAE_FAST", "0")
    assert cfg.run_steps == cfg.steps
    with pytest.raises(ValueError, match="no prior preset"):
        PriorConfig.preset("imagenet")


def test_labels_condition_every_position_and_unconditional_first_logits_are_constant():
    prior = _tiny_prior(num_classes=3)
    grid = torch.randint(0, 11, (2, 5, 6))
    a = prior(grid, torch.tensor([0, 0]))
    b = prior(grid, torch.tensor([1, 1]))
    assert ((a - b).abs().amax(dim=1) > 0).all()
    plain = _tiny_prior()
    first = plain(torch.randint(0, 11, (4, 5, 6)))[:, :, 0, 0]
    torch.testing.assert_close(first, first[:1].expand_as(first))  # (0, 0) has no past


def test_wrong_inputs_give_clear_errors():
    conditional, plain = _tiny_prior(num_classes=3), _tiny_prior()
    grid = torch.zeros(1, 5, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(grid)
    with pytest.raises(ValueError, match="unconditional"):
        plain(grid, torch.tensor([0]))
    with pytest.raises(ValueError, match="long indices"):
        plain(grid.float())
    with pytest.raises(ValueError, match="temperature"):
        sample_indices(plain, 2, temperature=0)
    with pytest.raises(ValueError, match="0 .. 2"):
        sample_indices(conditional, 2, label=3)
    with pytest.raises(ValueError, match="pass label"):
        sample_indices(conditional, 2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CausalConv2d(1, 1, 4, "vertical")


@pytest.fixture(scope="module")
def mnist_codes(mnist_small):
    vqvae = load_checkpoint(find_checkpoint("mnist", prefer="pretrained"))
    train_set, test_set = mnist_small
    return vqvae, extract_codes(vqvae, train_set, progress=False), extract_codes(vqvae, test_set, progress=False)


def test_extracted_codes_are_the_models_nearest_codes(mnist_small, mnist_codes):
    vqvae, (codes, labels), _ = mnist_codes
    # the same first batch of 256 that extract_codes encodes: another batch size may run other
    # convolution kernels, whose last-bit differences could flip a near-tied nearest code
    x, y = mnist_small[0].images[:256].float() / 255, mnist_small[0].labels[:256]
    assert codes.shape == (2048, 7, 7) and codes.dtype == torch.long
    assert torch.equal(codes[:256], vqvae.eval().encode_indices(x))
    assert torch.equal(labels[:256], y.long())


def test_prior_learns_real_codes_below_the_uniform_log_k_and_checkpoints(mnist_codes, tmp_path):
    vqvae, (codes, labels), (test_codes, test_labels) = mnist_codes
    k = vqvae.quantizer.num_embeddings
    torch.manual_seed(0)
    prior = GatedPixelCNN(k, (7, 7), channels=32, num_layers=8, num_classes=10)
    before = evaluate_prior(prior, test_codes, test_labels)
    assert before["uniform_nats"] == pytest.approx(math.log(k))
    config = PriorConfig(steps=150, batch_size=64, lr=2e-3, warmup_steps=50, lr_schedule="cosine", device="cpu")
    result = train_prior(
        prior, codes, labels, config, eval_codes=(test_codes, test_labels), checkpoint_path=tmp_path / "prior.pt",
        extra={"vqvae": "mnist"}, progress=False,
    )  # fmt: skip
    after = result.final_eval
    # 0.639 log K after 150 steps on six kernel paths standing in for other CPUs (see test_training)
    assert after["nll_nats"] < 0.8 * math.log(k) < before["nll_nats"] * 1.2
    assert after["bits_per_code"] == pytest.approx(after["nll_nats"] / math.log(2))
    assert result.history["nll"][-1] < result.history["nll"][0]
    # the library's plot_history draws a prior's history too: the loss, its test points, log K
    from vqvae_lib.plotting import plot_history

    fig = plot_history(result.history, test={"nll": "nll_nats"}, lines={"nll": (math.log(k), "log K")}, smooth=1)
    assert fig.axes[0].get_legend_handles_labels()[1] == ["training batches", "test grids", "log K"]
    # the checkpoint rebuilds the same prior with no other arguments
    loaded = load_checkpoint(result.checkpoint_path)
    assert isinstance(loaded, GatedPixelCNN) and loaded.config == prior.config
    torch.testing.assert_close(loaded(test_codes[:4], test_labels[:4]), prior.eval()(test_codes[:4], test_labels[:4]))


def test_an_interrupted_prior_run_resumes_where_it_stopped(mnist_codes, tmp_path):
    # train_prior runs the VQ-VAE's loop, resume included: stopped at step 12 and resumed, it ends
    # bitwise where an uninterrupted run ends (same process, same kernels, same batches)
    _, (codes, labels), _ = mnist_codes
    config = PriorConfig(steps=30, batch_size=64, warmup_steps=5, seed=3, device="cpu")

    def fresh() -> GatedPixelCNN:
        torch.manual_seed(0)
        return GatedPixelCNN(128, (7, 7), channels=8, num_layers=3, num_classes=10)

    straight = fresh()
    train_prior(straight, codes, labels, config, progress=False)

    def stop_at_12(step, logs):
        if step == 12:
            raise KeyboardInterrupt

    path = tmp_path / "prior.pt"
    assert train_prior(fresh(), codes, labels, config, checkpoint_path=path, callback=stop_at_12, progress=False).interrupted
    torch.manual_seed(99)  # the checkpoint restores the random state
    resumed = fresh()
    result = train_prior(resumed, codes, labels, config, checkpoint_path=path, resume=True, progress=False)
    assert result.steps == 30 and len(result.history["nll"]) == 30
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_sampling_is_reproducible_from_a_seed_and_decodes_to_images(mnist_codes):
    vqvae, _, _ = mnist_codes
    k = vqvae.quantizer.num_embeddings
    torch.manual_seed(0)
    prior = GatedPixelCNN(k, (7, 7), channels=16, num_layers=8, num_classes=10)
    rng = torch.get_rng_state()
    a = sample_indices(prior, 3, label=torch.tensor([1, 2, 3]), seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded draw leaves the global RNG alone
    assert torch.equal(a, sample_indices(prior, 3, label=torch.tensor([1, 2, 3]), seed=5))
    assert not torch.equal(a, sample_indices(prior, 3, label=torch.tensor([1, 2, 3]), seed=6))
    assert a.shape == (3, 7, 7) and a.dtype == torch.long and a.min() >= 0 and a.max() < k
    # a near-zero temperature is the argmax: every seed gives the same grid
    cold = [sample_indices(prior, 2, label=4, temperature=1e-6, seed=s) for s in (0, 1)]
    assert torch.equal(cold[0], cold[1])
    images = sample(prior, vqvae, 3, label=7, seed=0)
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, sample(prior, vqvae, 3, label=7, seed=0))
    wrong = GatedPixelCNN(k + 1, (7, 7), channels=8, num_layers=2, num_classes=10)
    with pytest.raises(ValueError, match="codes"):
        sample(wrong, vqvae, 1, label=0)
