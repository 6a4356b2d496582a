"""The package layout: only `dyadic` is installed at the top level, the rooms exist, and no import
cycle joins dyadic's modules (imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("frontend", "core", "mixed", "backend", "targets", "runtime", "cli")


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _package_dirs() -> dict[str, Path]:
    """Installed package name -> source folder, by pyproject's packages and package-dir."""
    st = _pyproject()["tool"]["setuptools"]
    pkg_dir = st.get("package-dir", {})
    out = {}
    for pkg in st["packages"]:
        # the longest package-dir prefix decides where a package's files are
        base = max((p for p in pkg_dir if pkg == p or pkg.startswith(p + ".")), key=len, default=None)
        if base is None:
            out[pkg] = ROOT / pkg.replace(".", "/")
        else:
            out[pkg] = ROOT / pkg_dir[base] / pkg[len(base) + 1:].replace(".", "/")
    return out


def test_only_dyadic_is_installed_at_the_top_level():
    pkgs = _package_dirs()
    assert {p.split(".")[0] for p in pkgs} == {"dyadic"}
    assert set(_pyproject()["tool"]["setuptools"].get("package-data", {})) <= set(pkgs)
    for pkg, d in pkgs.items():
        assert (d / "__init__.py").is_file(), f"{pkg}: {d} has no __init__.py"
    # every folder with Python modules under the package roots is listed (nothing silently left out)
    for pkg in ("dyadic", "dyadic.passes", "dyadic.models"):
        for init in pkgs[pkg].rglob("__init__.py"):
            rel = init.parent.relative_to(pkgs[pkg])
            name = ".".join((pkg, *rel.parts)) if rel.parts else pkg
            assert name in pkgs, f"{name} ({init.parent}) is not in pyproject's packages"


def test_rooms_and_a_small_top_level():
    top = sorted(p.name for p in (ROOT / "dyadic").iterdir() if p.name != "__pycache__")
    for room in ROOMS:
        assert (ROOT / "dyadic" / room / "__init__.py").is_file(), room
    assert set(top) <= {"__init__.py", "pipeline.py", "compiler.py", "ops", *ROOMS}, top
    assert len(top) <= 11


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, d in _package_dirs().items():
        for f in d.glob("*.py"):
            mods[pkg if f.name == "__init__.py" else f"{pkg}.{f.stem}"] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The dyadic modules `name` imports anywhere in its file. `from P import x` imports P.x if that is a
    module, else P (a package means its __init__)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:  # `import dyadic.x.y` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly-connected components of more than one module (Tarjan)."""
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def _a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One import path around a component, for the failure message."""
    start, inside = comp[0], set(comp)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & inside):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return comp


def test_no_import_cycles():
    mods = _modules()
    assert "dyadic.compiler" in mods and "dyadic.passes.quantize_graph" in mods and "dyadic.models" in mods
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert graph["dyadic.compiler"], "the import parser found nothing"
    sccs = _cycles(graph)
    assert not sccs, "import cycles:\n" + "\n".join(" -> ".join(_a_cycle(graph, c)) for c in sccs)


def test_compile_names_no_target():
    src = (ROOT / "dyadic" / "compiler.py").read_text()
    for word in ('"host"', '"arm"', '"cuda"', "runs_here", ".kind", "deploy"):
        assert word not in src, word
