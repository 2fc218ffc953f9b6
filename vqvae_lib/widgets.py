"""ipywidgets for the notebooks: scrub through an interpolation with a slider or a Play button.

The frames are decoded once (one batched model call) and encoded to PNG once; moving the slider
only swaps which cached PNG the ``Image`` widget shows, so it stays responsive on any machine.

Displayed, each widget also carries a kernel-free copy of what it shows (a
:class:`~vqvae_lib.frame_player.FramePlayer` as ``text/html``): a live notebook shows the widget, while a
static page (the website, where no kernel runs) falls back to the copy, whose slider and Play button
still work.
"""

from __future__ import annotations

import io

from PIL import Image
from torch import Tensor

from .frame_player import FramePlayer, bundle_with_copy
from .interpolation import frames_to_uint8

__all__ = ["frames_to_png", "InterpolationScrubber", "InterpolationExplorer"]


def frames_to_png(frames: Tensor, scale: int = 4) -> list[bytes]:
    """``(T, C, H, W)`` in [0, 1] -> a PNG (as bytes) per frame, enlarged ``scale`` times."""
    pngs = []
    for arr in frames_to_uint8(frames, scale):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs


class InterpolationScrubber:
    """A slider, a Play button and an image showing frame ``t`` of an interpolation.

    ``scrubber.widget`` is the box to display; ``scrubber.set_frames(frames)`` swaps in a new path
    (e.g. after choosing other images) without rebuilding the controls.
    """

    def __init__(self, frames: Tensor, scale: int = 4, interval_ms: int = 120, description: str = "frame") -> None:
        import ipywidgets as widgets

        self._widgets = widgets
        self.scale = scale
        self.image = widgets.Image(format="png")
        self.slider = widgets.IntSlider(value=0, min=0, max=1, step=1, description=description, continuous_update=True)
        self.play = widgets.Play(value=0, min=0, max=1, step=1, interval=interval_ms, description="Play")
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.label = widgets.Label()
        self.slider.observe(self._show, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider, self.label]), self.image])
        self.set_frames(frames)

    def set_frames(self, frames: Tensor) -> None:
        self.pngs = frames_to_png(frames, self.scale)
        # a fixed pixel size: unset, JupyterLab stretches the image to the output's full width
        self.image.width, self.image.height = str(frames.shape[-1] * self.scale), str(frames.shape[-2] * self.scale)
        last = len(self.pngs) - 1
        self.slider.max = self.play.max = last
        self.slider.value = min(self.slider.value, last)
        self._show()

    def _show(self, change: dict | None = None) -> None:
        t = self.slider.value
        self.image.value = self.pngs[t]
        self.label.value = _caption(t, len(self.pngs))

    def player(self) -> FramePlayer:
        """The frames as a kernel-free :class:`FramePlayer` (what a static page shows)."""
        return FramePlayer(self.pngs, _captions(len(self.pngs)), interval_ms=self.play.interval)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return bundle_with_copy(self.widget, self.player()._repr_html_(), **kwargs)


def _caption(i: int, n: int) -> str:
    """The line under frame ``i`` of ``n``: its index and where it lies on the path, ``t = i / (n - 1)``."""
    return f"frame {i} of {n - 1}  (t = {i / max(1, n - 1):.2f})"


def _captions(n: int) -> list[str]:
    return [_caption(i, n) for i in range(n)]


class InterpolationExplorer:
    """Choose a model, two images and the interpolation space; scrub the path with the slider.

    ``sources`` maps a name to ``(model, dataset)``. Each change of the controls decodes the whole
    path once (one batched call) and hands the frames to an :class:`InterpolationScrubber`; moving
    the slider never runs the model.
    """

    def __init__(self, sources: dict, steps: int = 16, scale: int | None = None) -> None:
        import ipywidgets as widgets

        from .interpolation import interpolate_latents

        if not sources:
            raise ValueError("no models to explore: pass at least one name -> (model, images) pair")
        self._interpolate = interpolate_latents
        self.sources = sources
        self.steps = steps
        first = next(iter(sources))
        n = len(sources[first][1])
        self.model_choice = widgets.Dropdown(options=list(sources), value=first, description="model")
        self.index_a = widgets.BoundedIntText(value=0, min=0, max=n - 1, description="image A")
        self.index_b = widgets.BoundedIntText(value=1, min=0, max=n - 1, description="image B")
        self.space = widgets.ToggleButtons(options=["continuous", "quantized"], value="continuous", description="space")
        self.scale = scale
        self.scrubber = InterpolationScrubber(self._frames(), scale=self._scale())
        for control in (self.model_choice, self.index_a, self.index_b, self.space):
            control.observe(self._update, names="value")
        self.widget = widgets.VBox(
            [widgets.HBox([self.model_choice, self.space]), widgets.HBox([self.index_a, self.index_b]), self.scrubber.widget]
        )

    def _scale(self) -> int:
        if self.scale:
            return self.scale
        _, dataset = self.sources[self.model_choice.value]
        return max(1, 160 // dataset[0][0].shape[-1])

    def _frames(self, space: str | None = None) -> Tensor:
        model, dataset = self.sources[self.model_choice.value]
        x_a, x_b = dataset[self.index_a.value][0], dataset[self.index_b.value][0]
        return self._interpolate(model, x_a, x_b, self.steps, space or self.space.value)

    def player(self) -> FramePlayer:
        """The current model and images as a kernel-free :class:`FramePlayer`, both spaces as tracks
        (what a static page shows): one more batched decode, for the space not on screen."""
        others = [space for space in self.space.options if space != self.space.value]  # the space on screen first
        tracks = {self.space.value: self.scrubber.pngs, **{s: frames_to_png(self._frames(s), self.scrubber.scale) for s in others}}
        title = f"{self.model_choice.value}: test images {self.index_a.value} and {self.index_b.value}"
        return FramePlayer(tracks, _captions(len(self.scrubber.pngs)), interval_ms=self.scrubber.play.interval, title=title)

    def _update(self, change: dict | None = None) -> None:
        _, dataset = self.sources[self.model_choice.value]
        self.index_a.max = self.index_b.max = len(dataset) - 1
        self.scrubber.scale = self._scale()
        self.scrubber.set_frames(self._frames())

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return bundle_with_copy(self.widget, self.player()._repr_html_(), **kwargs)
