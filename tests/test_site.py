"""The website: built from the committed notebooks by ``tools/build_site.py``, read in headless Chromium
with the network cut off.

The site is built once into a temporary folder (with a stand-in GitHub name, so the Colab links are
drawn) and opened from disk (``file://``), as a reader who built it would open it. Every request that
is not for a file of the site is refused and recorded, and Chromium resolves no host names at all.
Every page: it loads with no console error and no failed request, each formula is typeset by MathJax
(no TeX error), every image decodes. The interpolation player of notebook 8 and the recorded runs of
notebook 4: moving the slider, pressing Play and choosing the other space change the picture, with no
kernel. Search finds a word of the lessons. Screenshots go to ``test-artifacts/site/``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from build_site import DOC_PAGES, build_site  # noqa: E402
from colab import colab_url, write_setup_cells  # noqa: E402
from run_notebooks import notebook_paths  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    # myst-parser 5.2 still calls an attribute Sphinx 9 deprecates: its warning, not ours
    pytest.mark.filterwarnings("ignore:.*is deprecated. Check CHANGES for Sphinx API modifications"),
]

ARTIFACTS = REPO / "test-artifacts" / "site"
REPOSITORY = "example-owner/vqvae-notebooks"  # a stand-in: the test checks the links' form, not GitHub
NOTEBOOKS = [p.stem for p in notebook_paths()]
CHROMIUM_EXTRA_FLAGS = ["--host-resolver-rules=MAP * ~NOTFOUND"]  # no host name resolves: nothing could be fetched


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from copies of the notebooks that carry the Colab set-up cell for the stand-in name
    (the committed ones do not yet: the repository records no GitHub name), so the links are drawn."""
    copies = tmp_path_factory.mktemp("notebooks")
    notebooks = [Path(shutil.copy(path, copies / path.name)) for path in notebook_paths()]
    write_setup_cells(REPOSITORY, notebooks)
    index = build_site(tmp_path_factory.mktemp("site"), repository=REPOSITORY, quiet=True, notebooks=notebooks)
    return index.parent


