"""A slider and a Play button over recorded frames, as one self-contained HTML output.

The ipywidgets in :mod:`vqvae_lib.widgets` and :mod:`vqvae_lib.codebook_lab` need a running kernel: on a
static page (the website, nbviewer) a widget is only a line of text. :class:`FramePlayer` is their
kernel-free twin. Its frames travel inside the output as base64 PNGs, and a few lines of JavaScript
swap them into one ``<img>`` when the slider moves or Play runs; nothing is fetched. Without JavaScript
(GitHub's renderer strips it) the output is the first frame and its caption, and the controls stay
hidden.

    player = FramePlayer({"continuous": pngs_a, "quantized": pngs_b}, captions=[f"t = {t}" for t in ...])
    player          # in a notebook: the HTML output

A player may hold several *tracks* of the same length (e.g. the two interpolation spaces); radio
buttons choose the track and the slider keeps its position.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence

__all__ = ["FramePlayer"]

# The player's behaviour, written once and inlined in every output (an output cannot rely on anything
# else being on the page). It finds its own container through document.currentScript, which both a
# static page and JupyterLab's HTML renderer (which re-creates script elements) set.
_SCRIPT = """(function () {
  var root = document.currentScript.parentElement;
  var data = JSON.parse(root.querySelector("script.vqvae-player-data").textContent);
  var image = root.querySelector("img.vqvae-player-image");
  var slider = root.querySelector("input.vqvae-player-slider");
  var caption = root.querySelector(".vqvae-player-caption");
  var play = root.querySelector("button.vqvae-player-play");
  var track = data.first, timer = null;
  function show(i) {
    image.src = "data:image/png;base64," + data.tracks[track][i];
    caption.textContent = data.captions[i];
    root.dataset.frame = String(i);
  }
  function stop() { clearInterval(timer); timer = null; play.textContent = "Play"; }
  slider.addEventListener("input", function () { show(Number(slider.value)); });
  play.addEventListener("click", function () {
    if (timer !== null) { stop(); return; }
    play.textContent = "Pause";
    timer = setInterval(function () {
      var i = (Number(slider.value) + 1) % data.captions.length;
      slider.value = String(i);
      show(i);
      if (i === data.captions.length - 1) { stop(); }
    }, data.interval);
  });
  root.querySelectorAll("input.vqvae-player-track").forEach(function (radio) {
    radio.addEventListener("change", function () { track = radio.value; show(Number(slider.value)); });
  });
  var controls = root.querySelector(".vqvae-player-controls");
  controls.hidden = false;
  controls.style.cssText = "display:flex;align-items:center;gap:0.6em;flex-wrap:wrap";
  show(0);
})();"""


class FramePlayer:
    """Frames shown one at a time under a slider and a Play button, with no kernel.

    Args:
        tracks: PNG bytes per frame, or a mapping ``name -> PNG bytes per frame`` of tracks of equal
            length (the first is shown first).
        captions: one line per frame (default ``"frame i of n"``).
        interval_ms: time per frame when playing.
        title: a line above the controls.
        width, height: the image's display size in pixels (default: the PNG's own size).
    """

    def __init__(self, tracks: Mapping[str, Sequence[bytes]] | Sequence[bytes], captions: Sequence[str] | None = None,
                 interval_ms: int = 120, title: str = "", width: int | None = None, height: int | None = None) -> None:  # fmt: skip
        tracks = dict(tracks) if isinstance(tracks, Mapping) else {"frames": list(tracks)}
        lengths = {len(frames) for frames in tracks.values()}
        if not tracks or lengths == {0}:
            raise ValueError("FramePlayer needs at least one frame")
        if len(lengths) != 1:
            raise ValueError(f"every track needs the same number of frames, got {sorted(lengths)}")
        (n,) = lengths
        captions = [f"frame {i} of {n - 1}" for i in range(n)] if captions is None else list(captions)
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for {n} frames")
        self.tracks = {name: [bytes(png) for png in frames] for name, frames in tracks.items()}
        self.captions, self.interval_ms, self.title = captions, interval_ms, title
        self.width, self.height = width, height

    def __len__(self) -> int:
        return len(self.captions)

    def __repr__(self) -> str:  # the text/plain beside the HTML: what a viewer that shows no HTML prints
        tracks = f" in {len(self.tracks)} tracks ({', '.join(self.tracks)})" if len(self.tracks) > 1 else ""
        return f"FramePlayer({self.title or 'frames'}: {len(self)} frames{tracks})"

    def _repr_html_(self) -> str:
        encoded = {name: [base64.b64encode(png).decode("ascii") for png in frames] for name, frames in self.tracks.items()}
        first = next(iter(encoded))
        data = {"tracks": encoded, "captions": self.captions, "first": first, "interval": self.interval_ms}
        # "<" escaped so no caption can close the script element early
        payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
        group = "vqvae-player-" + hashlib.sha1(payload.encode()).hexdigest()[:12]  # radio group name, stable across runs
        size = "".join(f' {k}="{v}"' for k, v in (("width", self.width), ("height", self.height)) if v)
        radios = ""
        if len(encoded) > 1:
            radios = "".join(
                f'<label style="margin-left:0.8em"><input type="radio" class="vqvae-player-track" name="{group}" '
                f'value="{html.escape(name)}"{" checked" if name == first else ""}> {html.escape(name)}</label>'
                for name in encoded
            )
        title = f'<div class="vqvae-player-title">{html.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="vqvae-player" data-frames="{len(self)}">{title}'
            '<div class="vqvae-player-controls" hidden>'
            '<button type="button" class="vqvae-player-play">Play</button>'
            f'<input type="range" class="vqvae-player-slider" min="0" max="{len(self) - 1}" step="1" value="0" '
            f'aria-label="frame">{radios}</div>'
            f'<div class="vqvae-player-caption">{html.escape(self.captions[0])}</div>'
            f'<img class="vqvae-player-image" alt="{html.escape(self.title or "frame")}"{size} '
            f'src="data:image/png;base64,{encoded[first][0]}">'
            f'<script type="application/json" class="vqvae-player-data">{payload}</script>'
            f"<script>{_SCRIPT}</script></div>"
        )
