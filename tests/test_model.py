"""Encoder/decoder/VQVAE: shapes, the residual skip, distinct weights, the public API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqvae_lib import VQVAE, QuantizerOutput, ResidualBlock, ResidualStack, VectorQuantizerEMA


def test_residual_block_keeps_the_skip_connection():
    torch.manual_seed(0)
    block = ResidualBlock(4, 8)
    x = torch.randn(2, 4, 5, 5)  # negative values included: an in-place ReLU would zero them in x
    x_before = x.clone()
    y = block(x)
    assert torch.equal(x, x_before), "the block modified its input in place"
    torch.testing.assert_close(y, x_before + block.block(x_before))
    with torch.no_grad():
        for conv in (block.block[1], block.block[3]):
            conv.weight.zero_()
    assert torch.equal(block(x), x_before)  # with a zero residual branch the block is the identity


def test_no_inplace_relu_anywhere():
    model = VQVAE(in_channels=3)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def test_repeated_residual_layers_have_distinct_weights():
    stack = ResidualStack(8, 3, 4)
    params = [list(layer.parameters()) for layer in stack.layers]
    ptrs = {p.data_ptr() for layer in params for p in layer}
    assert len(ptrs) == sum(len(layer) for layer in params)
    assert sum(p.numel() for p in stack.parameters()) == 3 * sum(p.numel() for p in ResidualBlock(8, 4).parameters())
    with torch.no_grad():
        stack.layers[0].block[1].weight.add_(1.0)
    assert not torch.equal(stack.layers[0].block[1].weight, stack.layers[1].block[1].weight)


@pytest.mark.parametrize(
    "channels,size,downsample,latent",
    [(1, (28, 28), 4, (7, 7)), (3, (32, 32), 4, (8, 8)), (3, (64, 48), 8, (8, 6)), (1, (16, 16), 2, (8, 8))],
)
def test_shapes_through_the_model(channels, size, downsample, latent):
    torch.manual_seed(0)
    model = VQVAE(in_channels=channels, hidden_channels=32, residual_hidden_channels=8, embedding_dim=6, num_embeddings=10, downsample=downsample)
    x = torch.rand(3, channels, *size)
    z_e = model.encode(x)
    assert z_e.shape == (3, 6, *latent)
    q = model.quantize(z_e)
    assert isinstance(q, QuantizerOutput)
    x_hat, q2 = model(x)
    assert x_hat.shape == x.shape
    indices = model.encode_indices(x)
    assert indices.shape == (3, *latent) and indices.dtype == torch.long
    assert model.decode_indices(indices).shape == x.shape
    # decode_indices is decode of the looked-up codes
    torch.testing.assert_close(model.decode_indices(indices), model.decode(q2.z_q))
    assert set(model.loss(x)) >= {"recon", "codebook", "commitment", "total", "perplexity"}


def test_bad_inputs_are_refused_with_clear_errors():
    model = VQVAE(in_channels=1, hidden_channels=16, residual_hidden_channels=8, embedding_dim=4, num_embeddings=8)
    with pytest.raises(ValueError, match="not divisible"):
        model.encode(torch.rand(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.encode(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="power of two"):
        VQVAE(downsample=3)


def test_ema_option_builds_ema_quantizer_and_config_round_trips():
    model = VQVAE(in_channels=3, ema=True, data_init="kmeans", dead_code_threshold=5)
    assert isinstance(model.quantizer, VectorQuantizerEMA)
    rebuilt = VQVAE(**model.config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_eval_mode_restores_the_mode_even_after_an_error():
    from vqvae_lib import eval_mode

    model = VQVAE(in_channels=1, hidden_channels=8, residual_hidden_channels=4, embedding_dim=4, num_embeddings=8)
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not model.quantizer.training
            raise RuntimeError("interrupted")
    assert model.training and model.quantizer.training
    with eval_mode(model.eval()):
        pass
    assert not model.training  # a model in eval mode stays there


def test_encode_indices_looks_codes_up_without_changing_them():
    """Asking for one image's codes before training (a shape check) must not seed the codebook from
    that image: notebooks 5 and 6 once did, and the k-means init then saw 49 vectors for 128 codes."""
    torch.manual_seed(0)
    model = VQVAE(in_channels=1, hidden_channels=16, residual_hidden_channels=8, embedding_dim=4, num_embeddings=32,
                  ema=True, data_init="kmeans", dead_code_threshold=2)
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    for _ in range(3):  # three calls: a dead-code restart (threshold 2) would also show
        model.encode_indices(torch.rand(1, 1, 28, 28))
    assert model.training, "encode_indices must leave the model in the mode it found it in"
    after = model.quantizer.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"encode_indices changed the quantizer's {changed}"
    assert not bool(model.quantizer.initialised)