@pytest.fixture(scope="module")
def offline_page(browser, site):
    """A page in a fresh context that refuses (and records) every request outside the site's folder."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    refused: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith("data:") or url.startswith(site.as_uri()):
            r.continue_()
        else:
            refused.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
    yield page, problems, refused
    context.close()


def _open(page, site: Path, name: str) -> None:
    page.goto((site / f"{name}.html").as_uri())
    page.wait_for_load_state("load")
    # MathJax loads deferred and typesets after load: done when every formula holds its SVG (a page whose
    # MathJax never loads times out here)
    page.wait_for_function(
        "() => [...document.querySelectorAll('span.math, div.math')].every(m => m.querySelector('mjx-container svg'))",
        timeout=60_000,
    )


@pytest.mark.parametrize("name", ["index", *(f"notebooks/{n}" for n in NOTEBOOKS), *(f"docs/{p}" for p in DOC_PAGES)])
def test_every_page_reads_offline(offline_page, site, name):
    page, problems, refused = offline_page
    problems.clear()
    _open(page, site, name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name.replace('/', '_')}.png"))
    assert not problems, problems
    assert not refused, f"the page asked for something outside the site: {refused}"

    math = page.locator("span.math, div.math")
    if name.startswith("notebooks/"):
        assert math.count() > 0, "every notebook page has formulas"
    untypeset = page.evaluate("[...document.querySelectorAll('span.math, div.math')]"
                              ".filter(m => !m.querySelector('mjx-container svg')).length")
    assert untypeset == 0, f"{untypeset} of {math.count()} formulas were not typeset"
    assert page.locator("mjx-merror").count() == 0, "a formula has a TeX error"
    assert "\\(" not in page.locator("article").inner_text(), "raw TeX left on the page"

    broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))")
    assert not broken, f"images that did not load: {broken}"
    if name == "index":
        assert page.locator("img[src$='mnist_interpolation.gif']").count() == 1
        nav = page.locator("nav.bd-docs-nav a.reference.internal").all_inner_texts()
        # the intro page, then every notebook in the series' order (their titles are numbered), then the
        # reference pages
        numbered = nav[1 : 1 + len(NOTEBOOKS)]
        assert [t.split(".")[0] for t in numbered] == [str(int(n[:2])) for n in NOTEBOOKS], nav
        assert len(nav) == 1 + len(NOTEBOOKS) + len(DOC_PAGES), nav
        # the README's links to those pages lead to them on the site
        for doc in DOC_PAGES:
            assert page.locator(f"article a[href$='docs/{doc}.html']").count() >= 1, doc
    elif name.startswith("notebooks/"):
        badge = page.locator("a.vqvae-colab-badge")
        assert badge.count() == 1 and badge.get_attribute("href") == colab_url(REPOSITORY, name.split("/")[1] + ".ipynb")
        assert page.locator("div.cell_output").count() > 0, "the committed outputs are on the page"


def _frame(player) -> str:
    return player.locator("img.vqvae-player-image").get_attribute("src")


def _wait_for_new_frame(page, player, old: str) -> None:
    player.locator("img.vqvae-player-image").evaluate(
        "(img, old) => new Promise((done, fail) => { const t0 = Date.now(); (function poll() {"
        " if (img.getAttribute('src') !== old) done(); else if (Date.now() - t0 > 10000) fail('no new frame');"
        " else setTimeout(poll, 50); })(); })",
        old,
    )


def test_interpolation_player_works_without_a_kernel(offline_page, site):
    page, problems, refused = offline_page
    problems.clear()
    _open(page, site, "notebooks/" + next(n for n in NOTEBOOKS if n.startswith("08_")))
    player = page.locator(".vqvae-player")
    assert player.count() == 1, "notebook 8's explorer left no player on the page"
    player.scroll_into_view_if_needed()
    slider, caption = player.locator("input.vqvae-player-slider"), player.locator(".vqvae-player-caption")
    assert slider.is_visible(), "the controls stay hidden: the player's script did not run"
    start, start_caption = _frame(player), caption.inner_text()
    assert start.startswith("data:image/png;base64,") and start_caption.startswith("frame 0 of")

    slider.focus()
    for _ in range(6):
        slider.press("ArrowRight")
    assert caption.inner_text().startswith("frame 6 of")
    moved = _frame(player)
    assert moved != start, "moving the slider did not change the picture"

    player.locator("input.vqvae-player-track[value='quantized']").check()
    assert _frame(player) != moved and caption.inner_text().startswith("frame 6 of"), "the other space, same position"
    page.screenshot(path=str(ARTIFACTS / "08_player_quantized.png"))

    before = _frame(player)
    play = player.locator("button.vqvae-player-play")
    play.click()
    _wait_for_new_frame(page, player, before)
    assert not caption.inner_text().startswith("frame 6 of"), "Play did not advance the frame"
    if play.inner_text() == "Pause":  # still playing: stop it (a click after the last frame would start it again)
        play.click()
    assert not problems and not refused, (problems, refused)


def test_recorded_lab_runs_play_without_a_kernel(offline_page, site):
    page, problems, refused = offline_page
    problems.clear()
    _open(page, site, "notebooks/" + next(n for n in NOTEBOOKS if n.startswith("04_")))
    assert page.locator(".vqvae-codebook-lab-static img").count() == 1, "the lab's own output: its starting picture"
    players = page.locator(".vqvae-player")
    assert players.count() == 2, "two recorded runs"
    for i in range(2):
        player = players.nth(i)
        player.scroll_into_view_if_needed()
        slider = player.locator("input.vqvae-player-slider")
        start = _frame(player)
        slider.focus()
        slider.press("End")
        assert re.match(r"step (\d+) of \1: perplexity", player.locator(".vqvae-player-caption").inner_text())
        assert _frame(player) != start
    page.screenshot(path=str(ARTIFACTS / "04_recorded_run.png"))
    assert not problems and not refused, (problems, refused)


def test_search_works_offline(offline_page, site):
    page, problems, refused = offline_page
    problems.clear()
    page.goto((site / "search.html").as_uri() + "?q=perplexity")
    page.wait_for_selector("#search-results li", timeout=30_000)
    hits = page.locator("#search-results li a").all_inner_texts()
    assert any("MNIST" in h for h in hits), hits
    assert not problems and not refused, (problems, refused)
