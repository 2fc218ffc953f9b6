"""ipywidgets for the notebooks: scrub through an interpolation with a slider or a Play button.

The frames are decoded once (one batched model call) and encoded to PNG once; moving the slider
only swaps which cached PNG the ``Image`` widget shows, so it stays responsive on any machine.
"""

from __future__ import annotations

import io

from PIL import Image
from torch import Tensor

from .interpolation import frames_to_uint8

__all__ = ["frames_to_png", "InterpolationScrubber"]


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

    def __init__(self, frames: Tensor, scale: int = 4, interval_ms: int = 120, description: str = "t") -> None:
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
        last = len(self.pngs) - 1
        self.slider.max = self.play.max = last
        self.slider.value = min(self.slider.value, last)
        self._show()

    def _show(self, change: dict | None = None) -> None:
        t = self.slider.value
        self.image.value = self.pngs[t]
        self.label.value = f"frame {t} of {len(self.pngs) - 1}  (alpha = {t / max(1, len(self.pngs) - 1):.2f})"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
