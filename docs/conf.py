"""Sphinx configuration of gpuale's documentation.

Build (the README's third command): ``.venv/bin/python -m sphinx -W --keep-going -b html
docs docs/_build/html``. Warnings are errors; the gallery (``docs/examples``) is executed
on the bundled data at every build.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
# Document the source tree this conf.py belongs to, not some installed gpuale.
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(DOCS / "_ext"))

import gpuale  # noqa: E402

project = "gpuale"
author = "gpuale developers"
copyright = "gpuale developers, MIT licence"  # noqa: A001
version = release = gpuale.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "gpuale_cli_reference",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples/GALLERY_HEADER.rst", "**.ipynb_checkpoints"]
root_doc = "index"
# Untagged code blocks are command synopses: plain text, not guessed Python.
highlight_language = "text"
nitpicky = False
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# API reference: numpydoc renders the docstrings; its validation runs on the documented
# objects and its failures are warnings (errors under -W).
autodoc_default_options = {"members": False, "member-order": "bysource"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Every documented object has a docstring and documents every parameter it takes.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "PR10"}
# The Engine protocol's constructor is typing.Protocol's (*args, **kwargs): an engine
# documents its own.
numpydoc_validation_exclude = {r"^gpuale\.engines\.Engine$"}

intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"/_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "show_memory": False,
    "plot_gallery": "True",
}

html_theme = "pydata_sphinx_theme"
html_title = f"gpuale {release}"
html_static_path = []
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "getting_started": [], "methods": [], "validation": [],
                 "contributing": [], "cli": [], "api": []}
html_show_sourcelink = False
