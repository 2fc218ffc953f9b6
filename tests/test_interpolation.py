"""Latent interpolation, GIFs and the slider widget."""

from __future__ import annotations

import imageio.v3 as iio
import pytest
import torch

from vqvae_lib import VQVAE, interpolate_latents, save_gif, seed_everything
from vqvae_lib.widgets import InterpolationScrubber, frames_to_png


@pytest.fixture
def model():
    seed_everything(0)
    return VQVAE(in_channels=1, hidden_channels=16, residual_hidden_channels=8, embedding_dim=4, num_embeddings=16).eval()


def test_interpolation_ends_at_the_two_reconstructions(model):
    x_a, x_b = torch.rand(1, 28, 28), torch.rand(1, 28, 28)
    ends = model.reconstruct(torch.stack([x_a, x_b]))  # encoded as one pair, as interpolate_latents does
    for space in ("continuous", "quantized"):
        frames = interpolate_latents(model, x_a, x_b, steps=9, space=space)
        assert frames.shape == (9, 1, 28, 28) and 0 <= frames.min() and frames.max() <= 1
        # z(0) and z(1) are the two encoder outputs themselves, quantized and decoded in a batch of 9
        # instead of 2: the codes are the same unless a distance is within float32 rounding of a tie,
        # and the decoder's other summation order moves pixels in [0, 1] by a few float32 roundings
        # (1.2e-7 each) per layer; 1e-5 is far above that and far below any visible difference
        torch.testing.assert_close(frames[0], ends[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(frames[-1], ends[1], atol=1e-5, rtol=0)


def _decoder_inputs(model, fn):
    seen = []
    handle = model.decoder.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    fn()
    handle.remove()
    return seen[0]


def _is_codebook_row(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Which positions hold a code vector. The decoder sees the straight-through ``z + (e - z)``, not
    ``e`` itself: two float32 roundings of numbers up to ``|z| + |e|``, so 4 ulps of that is the bound."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
    tolerance = 4 * torch.finfo(torch.float32).eps * float(flat.abs().max() + codebook.detach().abs().max())
    return (flat[:, None] - codebook[None]).abs().amax(-1).min(dim=1).values <= tolerance


def test_continuous_path_stays_on_the_codebook_and_quantized_path_does_not(model):
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn_like(model.quantizer.codebook))
        model.encoder.net[-1].weight.mul_(20)  # spread z_e so that different images pick different codes
    x_a, x_b = torch.zeros(1, 28, 28), torch.ones(1, 28, 28)
    assert not torch.equal(model.encode_indices(x_a[None]), model.encode_indices(x_b[None]))
    book = model.quantizer.codebook
    cont = _decoder_inputs(model, lambda: interpolate_latents(model, x_a, x_b, 7, "continuous"))
    assert cont.shape[0] == 7 and _is_codebook_row(cont, book).all()
    quant = _decoder_inputs(model, lambda: interpolate_latents(model, x_a, x_b, 7, "quantized"))
    assert _is_codebook_row(quant[[0, -1]], book).all()
    assert not _is_codebook_row(quant[3:4], book).all()  # the blends lie between codes
    with pytest.raises(ValueError, match="space"):
        interpolate_latents(model, x_a, x_b, 7, "pixel")


def test_save_gif_writes_a_looping_animation(tmp_path):
    frames = torch.linspace(0, 1, 6).view(6, 1, 1, 1).expand(6, 1, 28, 28)  # distinct frames (GIF merges repeats)
    path = save_gif(frames, tmp_path / "walk.gif", fps=10, scale=3)
    gif = iio.imread(path, index=None)
    assert gif.shape[0] == 6 + 4  # forth and back without repeating the ends
    assert gif.shape[1:3] == (84, 84)
    assert gif[0].mean() < 5 and gif[5].mean() > 250 and abs(int(gif[1].mean()) - int(gif[9].mean())) <= 2


def test_scrubber_swaps_cached_frames():
    frames = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 1, 28, 28)
    scrubber = InterpolationScrubber(frames, scale=2)
    first = scrubber.image.value
    assert first == scrubber.pngs[0]
    scrubber.slider.value = 4
    assert scrubber.image.value == scrubber.pngs[4] != first
    assert scrubber.play.max == scrubber.slider.max == 4
    scrubber.set_frames(frames[:3])  # a new path keeps the controls and clamps the position
    assert scrubber.slider.max == 2 and scrubber.image.value == scrubber.pngs[2]


def _player_data(html: str) -> dict:
    """The frames and captions a FramePlayer's HTML carries (what its script reads)."""
    import json
    import re

    match = re.search(r'<script type="application/json" class="vqvae-player-data">(.*?)</script>', html, re.S)
    assert match, "no frame data in the HTML"
    return json.loads(match.group(1))


def test_the_widgets_carry_a_kernel_free_copy_of_their_frames():
    # a static page shows the text/html: it must hold every frame the widget would show (as the same
    # PNGs), both interpolation spaces for the explorer, and no reference to anything outside the page
    import base64
    import re

    from vqvae_lib.widgets import InterpolationExplorer

    frames = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 1, 28, 28)
    scrubber = InterpolationScrubber(frames, scale=2)
    bundle = scrubber._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a live notebook still gets the widget
    data = _player_data(bundle["text/html"])
    assert [base64.b64decode(f) for f in data["tracks"]["frames"]] == scrubber.pngs
    assert data["captions"] == [f"frame {i} of 4  (t = {i / 4:.2f})" for i in range(5)]

    from vqvae_lib import load_checkpoint, pretrained_dir

    model = load_checkpoint(pretrained_dir() / "mnist.pt").eval()  # a trained model: the two paths differ
    seed_everything(0)
    images = [(torch.rand(1, 28, 28), 0) for _ in range(3)]
    explorer = InterpolationExplorer({"tiny": (model, images)}, steps=6, scale=2)
    explorer.index_b.value = 2
    data = _player_data(explorer._repr_mimebundle_()["text/html"])
    assert list(data["tracks"]) == ["continuous", "quantized"] and len(data["captions"]) == 6
    for space, pngs in data["tracks"].items():
        expected = interpolate_latents(model, images[0][0], images[2][0], 6, space)
        assert [base64.b64decode(f) for f in pngs] == frames_to_png(expected, 2), space
    assert data["tracks"]["continuous"] != data["tracks"]["quantized"]
    html = explorer._repr_mimebundle_()["text/html"]
    assert "test images 0 and 2" in html
    assert not re.search(r'(src|href)="(?!data:)', html), "the copy must fetch nothing: every src is a data URI"


