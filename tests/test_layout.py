"""The package's layout holds what STYLE.md promises: dependencies point one way (no import circle among
convnext/ modules, counting imports inside functions too), no private name is used outside its module,
function-local imports only for the heavy optional dependencies named here, no argparse outside convnext/cli/,
and one atomic writer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "convnext"

# A function-local import is allowed only for these, each for the reason given (STYLE.md principle 15).
LOCAL_IMPORTS = {
    "matplotlib": "~0.3 s to import; only curves.png and the roadmap chart need it",
    "matplotlib.pyplot": "after matplotlib.use('Agg'), in the same functions",
    "onnx": "optional (the export extra)",
    "onnxruntime": "optional (the export extra)",
    "timm": "~0.4 s to import; only a benchmark comparison needs the peer model",
    "torchvision": "~0.5 s to import; only a benchmark comparison with a torchvision peer needs it",
    "timm.data": "~0.4 s to import; only the ImageNet-22K class names need it outside training",
    "convnext.kernels.dwconv_ln_triton": "imports triton, an optional dependency, at import time",
    "convnext.kernels.mlp_triton": "imports triton, an optional dependency, at import time",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(node: ast.ImportFrom | ast.Import) -> list[str]:
    """The convnext modules an import statement loads (`from convnext import engine` is the module engine)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level or not node.module or node.module.split(".")[0] != "convnext":
        return []
    out = []
    for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.append(sub if sub in MODULES else node.module)
    return [m for m in out if m in MODULES]


def _imports(path: Path) -> list[tuple[ast.AST, bool]]:
    """Every import statement in the file, with whether it sits inside a function."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return [(n, id(n) in local) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def graph() -> dict[str, set[str]]:
    return {name: {m for node, _ in _imports(path) for m in _resolve(node) if m != name}
            for name, path in MODULES.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(g.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return None

    for u in sorted(g):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    g = graph()
    assert "convnext.model" in g and "convnext.engine" in g["convnext.train"]  # the graph is really read
    cycle = find_cycle(g)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_model_imports_nothing_above_it():
    # layers.py (what V1 and V2 share) sits below both models; model.py's variant table builds V2's model too
    assert graph()["convnext.layers"] <= {"convnext.errors"}
    assert graph()["convnext.model_v2"] <= {"convnext.dwconv", "convnext.layers"}
    assert graph()["convnext.model"] <= {"convnext.dwconv", "convnext.errors", "convnext.layers", "convnext.model_v2"}
    for low in ("convnext.checkpoint", "convnext.convert"):  # file I/O and the pure converters
        assert not graph()[low] & {"convnext.weights", "convnext.factory", "convnext.engine", "convnext.train"}


def test_no_private_name_used_across_modules():
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node, _ in _imports(path):
            if isinstance(node, ast.ImportFrom) and _resolve(node):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{name}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name in MODULES}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                bad.append(f"{name}:{n.lineno}: {n.value.id}.{n.attr}")
    assert not bad, bad


def test_function_local_imports_only_for_heavy_optional_dependencies():
    bad = []
    for name, path in MODULES.items():
        for node, local in _imports(path):
            if not local:
                continue
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module == "convnext.kernels":
                targets = [f"convnext.kernels.{a.name}" for a in node.names]
            bad += [f"{name}:{node.lineno}: {t}" for t in targets if t not in LOCAL_IMPORTS]
    assert not bad, bad


def test_argparse_only_in_the_command_line():
    users = [name for name, path in MODULES.items()
             if any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
                    for n, _ in _imports(path))]
    assert users and all(u.startswith("convnext.cli") for u in users), users


@pytest.mark.parametrize("call", ["os.replace(", "os.rename(", "tempfile.mkstemp(", "torch.save("])
def test_one_atomic_writer(call):
    """Files are written through checkpoint.atomic_write only (temp file, fsync, rename)."""
    users = [name for name, path in MODULES.items() if call in path.read_text()]
    assert set(users) <= {"convnext.checkpoint"}, users


def test_no_reference_to_files_outside_the_repository():
    for name, path in MODULES.items():
        text = path.read_text()
        for ref in ("paper.md", "performance.md", "downstream.md", "/work/", "shared/reference"):
            assert ref not in text, f"{name} refers to {ref}"
