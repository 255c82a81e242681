"""The documentation stays in step with the code: every public name has its entry, every
internal link and included file exists, and the README's example is the one the docs run.

(The docs' own build, ``sphinx-build -W -n``, checks cross-references; its doctest builder
runs the code in the pages. These checks need no Sphinx, so they run everywhere the suite
runs.)
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

import tornado_safestream
import tornado_safestream.memory
import tornado_safestream.multipart

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The pages' sources (``_static`` holds files they include, ``_build`` the output).
PAGES = sorted(
    p
    for p in [*DOCS.rglob("*.rst"), *DOCS.rglob("*.md")]
    if not {"_build", "_inventories", "_static"} & set(p.relative_to(DOCS).parts)
)


def _api_entries() -> set[str]:
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    pattern = (
        r"^\s*\.\. (?:auto)?(?:class|function|exception|data|fixture|option|confval)::\s+(\S+)"
    )
    return set(re.findall(pattern, text, re.M))


@pytest.mark.parametrize(
    "module",
    [tornado_safestream, tornado_safestream.memory, tornado_safestream.multipart],
    ids=lambda m: m.__name__,
)
def test_every_public_name_is_in_the_api_reference(module: object) -> None:
    names = set(getattr(module, "__all__", ()))
    assert names, module
    assert names - _api_entries() == set()


def test_the_pytest_plugins_options_and_fixtures_are_in_the_api_reference() -> None:
    source = (ROOT / "tornado_safestream" / "pytest_plugin.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    public: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("addoption", "addini") and node.args:
                first = node.args[0]
                assert isinstance(first, ast.Constant)
                public.add(str(first.value))
            if node.func.attr == "fixture":
                for keyword in node.keywords:
                    if keyword.arg == "name":
                        assert isinstance(keyword.value, ast.Constant)
                        public.add(str(keyword.value.value))
    assert {"--safestream-assert", "safestream_assert", "thread_violations"} <= public
    assert public - _api_entries() == set()


def _links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)  # Markdown links
    targets += re.findall(
        r"^\s*(?:\.\. |```\{)(?:literalinclude|include|image)(?::: |\} )(\S+)", text, re.M
    )
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_internal_link_and_included_file_exists(page: Path) -> None:
    missing = []
    for target in _links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert missing == []


def test_the_readme_example_is_the_one_the_docs_run() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", readme, re.S)
    assert match is not None
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    assert ".. testcode::\n\n" + textwrap.indent(match.group(1), "   ") in index


def test_every_page_is_in_a_table_of_contents() -> None:
    listed = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"\.\. toctree::\n((?:\n|   .*\n)+)", text):
            for line in block.splitlines():
                entry = line.strip()
                if entry and not entry.startswith(":"):
                    listed.add((page.parent / entry).resolve())
    pages = {p.with_suffix("").resolve() for p in PAGES} - {(DOCS / "index").resolve()}
    assert {str(p.relative_to(DOCS)) for p in pages - listed} == set()