def test_a_player_refuses_what_is_not_a_list_of_pngs():
    # one PNG passed where a list of them belongs would otherwise become one "frame" per byte
    from vqvae_lib.frame_player import FramePlayer

    (png,) = frames_to_png(torch.zeros(1, 1, 4, 4), 1)
    for wrong in (png, {"a": png}, [b"not a png"], {"a": [png], "b": [png, png]}, []):
        with pytest.raises((TypeError, ValueError)):
            FramePlayer(wrong)
    with pytest.raises(ValueError, match="2 captions for 1 frames"):
        FramePlayer([png], captions=["a", "b"])
    assert len(FramePlayer({"a": [png, png], "b": [png, png]})) == 2


def test_a_widget_without_its_own_mimebundle_still_gets_its_view_and_copy():
    # ipywidgets 7 (Colab's) has no Widget._repr_mimebundle_: the view must be written out in the form
    # ipywidgets 8 gives, or nothing but a repr would be displayed there
    from vqvae_lib.frame_player import bundle_with_copy

    class OldWidget:  # what ipywidgets 7 offers: a model id, no _repr_mimebundle_
        model_id = "abc123"

    bundle = bundle_with_copy(OldWidget(), "<div>copy</div>")
    assert bundle["application/vnd.jupyter.widget-view+json"] == {"version_major": 2, "version_minor": 0, "model_id": "abc123"}
    assert bundle["text/html"] == "<div>copy</div>" and "text/plain" in bundle
