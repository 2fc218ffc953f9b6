"""The codebook lab: a tiny VQ-VAE on 2-D points that you watch learn, with the codebook's knobs in reach.

The data are 2-D points; a small MLP encodes each into a 2-D latent, the library's quantizer snaps it to
one of ``K`` codes, and an MLP decodes it back. Because the latent plane is 2-D it can be drawn whole: the
encoder outputs, the codes, their Voronoi cells, and which codes are dead. :class:`LabSettings` holds the
knobs of notebook 4 (``K``, ``beta``, EMA decay, initialisation, dead-code restarts); :func:`run_lab`
trains one run with :func:`~vqvae_lib.training.fit` and calls back with snapshots; :class:`CodebookLab`
is the ipywidgets front end (press Train: a run from scratch with the current settings, drawn live);
for readers without a kernel, :func:`plot_lab_run` draws a recorded run as one static figure and
:func:`lab_run_player` turns it into a slider and Play button that work on a static page.

    from vqvae_lib.codebook_lab import CodebookLab
    CodebookLab()          # in a notebook: controls, a Train button and the live picture
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .frame_player import FramePlayer, bundle_with_copy
from .quantizer import VectorQuantizer, VectorQuantizerEMA, nearest_code
from .training import FitConfig, fit

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

__all__ = ["LabSettings", "LabModel", "LabSnapshot", "make_points", "run_lab", "plot_lab_run", "lab_run_player", "CodebookLab"]

INITS = ("uniform", "normal", "kmeans")
_KNOBS = ("num_codes", "beta", "ema_decay", "init", "restart_after")  # the settings a figure's title names


@dataclass(frozen=True)
class LabSettings:
    """One run of the lab.

    Attributes:
        num_codes: ``K``.
        beta: weight of the commitment term.
        ema_decay: 0 trains the codes with the codebook loss (Adam); a value in (0, 1) makes them EMA
            averages with that decay instead (appendix A.1).
        init: ``"uniform"`` (in ``[-1/K, 1/K]``, the reference implementations' choice), ``"normal"``
            (unit Gaussian) or ``"kmeans"`` (k-means of the first batch's encoder outputs).
        restart_after: a code unused for this many steps moves onto a random encoder output; 0: never.
        steps, batch_size, lr, seed: the training run (Adam, constant learning rate).
    """

    num_codes: int = 16
    beta: float = 0.25
    ema_decay: float = 0.0
    init: str = "uniform"
    restart_after: int = 0
    steps: int = 300
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {self.init!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1): 0 for codebook-loss updates")
        if self.num_codes < 2:
            raise ValueError("num_codes must be >= 2")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.beta < 0 or self.lr <= 0:
            raise ValueError("beta must be >= 0 and lr > 0")


SHOWN = 600  # points drawn in the picture: enough to see every cluster, few enough to redraw fast


def make_points(n: int = 2000, seed: int = 0) -> Tensor:
    """``(n, 2)`` points from seven clusters of different sizes, spreads and densities: some codes must
    share a dense cluster, and a sparse one is easy to abandon."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-3.0, -2.0], [-2.5, 2.5], [0.0, 0.0], [2.5, 2.0], [3.0, -2.5], [0.0, -3.5], [0.5, 3.5]])
    spread = torch.tensor([0.6, 0.35, 0.8, 0.3, 0.5, 0.25, 0.2])
    weight = torch.tensor([0.25, 0.12, 0.25, 0.12, 0.14, 0.07, 0.05])
    which = torch.multinomial(weight, n, replacement=True, generator=g)
    return centres[which] + spread[which, None] * torch.randn(n, 2, generator=g)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


class LabModel(nn.Module):
    """Encoder MLP, the library's quantizer on the 2-D latent, decoder MLP."""

    def __init__(self, settings: LabSettings, width: int = 32) -> None:
        super().__init__()
        s = settings
        self.encoder, self.decoder = _mlp(width), _mlp(width)
        data_init = "kmeans" if s.init == "kmeans" else None
        if s.ema_decay > 0:
            self.quantizer: VectorQuantizer | VectorQuantizerEMA = VectorQuantizerEMA(
                s.num_codes, 2, s.beta, decay=s.ema_decay, data_init=data_init, dead_code_threshold=s.restart_after)
        else:
            self.quantizer = VectorQuantizer(s.num_codes, 2, s.beta, data_init=data_init, dead_code_threshold=s.restart_after)
        if s.init != "kmeans":  # both quantizers draw their own start; set the one asked for
            k = s.num_codes
            start = torch.empty(k, 2).uniform_(-1 / k, 1 / k) if s.init == "uniform" else torch.randn(k, 2)
            self.quantizer.set_codes(start)

    def latents(self, x: Tensor) -> Tensor:
        """``(N, 2)`` points -> ``(N, 2)`` encoder outputs."""
        return self.encoder(x)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        z_e = self.encoder(x)
        q = self.quantizer(z_e.T.reshape(1, 2, 1, -1))  # the quantizer takes (B, D, H, W): one row of N positions
        x_hat = self.decoder(q.z_q.reshape(2, -1).T)
        recon = F.mse_loss(x_hat, x)
        return {
            "recon": recon,
            "total": recon + q.codebook_loss + self.quantizer.beta * q.commitment_loss,
            "perplexity": q.perplexity,
            "codes_used": torch.tensor(float(q.indices.unique().numel())),
        }


@dataclass
class LabSnapshot:
    """The state of a run after ``step`` steps: encoder outputs of the shown points, codes, and which
    codes the shown points use; ``history`` holds the per-step perplexity, codes used and reconstruction
    error so far."""

    step: int
    latents: Tensor
    codes: Tensor
    used: Tensor
    history: dict[str, list[float]] = field(default_factory=dict)


def _snapshot(model: LabModel, shown: Tensor, step: int, history: dict[str, list[float]]) -> LabSnapshot:
    with torch.no_grad():
        z = model.latents(shown)
        codes = model.quantizer.codebook.detach().clone()
        nearest = nearest_code(z, codes)  # the quantizer's own search, ties broken as in training
    used = torch.zeros(len(codes), dtype=torch.bool)
    used[nearest] = True
    return LabSnapshot(step, z, codes, used, {k: list(v) for k, v in history.items()})


def run_lab(
    settings: LabSettings, points: Tensor | None = None, every: int = 10, on_snapshot: Callable[[LabSnapshot], None] | None = None
) -> list[LabSnapshot]:
    """Train one lab run from scratch (seeded, on the CPU) and return snapshots at step 0 and every
    ``every`` steps (and the last); ``on_snapshot`` is called with each as it is taken. Like
    :func:`~vqvae_lib.training.train`, a run seeds the global generators (torch, NumPy, ``random``) from
    ``settings.seed``: that is what makes the same settings give the same run."""
    if every < 1:
        raise ValueError("every must be >= 1 (steps between snapshots)")
    points = make_points(seed=settings.seed) if points is None else points
    torch.manual_seed(settings.seed)
    model = LabModel(settings)
    shown = points[:SHOWN]
    g = torch.Generator().manual_seed(settings.seed)
    history: dict[str, list[float]] = {"perplexity": [], "codes_used": [], "recon": []}
    snapshots: list[LabSnapshot] = []

    def take(step: int) -> None:
        snapshots.append(_snapshot(model, shown, step, history))
        if on_snapshot is not None:
            on_snapshot(snapshots[-1])

    def batches(start: int):
        while True:
            yield points[torch.randint(len(points), (settings.batch_size,), generator=g)]

    def after_step(step: int, logs: dict[str, float]) -> None:
        for key in history:
            history[key].append(logs[key])
        if step % every == 0 or step == settings.steps:
            take(step)

    take(0)
    config = FitConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, lr_schedule="constant",
                       warmup_steps=0, eval_every=0, checkpoint_every=0, seed=settings.seed, device="cpu")
    fit(model, lambda x, device: model.loss(x.to(device)), batches, config, progress=False, callback=after_step)
    return snapshots


def _plane(snap: LabSnapshot, size: int = 120) -> tuple[tuple[float, float, float, float], Tensor]:
    """The drawn part of the latent plane (around the encoder outputs and the codes in use, with a
    margin) and the ``(size, size)`` map of which code owns each point of it (the Voronoi cells)."""
    both = torch.cat([snap.latents, snap.codes[snap.used]])
    lo, hi = both.min(0).values, both.max(0).values
    pad = 0.15 * (hi - lo).clamp_min(1e-3)
    lo, hi = lo - pad, hi + pad
    xs, ys = torch.linspace(float(lo[0]), float(hi[0]), size), torch.linspace(float(lo[1]), float(hi[1]), size)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    cells = nearest_code(grid, snap.codes).reshape(size, size)
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), cells


