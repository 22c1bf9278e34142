"""The import graph of the project's packages, read from the source with `ast` (nothing is imported).

Rules (docs/layout.md): the data side (`data_pipeline`) imports neither the library
(`cxrtrek_jax`) nor the applications (`experiments`); the library imports no application;
inside `data_pipeline` and inside `cxrtrek_jax.evaluation` each layer imports only itself and the
layers before it (`LAYERS`); the subpackages import each other without a cycle, and so do the
modules; and the phantom (`data_pipeline.phantom`) is imported only by its own modules and its
declared users. Every import counts, at any level: inside functions, under `if TYPE_CHECKING:`,
relative ones resolved.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "cxrtrek_jax", "experiments")
# The nodes of the cycle check. A module belongs to the longest one its name starts with;
# `cxrtrek_jax` itself stands for the library's top-level modules (config_tree, __init__).
SUBPACKAGES = (
    "data_pipeline",
    "data_pipeline.schema",
    "data_pipeline.reports",
    "data_pipeline.files",
    "data_pipeline.phantom",
    "data_pipeline.construct",
    "data_pipeline.external",
    "data_pipeline.text",
    "data_pipeline.batches",
    "cxrtrek_jax",
    "cxrtrek_jax.model",
    "cxrtrek_jax.train",
    "cxrtrek_jax.hf",
    "cxrtrek_jax.decoding",
    "cxrtrek_jax.evaluation",
    "cxrtrek_jax.evaluation.metrics",
    "cxrtrek_jax.evaluation.scores",
    "cxrtrek_jax.evaluation.runs",
    "cxrtrek_jax.case_report",
    "cxrtrek_jax.cli",
    "cxrtrek_jax.testing",
    "experiments",
)
# Known violations, each waiting on a change in a file being reworked elsewhere (issue 15), with
# that change. Each must still exist (`test_every_exception_is_still_needed`): delete an entry
# once its change lands. Subpackage edges left out of the cycle check:
CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}
# Module edges left out of the module cycle check, likewise.
MODULE_CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}
# The layers of a package, in order: a module of a layer imports only modules of its own layer,
# of the layers before it, and of the package's own face (`__init__`), never a later layer.
LAYERS: dict[str, tuple[str, ...]] = {
    "data_pipeline": ("schema", "reports", "files", "phantom", "construct", "external", "text", "batches"),
    "cxrtrek_jax.evaluation": ("metrics", "scores", "runs"),
}
# Library modules allowed to import `experiments` (none).
LIBRARY_IMPORTS_APPLICATION: dict[str, str] = {}
PHANTOM = "data_pipeline.phantom"
# Who may import the phantom besides its own modules (tests and benchmarks are not scanned).
PHANTOM_USERS = (
    "cxrtrek_jax.cli.data_phantom",  # `cxrtrek data phantom`
    "cxrtrek_jax.train.run",  # the trainer's phantom data preparation (data.kind=phantom)
    "experiments.construct_demo",  # the phantom exported as a hospital would, for `data construct`
)


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's target: `importer` (a module) imports `imported` at `path`:`line`."""

    importer: str
    imported: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} ({self.path}:{self.line}) imports {self.imported}"


