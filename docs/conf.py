"""Sphinx configuration of the website (``python tools/build_site.py`` builds it; see the README).

The pages are the committed, executed notebooks as they are: myst-nb renders them and never runs them
(``nb_execution_mode = "off"``). Everything a page needs is copied next to it: the theme's files, MathJax
(from the ``sphinx-mathjax-offline`` package) and the search index, so the site builds and reads with no
network. ``tools/build_site.py`` gathers the sources (the README as the intro page, the notebooks, the
figures they link to) into ``_site/source`` and points Sphinx at it with this folder as the configuration.
"""

from __future__ import annotations

import os

project = "VQ-VAE, from the idea to your own images"
author = "the vqvae_lib authors"
copyright = "the vqvae_lib authors"

extensions = ["myst_nb", "sphinx-mathjax-offline"]
root_doc = "index"
exclude_patterns = ["**.ipynb_checkpoints"]

# The notebooks are committed executed in full mode: show them, never run them.
nb_execution_mode = "off"
# No widget state is committed (a widget that matters carries an HTML copy of itself), so the widget
# manager that myst-nb would otherwise load from a CDN is never needed.
nb_ipywidgets_js: dict = {}
# and should a notebook be saved with a widget view beside its HTML copy, the page shows the copy: the
# view could never be drawn without the state
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
myst_heading_anchors = 3


html_theme = "sphinx_book_theme"
html_title = project
html_static_path = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "_static")]
html_css_files = ["site.css"]
html_last_updated_fmt = None
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,  # the page's .ipynb, to run it locally
    "home_page_in_toc": True,
    "navbar_persistent": [],  # else a second search field in a bar above the page (the sidebar has one)
}
html_show_sourcelink = False
# Search results without a text snippet: the snippet is fetched from each result's page, which a
# browser refuses on a site opened from disk (file://), with a console error per result.
html_show_search_summary = False
html_context = {"default_mode": "auto"}  # unset, the theme logs an error on every page of a fresh browser


def setup(app):
    # MathJax from the site's own _static/mathjax (copied there by sphinx-mathjax-offline), with SVG
    # output: it needs no web fonts, which a browser refuses to load from file:// pages. Set here because
    # the extension sets its CHTML choice when it loads, after this file's plain settings are read.
    app.config.mathjax_path = "mathjax/tex-svg.js"
