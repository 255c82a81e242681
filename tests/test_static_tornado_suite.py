"""
Tornado's own static-file tests (``tornado/test/web_test.py`` of the installed Tornado) against
`SafeStaticFileHandler`.

The module is loaded a second time, under another name, with ``tornado.web.StaticFileHandler``
bound to `SafeStaticFileHandler` while it is imported: every ``StaticFileHandler`` it names
(routes, the subclasses its tests define, default arguments) is then ours, and the
applications its test cases build get ``static_handler_class=SafeStaticFileHandler`` unless
they choose their own class (a subclass of ours, then). Each test case that touches static
files runs here as a subclass; `test_every_static_case_runs` fails if the installed Tornado
has one this list does not name.

One thing differs on purpose: a ``static_url()`` called on the loop does not read the file
(see the static files guide), so `StaticFileTest`, whose handlers call it on the loop and expect
``?v=<hash>`` in the first response, warms the versions first with
`SafeStaticFileHandler.warm_versions`, as an application does at start-up.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import re
import sys
import types
import unittest
from typing import Any

import tornado.test.util
import tornado.testing
import tornado.web

from tornado_safestream import SafeStaticFileHandler


def _load_web_test() -> types.ModuleType:
    spec = importlib.util.find_spec("tornado.test.web_test")
    assert spec is not None and spec.origin is not None
    name = "_safestatic_tornado_web_test"
    copy = importlib.util.spec_from_file_location(name, spec.origin)
    assert copy is not None and copy.loader is not None
    module = importlib.util.module_from_spec(copy)
    original = tornado.web.StaticFileHandler
    tornado.web.StaticFileHandler = SafeStaticFileHandler  # type: ignore[misc]
    try:
        sys.modules[name] = module
        copy.loader.exec_module(module)
    finally:
        tornado.web.StaticFileHandler = original  # type: ignore[misc]
    return module


_web_test = _load_web_test()

#: The test cases of web_test.py that touch static files (those of Tornado 6.3 are a subset).
STATIC_CASES = (
    "StaticFileTest",
    "StaticFileSymlinkTest",
    "StaticFileVersionPathTest",
    "StaticFileMultiRootTest",
    "StaticFileAlternateDataStreamTest",  # Windows only: skipped elsewhere by Tornado
    "StaticFileSymlinkedRootTest",
    "StaticDefaultFilenameTest",
    "StaticDefaultFilenameRootTest",
    "StaticFileWithPathTest",
    "CustomStaticFileTest",
    "GzipTestCase",
)


class _SafeStatic:
    """Applications built by the test case serve their static_path with our handler."""

    def setUp(self) -> None:
        # As Tornado's runner (tornado/test/runtests.py) does: its tests fail on any log
        # record they do not expect, the access log's included.
        access = logging.getLogger("tornado.access")
        self.addCleanup(access.setLevel, access.level)  # type: ignore[attr-defined]
        access.setLevel(logging.CRITICAL)
        super().setUp()  # type: ignore[misc]

    def get_app_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = super().get_app_kwargs()  # type: ignore[misc]
        if "static_path" in kwargs:
            kwargs.setdefault("static_handler_class", SafeStaticFileHandler)
        return kwargs


class _Warmed(_SafeStatic):
    """An application that warms its static files' versions at start-up."""

    def get_app(self) -> tornado.web.Application:
        app: tornado.web.Application = super().get_app()  # type: ignore[misc]
        self.addCleanup(SafeStaticFileHandler.reset)  # type: ignore[attr-defined]
        io_loop = self.io_loop  # type: ignore[attr-defined]
        io_loop.run_sync(lambda: SafeStaticFileHandler.warm_versions(app.settings))
        return app


_COVERED: list[str] = []
for _name in STATIC_CASES:
    _base = getattr(_web_test, _name, None)
    if _base is None:
        continue  # not in this Tornado's web_test.py
    _mixin = _Warmed if _name == "StaticFileTest" else _SafeStatic
    # runTest: pytest makes an instance of each unittest case class with the default method
    # name, "runTest", which Tornado 6.3's AsyncTestCase.__init__ looks up (6.4 checks first).
    _namespace = {"__module__": __name__, "runTest": lambda self: None}
    _case = type(f"TestSafe{_name}", (_mixin, _base), _namespace)
    globals()[_case.__name__] = _case
    _COVERED.append(_name)
del _name, _base, _mixin, _namespace, _case


def test_every_static_case_runs() -> None:
    """Every test case of the installed web_test.py that mentions static files is run above."""
    source = inspect.getsource(_web_test)
    mentioning = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            case = getattr(_web_test, node.name)
            segment = ast.get_source_segment(source, node) or ""
            if (
                isinstance(case, type)
                and issubclass(case, unittest.TestCase)
                and re.search("static", segment, re.IGNORECASE)
            ):
                mentioning.add(node.name)
    assert mentioning <= set(_COVERED), sorted(mentioning - set(_COVERED))
    assert {"StaticFileTest", "CustomStaticFileTest", "GzipTestCase"} <= set(_COVERED)


def test_the_copy_serves_with_our_handler() -> None:
    assert _web_test.StaticFileHandler is SafeStaticFileHandler
    assert tornado.web.StaticFileHandler is not SafeStaticFileHandler
    assert tornado.testing is not None and tornado.test.util is not None