def module_name(root: Path, path: Path) -> str:
    """Dotted module name of a source file under `root` (a package is its `__init__`)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(root: Path, packages: Iterable[str] = PACKAGES) -> list[Path]:
    """Every .py file of `packages` under `root`, sorted."""
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    anchor = (module if is_package else module.rpartition(".")[0]).split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def file_imports(root: Path, path: Path, known: set[str]) -> Iterator[Import]:
    """The modules `path` imports anywhere in its body; `from P import m` also counts P.m
    when P.m is one of the `known` modules."""
    module = module_name(root, path)
    where = str(path.relative_to(root))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, where, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            yield Import(module, base, where, node.lineno)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield Import(module, f"{base}.{alias.name}", where, node.lineno)


def project_imports(root: Path, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every import of every module of `packages` under `root`."""
    files = source_files(root, packages)
    known = {module_name(root, p) for p in files}
    return [i for path in files for i in file_imports(root, path, known)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def subpackage(name: str) -> str | None:
    """The `SUBPACKAGES` node a module belongs to, None for a module outside the project."""
    matches = [s for s in SUBPACKAGES if _within(name, s)]
    return max(matches, key=len) if matches else None


def forbidden(imports: Iterable[Import], importer_package: str, imported_package: str) -> list[str]:
    """The imports of a module of `importer_package` that import `imported_package`."""
    return [str(i) for i in imports if _within(i.importer, importer_package) and _within(i.imported, imported_package)]


def subpackage_edges(imports: Iterable[Import]) -> dict[tuple[str, str], Import]:
    """(importer's subpackage, imported subpackage) -> the first import making that edge."""
    edges: dict[tuple[str, str], Import] = {}
    for i in imports:
        a, b = subpackage(i.importer), subpackage(i.imported)
        if a and b and a != b and (a, b) not in CYCLE_EXCEPTIONS:
            edges.setdefault((a, b), i)
    return edges


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph `edges`, or None when it has none."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def cycle_message(imports: Iterable[Import]) -> str | None:
    """A message naming a subpackage cycle and, per edge, one import that makes it; None when acyclic."""
    return _cycle_report("subpackages", subpackage_edges(imports), lambda a, b, i: f"{a} -> {b}: {i}")


def _cycle_report(nodes: str, edges: dict[tuple[str, str], Import], step) -> str | None:
    """"import cycle between `nodes` a -> b -> a:" and one line per edge (`step(a, b, import)`);
    None when `edges` has no cycle."""
    cycle = find_cycle(edges)
    if cycle is None:
        return None
    steps = [f"  {step(a, b, edges[(a, b)])}" for a, b in zip(cycle, cycle[1:])]
    return f"import cycle between {nodes} " + " -> ".join(cycle) + ":\n" + "\n".join(steps)


def module_edges(imports: Iterable[Import]) -> dict[tuple[str, str], Import]:
    """(importer module, imported project module) -> the first import making that edge; a package
    face importing its own modules and a module importing its own package's face are left out
    (Python runs a face before any of its modules, so neither is a cycle that can bite)."""
    modules = {i.importer for i in imports}
    edges: dict[tuple[str, str], Import] = {}
    for i in imports:
        a, b = i.importer, i.imported
        if b not in modules or a == b or _within(a, b) or _within(b, a) or (a, b) in MODULE_CYCLE_EXCEPTIONS:
            continue
        edges.setdefault((a, b), i)
    return edges


def module_cycle_message(imports: Iterable[Import]) -> str | None:
    """A message naming a cycle between modules and, per edge, the import that makes it; None when acyclic."""
    return _cycle_report("modules", module_edges(imports), lambda a, b, i: str(i))


def layer_of(name: str, package: str) -> int | None:
    """The index in `LAYERS[package]` of the layer module `name` belongs to (None: not in a layer)."""
    for index, layer in enumerate(LAYERS[package]):
        if _within(name, f"{package}.{layer}"):
            return index
    return None


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """Imports from a layer of a `LAYERS` package into a later layer of the same package."""
    bad = []
    for i in imports:
        for package in LAYERS:
            a, b = layer_of(i.importer, package), layer_of(i.imported, package)
            if a is not None and b is not None and b > a:
                bad.append(f"{i} (layer {LAYERS[package][a]} may not import layer {LAYERS[package][b]})")
    return bad


def phantom_violations(imports: Iterable[Import]) -> list[str]:
    """Imports of `data_pipeline.phantom` by a module that is neither the phantom nor a declared user."""
    return [str(i) for i in imports
            if _within(i.imported, PHANTOM) and not _within(i.importer, PHANTOM) and i.importer not in PHANTOM_USERS]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = project_imports(ROOT)
    assert len({i.importer for i in found}) > 100, "the scan found too few modules: wrong root?"
    return found


def test_the_data_side_imports_neither_the_library_nor_the_applications(imports):
    bad = forbidden(imports, "data_pipeline", "cxrtrek_jax") + forbidden(imports, "data_pipeline", "experiments")
    assert not bad, "data_pipeline must not import cxrtrek_jax or experiments:\n" + "\n".join(bad)


def test_the_library_imports_no_application(imports):
    found = [i for i in imports if _within(i.importer, "cxrtrek_jax") and _within(i.imported, "experiments")]
    bad = [str(i) for i in found if i.importer not in LIBRARY_IMPORTS_APPLICATION]
    assert not bad, "cxrtrek_jax must not import experiments:\n" + "\n".join(bad)


def test_every_exception_is_still_needed(imports):
    edges = {(subpackage(i.importer), subpackage(i.imported)) for i in imports}
    stale = [f"cycle exception {a} -> {b}" for a, b in CYCLE_EXCEPTIONS if (a, b) not in edges]
    importers = {i.importer for i in imports if _within(i.imported, "experiments")}
    stale += [f"library exception {m}" for m in LIBRARY_IMPORTS_APPLICATION if m not in importers]
    module_pairs = {(i.importer, i.imported) for i in imports}
    stale += [f"module cycle exception {a} -> {b}" for a, b in MODULE_CYCLE_EXCEPTIONS if (a, b) not in module_pairs]
    assert not stale, "no longer needed, delete them from tests/test_import_graph.py: " + ", ".join(stale)


def test_no_cycle_between_subpackages(imports):
    message = cycle_message(imports)
    assert message is None, message


def test_no_cycle_between_modules(imports):
    message = module_cycle_message(imports)
    assert message is None, message


def test_layers_import_only_earlier_layers(imports):
    bad = layer_violations(imports)
    assert not bad, "a layer imports a later one:\n" + "\n".join(bad)


def test_only_declared_users_import_the_phantom(imports):
    bad = phantom_violations(imports)
    assert not bad, f"{PHANTOM} may be imported only by itself and {', '.join(PHANTOM_USERS)}:\n" + "\n".join(bad)


def test_the_checks_catch_planted_violations(tmp_path):
    """The same checks on a planted tree: a function-level, a relative and a from-package import."""
    files = {
        "data_pipeline/__init__.py": "",
        "data_pipeline/reader.py": "def f():\n    from cxrtrek_jax.model import net\n",
        "data_pipeline/schema/__init__.py": "",
        "data_pipeline/schema/records.py": "from data_pipeline.text import tokens\n",
        "data_pipeline/text/__init__.py": "",
        "data_pipeline/text/tokens.py": "def f():\n    from data_pipeline.text.words import w\n",
        "data_pipeline/text/words.py": "from . import tokens\nfrom data_pipeline.schema import records\n",
        "data_pipeline/phantom/__init__.py": "from . import draw\n",
        "data_pipeline/phantom/draw.py": "",
        "cxrtrek_jax/__init__.py": "",
        "cxrtrek_jax/model/__init__.py": "",
        "cxrtrek_jax/model/net.py": "from ..train import step\n",
        "cxrtrek_jax/train/__init__.py": "",
        "cxrtrek_jax/train/step.py": "import experiments.demo\nfrom cxrtrek_jax.model import net\n",
        "cxrtrek_jax/decoding/__init__.py": "",
        "cxrtrek_jax/decoding/script.py": "from data_pipeline import phantom\n",
        "experiments/__init__.py": "",
        "experiments/demo.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    planted = project_imports(tmp_path)
    assert forbidden(planted, "data_pipeline", "cxrtrek_jax") == [
        "data_pipeline.reader (data_pipeline/reader.py:2) imports cxrtrek_jax.model",
        "data_pipeline.reader (data_pipeline/reader.py:2) imports cxrtrek_jax.model.net"]
    assert forbidden(planted, "cxrtrek_jax", "experiments") == [
        "cxrtrek_jax.train.step (cxrtrek_jax/train/step.py:1) imports experiments.demo"]
    message = cycle_message(planted)
    assert message.startswith("import cycle between subpackages cxrtrek_jax.model -> cxrtrek_jax.train -> "
                              "cxrtrek_jax.model:")
    assert "cxrtrek_jax.model.net (cxrtrek_jax/model/net.py:1) imports cxrtrek_jax.train" in message
    assert phantom_violations(planted) == [
        "cxrtrek_jax.decoding.script (cxrtrek_jax/decoding/script.py:1) imports data_pipeline.phantom"]
    assert find_cycle([("a", "b"), ("b", "c")]) is None
    assert layer_violations(planted) == [
        "data_pipeline.schema.records (data_pipeline/schema/records.py:1) imports data_pipeline.text "
        "(layer schema may not import layer text)",
        "data_pipeline.schema.records (data_pipeline/schema/records.py:1) imports data_pipeline.text.tokens "
        "(layer schema may not import layer text)"]
    assert module_cycle_message(planted).startswith(
        "import cycle between modules cxrtrek_jax.model.net -> cxrtrek_jax.train.step -> cxrtrek_jax.model.net:")
    data_side = [i for i in planted if _within(i.importer, "data_pipeline")]
    message = module_cycle_message(data_side)  # a function-level import closes this one
    assert message.startswith("import cycle between modules data_pipeline.schema.records -> "
                              "data_pipeline.text.tokens -> data_pipeline.text.words -> data_pipeline.schema.records:")
    assert "data_pipeline.text.tokens (data_pipeline/text/tokens.py:2) imports data_pipeline.text.words" in message