class _PlanePanel:
    """The latent plane on ``ax`` for a run with ``k`` codes: Voronoi cells, the shown points coloured by
    their code, codes in use and dead codes. Its artists are made once; :meth:`update` changes their data,
    which is what lets the widget redraw fast, and the recorded figure draws with the same code."""

    def __init__(self, ax, k: int, legend: bool) -> None:
        import matplotlib.colors as mcolors

        self.ax = ax
        cmap = mcolors.ListedColormap([f"C{i % 10}" for i in range(k)])
        empty = torch.zeros(0, 2).numpy()
        self.cells = ax.imshow(torch.zeros(120, 120).numpy(), origin="lower", cmap=cmap, vmin=-0.5, vmax=k - 0.5,
                               alpha=0.22, aspect="auto", interpolation="nearest")
        self.points = ax.scatter(empty[:, 0], empty[:, 1], c=[], cmap=cmap, vmin=-0.5, vmax=k - 0.5, s=5)
        self.codes_in_use = ax.scatter(empty[:, 0], empty[:, 1], marker="*", s=150, c="white", edgecolors="black",
                                       linewidths=1.2, label="code in use")
        self.dead_codes = ax.scatter(empty[:, 0], empty[:, 1], marker="x", s=40, c="crimson", linewidths=1.5, label="dead code")
        ax.set_xticks([]), ax.set_yticks([])
        if legend:
            ax.legend(fontsize=9, loc="lower left", framealpha=0.9)
        self.title = ax.set_title("", fontsize=11)

    def update(self, snap: LabSnapshot) -> None:
        z, codes = snap.latents, snap.codes
        extent, cells = _plane(snap)
        self.cells.set_data(cells.numpy())
        self.cells.set_extent(extent)
        self.points.set_offsets(z.numpy())
        self.points.set_array(nearest_code(z, codes).numpy())
        self.codes_in_use.set_offsets(codes[snap.used].numpy())
        self.dead_codes.set_offsets(codes[~snap.used].numpy())
        self.ax.set_xlim(extent[0], extent[1]), self.ax.set_ylim(extent[2], extent[3])
        when = f"step {snap.step}" if snap.step else "before training"
        self.title.set_text(f"{when}: {int(snap.used.sum())} of {len(codes)} codes in use")


