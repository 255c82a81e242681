"""The package's imports point down: the engine (``_core``) below the faces, the faces below
the public modules."""

from __future__ import annotations

import ast
from pathlib import Path

import tornado_safestream

PACKAGE = Path(tornado_safestream.__path__[0])
#: The private subpackages, lowest first: each may import only from those before it.
LAYERS = ("_core", "_websocket", "_http")


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """The package modules that ``path`` imports when it runs (not under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for_type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for_type_checking.update(id(inner) for inner in ast.walk(node))
    here = path.parent.relative_to(PACKAGE.parent).parts  # ("tornado_safestream", "_core")
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in for_type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - (node.level - 1)])
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    found = [(lineno, name) for lineno, name in found if name.split(".")[0] == PACKAGE.name]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


class TestLayout:
    def test_the_layers_exist(self) -> None:
        for layer in LAYERS:
            assert (PACKAGE / layer / "__init__.py").is_file(), layer

    def test_imports_point_down(self) -> None:
        wrong = []
        for layer in LAYERS:
            allowed = LAYERS[: LAYERS.index(layer) + 1]
            for path in sorted((PACKAGE / layer).glob("*.py")):
                for lineno, module in _runtime_imports(path):
                    if _layer(module) not in allowed:
                        wrong.append(f"{path.relative_to(PACKAGE)}:{lineno} imports {module}")
        assert not wrong, wrong

    def test_the_finder_sees_imports(self) -> None:
        # The check above is only as good as the parser: it must see the imports there are.
        imports = _runtime_imports(PACKAGE / "_http" / "_stream.py")
        assert any(module == "tornado_safestream._core._channel" for _, module in imports)
        assert any(module == "tornado_safestream._http._mixin" for _, module in imports)
