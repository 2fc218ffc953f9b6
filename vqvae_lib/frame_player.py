"""A slider and a Play button over recorded frames, as one self-contained HTML output.

The ipywidgets in :mod:`vqvae_lib.widgets` and :mod:`vqvae_lib.codebook_lab` need a running kernel: on a
static page (the website, nbviewer) a widget is only a line of text. :class:`FramePlayer` is their
kernel-free twin. Its frames travel inside the output as base64 PNGs, and a few lines of JavaScript
swap them into one ``<img>`` when the slider moves or Play runs; nothing is fetched. Without JavaScript
(GitHub's renderer strips it) the output is the first frame and its caption; the controls are made by
the script, so none is left dead.

    player = FramePlayer({"continuous": pngs_a, "quantized": pngs_b}, captions=[f"t = {t}" for t in ...])
    player          # in a notebook: the HTML output

A player may hold several *tracks* of the same length (e.g. the two interpolation spaces); radio
buttons choose the track and the slider keeps its position.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence

__all__ = ["FramePlayer", "bundle_with_copy"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The player's behaviour, written once and inlined in every output (an output cannot rely on anything
# else being on the page). The controls are made here rather than in the HTML, so a page that runs no
# scripts (GitHub) shows the first frame and its caption and nothing dead. A renderer normally runs the
# script in place (document.currentScript's parent is its player; JupyterLab re-creates script elements,
# which keeps that), but classic Notebook evaluates it in <head> and VS Code appends a copy elsewhere, so
# without its own player it sets up every player not yet set up.
_SCRIPT = """(function () {
  var own = document.currentScript && document.currentScript.parentElement;
  var roots = own && own.matches(".vqvae-player:not([data-ready])") ? [own]
    : Array.prototype.slice.call(document.querySelectorAll(".vqvae-player:not([data-ready])"));
  roots.forEach(function (root) {
    root.dataset.ready = "1";
    var data = JSON.parse(root.querySelector("script.vqvae-player-data").textContent);
    var n = data.captions.length, track = data.first, timer = null;
    var image = root.querySelector("img.vqvae-player-image");
    var caption = root.querySelector(".vqvae-player-caption");
    if (n < 2) { return; }
    function make(tag, props) { var e = document.createElement(tag); Object.assign(e, props); return e; }
    var controls = make("div", {className: "vqvae-player-controls"});
    controls.style.cssText = "display:flex;align-items:center;gap:0.6em;flex-wrap:wrap";
    var play = make("button", {type: "button", className: "vqvae-player-play", textContent: "Play"});
    var slider = make("input", {type: "range", className: "vqvae-player-slider", min: "0", max: String(n - 1), step: "1", value: "0"});
    slider.setAttribute("aria-label", "frame");
    controls.append(play, slider);
    function show(i) {
      image.src = "data:image/png;base64," + data.tracks[track][i];
      caption.textContent = data.captions[i];
      root.dataset.frame = String(i);
    }
    function stop() { clearInterval(timer); timer = null; play.textContent = "Play"; }
    var names = Object.keys(data.tracks);
    if (names.length > 1) {
      // a radio group of its own, even where the same output is on the page twice
      var group = "vqvae-player-" + Math.random().toString(36).slice(2);
      names.forEach(function (name) {
        var radio = make("input", {type: "radio", name: group, value: name, className: "vqvae-player-track", checked: name === track});
        radio.addEventListener("change", function () { track = name; show(Number(slider.value)); });
        var label = make("label", {});
        label.append(radio, " " + name);
        controls.append(label);
      });
    }
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    play.addEventListener("click", function () {
      if (timer !== null) { stop(); return; }
      play.textContent = "Pause";
      timer = setInterval(function () {
        var i = (Number(slider.value) + 1) % n;
        slider.value = String(i);
        show(i);
        if (i === n - 1) { stop(); }
      }, data.interval);
    });
    root.insertBefore(controls, caption);
  });
})();"""


class FramePlayer:
    """Frames shown one at a time under a slider and a Play button, with no kernel.

    Args:
        tracks: PNG bytes per frame, or a mapping ``name -> PNG bytes per frame`` of tracks of equal
            length (the first is shown first).
        captions: one line per frame (default ``"frame i of n"``).
        interval_ms: time per frame when playing.
        title: a line above the player.
        width, height: the image's display size in pixels (default: the PNG's own size).
    """

    def __init__(self, tracks: Mapping[str, Sequence[bytes]] | Sequence[bytes], captions: Sequence[str] | None = None,
                 interval_ms: int = 120, title: str = "", width: int | None = None, height: int | None = None) -> None:  # fmt: skip
        if isinstance(tracks, (bytes, bytearray, str)):
            raise TypeError("tracks: a list of PNG bytes per frame, or a mapping name -> such a list (got one bytes object)")
        tracks = dict(tracks) if isinstance(tracks, Mapping) else {"frames": list(tracks)}
        lengths = {len(frames) for frames in tracks.values()}
        if not tracks or lengths == {0}:
            raise ValueError("FramePlayer needs at least one frame")
        if len(lengths) != 1:
            raise ValueError(f"every track needs the same number of frames, got {sorted(lengths)}")
        for name, frames in tracks.items():
            if isinstance(frames, (bytes, bytearray)) or not all(bytes(f[:8]) == PNG_SIGNATURE for f in frames):
                raise TypeError(f"track {name!r}: each frame must be the bytes of a PNG file (see vqvae_lib.widgets.frames_to_png)")
        (n,) = lengths
        captions = [f"frame {i} of {n - 1}" for i in range(n)] if captions is None else [str(c) for c in captions]
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for {n} frames")
        self.tracks = {str(name): [bytes(png) for png in frames] for name, frames in tracks.items()}
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
        # "<" escaped so that no caption or name can close the script element early
        payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
        size = "".join(f' {k}="{v}"' for k, v in (("width", self.width), ("height", self.height)) if v)
        title = f'<div class="vqvae-player-title">{html.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="vqvae-player" data-frames="{len(self)}">{title}'
            f'<div class="vqvae-player-caption">{html.escape(self.captions[0])}</div>'
            f'<img class="vqvae-player-image" alt="{html.escape(self.title or "frame")}"{size} '
            f'src="data:image/png;base64,{encoded[first][0]}">'
            f'<script type="application/json" class="vqvae-player-data">{payload}</script>'
            f"<script>{_SCRIPT}</script></div>"
        )


def bundle_with_copy(widget, copy_html: str, **kwargs) -> dict:
    """A widget's display data with a kernel-free ``text/html`` copy beside it: a live notebook draws the
    widget, a static page (or a notebook whose widget state is gone) the copy. ipywidgets 8 builds the
    widget's part itself; ipywidgets 7 (which Colab ships) has no ``_repr_mimebundle_`` and only
    displays itself, so its part is written out here in the same form."""
    method = getattr(widget, "_repr_mimebundle_", None)
    if method is not None:
        bundle = method(**kwargs) or {}
    else:
        view = {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}
        bundle = {"text/plain": repr(widget), "application/vnd.jupyter.widget-view+json": view}
    return {**bundle, "text/html": copy_html}