class _CurvePanel:
    """Perplexity and codes used per batch on ``ax``, against ``K``, over a run of ``steps`` steps."""

    def __init__(self, ax, k: int, steps: int) -> None:
        (self.perplexity_line,) = ax.plot([], [], color="C0", label="perplexity")
        (self.codes_used_line,) = ax.plot([], [], color="C1", label="codes used (batch)")
        ax.axhline(k, color="gray", ls="--", lw=1, label=f"K = {k}")
        ax.set_xlim(0, steps), ax.set_ylim(0, k * 1.55)  # room above the K line for the legend
        ax.set_xlabel("step", fontsize=10), ax.legend(fontsize=9, loc="upper left", ncol=2, frameon=False)
        ax.tick_params(labelsize=9)
        ax.set_title("codebook usage per batch", fontsize=11)

    def update(self, snap: LabSnapshot) -> None:
        steps = list(range(1, len(snap.history.get("perplexity", [])) + 1))
        self.perplexity_line.set_data(steps, snap.history.get("perplexity", []))
        self.codes_used_line.set_data(steps, snap.history.get("codes_used", []))


def plot_lab_run(snapshots: list[LabSnapshot], settings: LabSettings, at: tuple[int, ...] = (0, 30, 100)) -> "Figure":
    """A recorded run as one figure: the latent plane at the steps ``at`` and at the end, and the usage
    curve. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    by_step = {s.step: s for s in snapshots}
    chosen = [by_step[min(by_step, key=lambda k: abs(k - a))] for a in at] + [snapshots[-1]]
    fig, axes = plt.subplots(1, len(chosen) + 1, figsize=(3.3 * (len(chosen) + 1), 3.4))
    for i, (ax, snap) in enumerate(zip(axes, chosen)):
        _PlanePanel(ax, settings.num_codes, legend=i == 0).update(snap)
    _CurvePanel(axes[-1], settings.num_codes, settings.steps).update(snapshots[-1])
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k in _KNOBS)
    fig.suptitle(f"codebook lab: {knobs}", fontsize=11)
    fig.tight_layout()
    return fig


def lab_run_player(snapshots: list[LabSnapshot], settings: LabSettings, dpi: int = 60) -> FramePlayer:
    """A recorded run as a kernel-free :class:`~vqvae_lib.frame_player.FramePlayer`: the lab's picture at
    every snapshot (the same figure the widget redraws), captioned with the step and that step's codebook
    usage. Each frame is a 64-colour PNG of about 10 KB at the default ``dpi``; a 300-step run recorded
    every 10 steps (31 frames) weighs about 0.4 MB as a notebook output."""
    picture = _LivePicture(settings.num_codes, settings.steps, dpi)
    pngs, captions = [], []
    for snap in snapshots:
        pngs.append(_png(picture.update(snap), optimize=True))
        captions.append(f"step {snap.step} of {settings.steps}" + _usage(snap.history))
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k in _KNOBS)
    return FramePlayer(pngs, captions, interval_ms=150, title=f"recorded run: {knobs}")


def _png(canvas: "FigureCanvasAgg", optimize: bool = False) -> bytes:
    """A drawn Agg canvas as PNG bytes: light compression for live redraws, the smallest file for recordings."""
    from PIL import Image

    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    if optimize:
        image.convert("RGB").quantize(colors=64).save(buffer, format="PNG", optimize=True)
    else:
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _usage(history: dict[str, list[float]]) -> str:
    """The caption's end for a run's history so far: the last batch's perplexity and codes used."""
    if not history.get("perplexity"):
        return ""
    return f": perplexity {history['perplexity'][-1]:.1f}, codes used {history['codes_used'][-1]:.0f}"


