"""Sphinx configuration of the tornado-safestream documentation.

Build: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html``; the code in the
pages runs with ``sphinx-build -W -b doctest docs docs/_build/doctest``. Both work with no
network: the inventories of Python and Tornado that cross-references use are in
``docs/_inventories/`` (see its README).
"""

from __future__ import annotations

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the checkout's package, also without an install
sys.path.insert(0, HERE)  # _doctest_helpers

import tornado_safestream  # noqa: E402

project = "tornado-safestream"
author = "The tornado-safestream authors"
copyright = "The tornado-safestream authors"
version = release = tornado_safestream.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "**/README.md"]

# As in Tornado's docs: `name` is a cross-reference, ``name`` a literal.
default_role = "py:obj"
primary_domain = "py"
nitpicky = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}  # each directive lists its members

# No network where the docs are built: both inventories are shipped (docs/_inventories/).
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", os.path.join(HERE, "_inventories", "python.inv")),
    "tornado": (
        "https://www.tornadoweb.org/en/stable/",
        os.path.join(HERE, "_inventories", "tornado.inv"),
    ),
}

intersphinx_timeout = 1

# Names in signatures that no inventory has: type variables and aliases of the package's
# own typing, and pytest's objects (pytest publishes no inventory that the build can reach).
nitpick_ignore: list[tuple[str, str]] = []
#: A private module: ``tornado_safestream._assertions``, ``tornado_safestream._core._channel``.
_PRIVATE = r"tornado_safestream(\._core|\._http|\._websocket)?\._[a-z_]+"
nitpick_ignore_regex = [
    ("py:class", _PRIVATE + r"\._[A-Za-z]+"),
    ("py:class", r"_[A-Z][A-Za-z]*"),
    ("py:obj", _PRIVATE + r"\._[A-Z][A-Za-z]*"),  # a Generic's type variable
    ("py:class", r"pytest\..*"),
    # broadcast()'s message: the alias of what write_message() takes (str, bytes, dict, ...).
    ("py:class", r"WebSocketMessage"),
    # SafeWebSocketMixin.slow_client's alias: the Literal of its three policies.
    ("py:class", r"SlowClient"),
]

myst_heading_anchors = 3

doctest_global_setup = """
from _doctest_helpers import fetch, serve
"""

html_theme = "furo"
html_title = f"tornado-safestream {release}"
html_static_path = ["_static"]
html_show_sourcelink = False


#: Where autodoc finds a class by its defining module, the documented name.
_DOCUMENTED_AS = {
    "concurrent.futures._base.Future": "concurrent.futures.Future",
    "concurrent.futures._base.Executor": "concurrent.futures.Executor",
    "_asyncio.Future": "asyncio.Future",
}


def _documented_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    target = _DOCUMENTED_AS.get(node.get("reftarget"))
    if target is None:
        return None
    from sphinx.ext.intersphinx import missing_reference

    node["reftarget"] = target
    return missing_reference(app, env, node, contnode)


def setup(app: Any) -> None:
    app.connect("missing-reference", _documented_name)
    # pytest fixtures: `.. fixture:: name` and :fixture:`name`.
    app.add_object_type("fixture", "fixture", "pair: %s; pytest fixture")
