"""Imports run one way: a package imports only packages in lower layers (docs/architecture.md).

Every module under src/ddnn is parsed, imports inside functions included, so a lazy import that
runs against the flow is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ddnn

ROOT = Path(ddnn.__file__).parent

# Lowest first. A package may import its own modules and any package in a lower layer; packages
# in the same layer never import each other (the runtime and training stay apart).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "logs", "names", "net", "stats"),
    ("config", "tables"),
    ("emulation",),
    ("data",),
    ("nn",),
    ("model",),
    ("evaluate",),
    ("store",),
    ("export",),
    ("runtime", "train"),
    ("planning", "agent"),
    ("distributed", "rollout"),
    ("bench",),
    ("cli",),
)
RANK = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str:
    """ddnn.model.spec -> model; ddnn.cli -> cli; ddnn -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every ddnn import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # `from ddnn import x` and `from . import x` name a module: ddnn.x, <package>.x
            expand = node.module is None or name == "ddnn"
            names = [f"{name}.{a.name}" for a in node.names] if expand else [name]
            found += [(node.lineno, n) for n in names]
    ours = [(line, name) for line, name in found if name == "ddnn" or name.startswith("ddnn.")]
    return sorted(ours)


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {_package(_module_name(p)) for p in _modules()}
    assert packages - RANK.keys() == set(), "add new packages to LAYERS and docs/architecture.md"


def test_no_package_imports_a_package_above_or_beside_it():
    wrong = []
    for path in _modules():
        mine = _package(_module_name(path))
        for line, name in _imported(path):
            theirs = _package(name)
            if theirs != mine and RANK.get(theirs, -1) >= RANK[mine]:
                rel = path.relative_to(ROOT.parent)
                wrong.append(f"{rel}:{line} imports {name} ({mine} may not import {theirs})")
    assert wrong == [], "imports against the layer order:\n" + "\n".join(wrong)


def test_the_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "ddnn"
    (fake / "nn").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "nn" / "blocks.py").write_text(
        "from . import binary\n\ndef f():\n    from ..model import spec\n    import ddnn.store\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", fake)
    imported = _imported(fake / "nn" / "blocks.py")
    assert imported == [(1, "ddnn.nn.binary"), (4, "ddnn.model"), (5, "ddnn.store")]
