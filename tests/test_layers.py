"""The package's layering, read from the source with ``ast`` (every import, the lazy ones inside
functions included): the model layer does not reach up into the studies, the report or the CLI;
the data layer does not reach into models, studies or the report; and no module takes another
module's private (underscore) names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vpeft"

# layer (a subpackage or module of vpeft) -> the vpeft modules it must never import
FORBIDDEN = {
    "vpeft.models": ("vpeft.robustness", "vpeft.report", "vpeft.analysis", "vpeft.cli"),
    "vpeft.data": ("vpeft.models", "vpeft.robustness", "vpeft.report"),
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path, src: Path = SRC) -> str:
    """The package a relative import in ``path`` starts from."""
    name = module_name(path, src)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(path: Path, src: Path = SRC) -> list[tuple[int, str, str | None]]:
    """(line, imported vpeft module, imported name or None) for every import in ``path``.
    ``from vpeft.a import b`` gives ('vpeft.a', 'b') and, since b may be a module, ('vpeft.a.b', None)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "vpeft"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path, src).split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "vpeft":
                continue
            for alias in node.names:
                found.append((node.lineno, module, alias.name))
                found.append((node.lineno, f"{module}.{alias.name}", None))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_sources_found():
    names = {module_name(p) for p in SOURCES}
    assert {"vpeft.cli", "vpeft.models.backbone", "vpeft.data.vtab", "vpeft.robustness.pipeline"} <= names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    bad = []
    for path in SOURCES:
        if not within(module_name(path), layer):
            continue
        for line, module, _ in imports(path):
            bad += [f"{path.relative_to(SRC)}:{line} imports {module}"
                    for above in FORBIDDEN[layer] if within(module, above)]
    assert not bad, f"{layer} must not import {FORBIDDEN[layer]}:\n" + "\n".join(sorted(set(bad)))


def test_no_private_names_across_modules():
    """``from vpeft.x import _name`` only within the module itself. A module whose own name starts
    with an underscore (vpeft._compat) is the package's shared shim, and its public names are
    meant for every vpeft module; its private names are not."""
    bad = []
    for path in SOURCES:
        here = module_name(path)
        for line, module, name in imports(path):
            if name is None or module == here:
                continue
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{path.relative_to(SRC)}:{line} imports {name} from {module}")
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_no_private_attributes_of_vpeft_modules():
    """``from vpeft.data import vtab; vtab._helper(...)``: the same reach into a private name."""
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vpeft":
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name.split(".")[0]: a.name for a in node.names
                                if a.name.split(".")[0] == "vpeft"})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, "private attributes of vpeft modules used:\n" + "\n".join(bad)


def test_the_checks_see_lazy_and_relative_imports(tmp_path):
    """The walker finds imports inside functions and resolves relative ones (so a lazy import
    cannot slip past the layering)."""
    pkg = tmp_path / "vpeft" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    probe = pkg / "probe.py"
    probe.write_text("def f():\n    from ..robustness import zeroshot\n    import vpeft.report.render\n"
                     "    from vpeft.data.vtab import _private\n")
    found = imports(probe, tmp_path)
    assert (2, "vpeft.robustness.zeroshot", None) in found
    assert (3, "vpeft.report.render", None) in found
    assert (4, "vpeft.data.vtab", "_private") in found
