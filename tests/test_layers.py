"""The package's layering, read from the source with ``ast`` (every import, the lazy ones inside
functions included): no import cycle anywhere; every module in exactly one layer of ``LAYERS`` and
no layer importing one above it; the model layer does not reach up into the studies, the report or
the CLI; the data layer does not reach into models, studies or the report; and no module takes
another module's private (underscore) names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vpeft"

# The layers, top to bottom: a module may import its own layer and those below it, never one
# above. An entry is a module, or a package with every module under it (``.*``). A new module
# must be placed here (the test fails on an unplaced one): where it does not fit, move the code.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("vpeft.cli", "vpeft.__main__")),
    ("steps", ("vpeft.check", "vpeft.export", "vpeft.gpu_slots", "vpeft.demo", "vpeft.demo.robustness",
               "vpeft.robustness.pipeline")),  # verb implementations beyond the protocol's own
    ("protocol/report", ("vpeft.protocol", "vpeft.requests", "vpeft.report.*", "vpeft.analysis.*",
                         "vpeft.robustness.tables")),
    ("train", ("vpeft.train.*",)),
    ("models/methods", ("vpeft.models.*", "vpeft.methods.*", "vpeft.robustness.zeroshot",
                        "vpeft.robustness.wise")),
    # the composed config is checked against the schema and the registries below it (the data
    # formats type their source blocks)
    ("config", ("vpeft.config", "vpeft.jobs", "vpeft.kinds.*", "vpeft.calibration")),
    # the demo's raw-data generators write what the data layer reads, and nothing above it
    ("data", ("vpeft.data.*", "vpeft.robustness", "vpeft.robustness.imagenet",
              "vpeft.robustness.inputs", "vpeft.robustness.shifts", "vpeft.demo.synthetic",
              "vpeft.demo.manyshot")),
    ("layout", ("vpeft", "vpeft.layout", "vpeft.schema", "vpeft.io", "vpeft.errors",
                "vpeft._compat", "vpeft.runs", "vpeft.plugins", "vpeft.hparams",
                "vpeft.machine")),
]

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


def placed(module: str, entry: str) -> bool:
    return within(module, entry[:-2]) if entry.endswith(".*") else module == entry


def layer_of(module: str, layers=LAYERS) -> int:
    """The index (0: top) of the one layer ``module`` is placed in."""
    found = [i for i, (_, entries) in enumerate(layers) for e in entries if placed(module, e)]
    if len(found) != 1:
        raise LookupError(f"{module}: placed {len(found)} times in LAYERS; place it exactly once")
    return found[0]


def import_graph(sources=SOURCES, src: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {vpeft module it imports: first line}; an imported name resolves to the longest
    module it names (``from vpeft.train.loop import Run`` -> vpeft.train.loop)."""
    modules = {module_name(p, src) for p in sources}
    graph: dict[str, dict[str, int]] = {}
    for path in sources:
        here = module_name(path, src)
        edges = graph.setdefault(here, {})
        for line, module, name in imports(path, src):
            if name is not None:
                continue  # its module.name twin is listed too
            while module not in modules and "." in module:
                module = module.rpartition(".")[0]
            if module in modules and module != here:
                edges.setdefault(module, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: set[str] = set()
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:  # breadth-first, inside the group, back to the start
            path = paths.pop(0)
            nxt = [n for n in sorted(graph[path[-1]]) if n in group]
            if start in nxt:
                found.append(path + [start])
                break
            for n in nxt:
                if n not in seen:
                    seen.add(n)
                    paths.append(path + [n])
    return sorted(found)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in src/vpeft:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_module_is_placed_in_exactly_one_layer():
    unplaced = []
    for path in SOURCES:
        try:
            layer_of(module_name(path))
        except LookupError as err:
            unplaced.append(str(err))
    assert not unplaced, "\n".join(unplaced)


def test_no_layer_imports_one_above_it():
    bad = []
    for module, edges in import_graph().items():
        for imported, line in edges.items():
            if layer_of(imported) < layer_of(module):
                bad.append(f"{module}:{line} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                           f"({LAYERS[layer_of(imported)][0]}, above it)")
    assert not bad, "imports against the layering " + " -> ".join(n for n, _ in LAYERS) + \
        ":\n" + "\n".join(sorted(bad))


def test_the_layer_checks_can_fail(tmp_path):
    """A cycle is found and named, a module in no layer (or two) is refused, and an import reaches
    the graph however it is written."""
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == \
        [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
    with pytest.raises(LookupError, match="placed 0 times"):
        layer_of("vpeft.newthing")
    with pytest.raises(LookupError, match="placed 2 times"):
        layer_of("vpeft.x.y", [("top", ("vpeft.x.*",)), ("bottom", ("vpeft.x.y",))])
    assert layer_of("vpeft.train.loop") < layer_of("vpeft.models.backbone") < layer_of("vpeft.data.vtab")
    pkg = tmp_path / "vpeft" / "train"
    pkg.mkdir(parents=True)
    (tmp_path / "vpeft" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "loop.py").write_text("def f():\n    from vpeft.train.published import switches\n")
    (pkg / "published.py").write_text("from .loop import f\n")
    sources = sorted((tmp_path / "vpeft").rglob("*.py"))
    graph = import_graph(sources, tmp_path)
    assert graph["vpeft.train.loop"] == {"vpeft.train.published": 2}
    assert cycles(graph) == [["vpeft.train.loop", "vpeft.train.published", "vpeft.train.loop"]]


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