class _LivePicture:
    """The widget's figure for a run with ``k`` codes: a plane and a curve panel, redrawn in place."""

    def __init__(self, k: int, steps: int, dpi: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.k = k
        self.figure = Figure(figsize=(10, 4.2), dpi=dpi)
        FigureCanvasAgg(self.figure)
        plane, curve = self.figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
        self.figure.subplots_adjust(left=0.01, right=0.98, bottom=0.12, top=0.92, wspace=0.1)
        self.plane, self.curve = _PlanePanel(plane, k, legend=True), _CurvePanel(curve, k, steps)

    def update(self, snap: LabSnapshot):
        self.plane.update(snap)
        self.curve.update(snap)
        self.figure.canvas.draw()
        return self.figure.canvas


class CodebookLab:
    """The lab as ipywidgets: sliders and menus for :class:`LabSettings`, a Train button that runs
    :func:`run_lab` from scratch with them, and an image redrawn every ``every`` steps.
    ``update_ms`` lists how long each update of the last run took (the steps since the previous redraw
    and the redraw), ``last_update_ms`` the latest; the status line shows it."""

    def __init__(self, settings: LabSettings | None = None, every: int = 10, dpi: int = 72) -> None:
        import ipywidgets as widgets

        if every < 1:
            raise ValueError("every must be >= 1 (steps between redraws)")
        settings = settings or LabSettings()
        self.settings, self.every, self.dpi = settings, every, dpi
        self.points = make_points(seed=settings.seed)
        style = {"description_width": "150px"}
        s = settings  # the sliders' ranges widen to hold values set outside them, rather than clamp them
        self.controls = {
            "num_codes": widgets.IntSlider(s.num_codes, 2, max(64, s.num_codes), description="codes K", style=style),
            "beta": widgets.FloatSlider(s.beta, min=0.0, max=max(2.0, s.beta), step=0.05, description="beta (commitment)", style=style),
            "ema_decay": widgets.FloatSlider(s.ema_decay, min=0.0, max=max(0.99, s.ema_decay), step=0.01,
                                             description="EMA decay (0: off)", style=style),
            "init": widgets.Dropdown(options=INITS, value=s.init, description="initialisation", style=style),
            "restart_after": widgets.IntSlider(s.restart_after, 0, max(100, s.restart_after), step=5,
                                               description="restart after (0: off)", style=style),
            "steps": widgets.IntSlider(s.steps, min(50, s.steps), max(1000, s.steps), step=50, description="steps", style=style),
        }
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play")
        self.status = widgets.HTML("press Train: a run from scratch with these settings")
        self.status.add_class("vqvae-lab-status")  # for the browser test, and anyone styling the page
        self.image = widgets.Image(format="png")
        self.train_button.on_click(lambda _: self.train())
        self.last_update_ms = float("nan")
        self.update_ms: list[float] = []
        self._running = False
        self._picture: _LivePicture | None = None
        controls = widgets.VBox(list(self.controls.values()))
        self.widget = widgets.VBox([widgets.HBox([controls, widgets.VBox([self.train_button, self.status])]), self.image])
        self.widget.add_class("vqvae-codebook-lab")
        with torch.random.fork_rng():  # the run's own start, as run_lab draws it, without touching the session's RNG
            torch.manual_seed(settings.seed)
            start = LabModel(settings)
        self.snapshots = [_snapshot(start, self.points[:SHOWN], 0, {})]
        self.image.value = self.render(self.snapshots[-1])

    def current_settings(self) -> LabSettings:
        return replace(self.settings, **{k: c.value for k, c in self.controls.items()})

    def render(self, snap: LabSnapshot) -> bytes:
        """The picture of one snapshot as PNG bytes. The figure and its artists are made once per run
        and only their data change between redraws (no new figure, no layout pass, no second draw by
        ``savefig``), and the PNG is written with light compression: the difference between a redraw
        that feels live and one that lags (``benchmarks/codebook_lab.py``)."""
        k = len(snap.codes)
        if self._picture is None or self._picture.k != k:
            self._picture = _LivePicture(k, self.current_settings().steps, self.dpi)
        return _png(self._picture.update(snap))

    def train(self) -> list[LabSnapshot]:
        """One run with the current settings, redrawn as it goes; returns its snapshots. A click that
        arrives while a run is going is ignored; an error stops the run and is shown in the status line
        (a button's callback has no cell to print it in) before it is raised."""
        if self._running:
            return self.snapshots
        settings = self.current_settings()
        self._running, self.train_button.disabled = True, True
        self.update_ms = []
        clock = time.perf_counter()

        def show(snap: LabSnapshot) -> None:
            nonlocal clock
            self.image.value = self.render(snap)
            now = time.perf_counter()
            self.last_update_ms = 1000 * (now - clock)
            self.update_ms.append(self.last_update_ms)
            clock = now
            self.status.value = f"step {snap.step} of {settings.steps}{_usage(snap.history)} &nbsp; ({self.last_update_ms:.0f} ms per update)"

        try:
            self._picture = None  # a new run may have another K or length: new axes
            self.snapshots = run_lab(settings, self.points, every=self.every, on_snapshot=show)
        except Exception as err:
            self.status.value = f"stopped: {type(err).__name__}: {err}"
            raise
        finally:
            self._running, self.train_button.disabled = False, False
        return self.snapshots

    def _repr_mimebundle_(self, **kwargs) -> dict:
        # a static page (no kernel) shows the text/html: the picture as it stands, and why Train is missing
        picture = base64.b64encode(self.image.value).decode()
        copy = ('<div class="vqvae-codebook-lab-static"><p><em>The lab trains in a running notebook (JupyterLab, or Colab); '
                "without a kernel this is its picture as it was displayed.</em></p>"
                f'<img alt="the codebook lab\'s picture" src="data:image/png;base64,{picture}"></div>')  # fmt: skip
        return bundle_with_copy(self.widget, copy, **kwargs)
