"""The architecture's rules, checked: typed contracts, validated configs, one run loader, dependencies that
point down (no import cycles, no internal imports hidden in functions to dodge one), modules of readable size."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from polymodal.contracts import Predictor
from polymodal.errors import PolymodalError
from polymodal.runs import load_run, run_kind
from polymodal.training.config import FitConfig, GenerationConfig

PACKAGE = Path(__file__).resolve().parents[1] / "polymodal"
GOLDEN_RUN = Path(__file__).resolve().parent / "data" / "golden" / "run"
MAX_LINES = 450
# function-local imports of polymodal modules allowed only for optional heavy external packages: these
# modules load fastapi/uvicorn (the `serve` extra) only when a server starts
LAZY_FOR_OPTIONAL = {("polymodal/serve/cli.py", "polymodal.serve.app")}


@pytest.mark.parametrize("setting, value, message", [
    ("sampler", "weigthed", "--sampler must be one of shuffle, weighted, not 'weigthed'"),
    ("loss", "hinge", "--loss must be one of cross_entropy, focal"),
    ("on_bad_rows", "ignore", "--on-bad-rows must be one of error, skip"),
    ("loss_weighting", "learned", "--loss-weighting must be one of uniform, fixed, uncertainty"),
    ("tune_threshold", "auc", "--tune-threshold must be one of f1, balanced_accuracy"),
])
def test_fit_config_rejects_unknown_choices_from_python(setting, value, message):
    with pytest.raises(PolymodalError, match=message):
        FitConfig(label="y", **{setting: value})


def test_generation_config_rejects_unknown_choices():
    with pytest.raises(PolymodalError, match="--vocab must be one of train, full"):
        GenerationConfig(label="caption", vocab="all")
    with pytest.raises(PolymodalError, match="task must be one of caption, vqa-open"):
        GenerationConfig(label="caption", task="summarise")


def test_load_run_gives_a_predictor_and_refuses_what_is_not_a_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN_RUN, run)
    p = load_run(run)
    assert isinstance(p, Predictor) and p.kind == "table" and run_kind(run) == "table"
    with pytest.raises(PolymodalError, match="config.json is missing"):
        load_run(tmp_path / "nothing")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "kind": "hologram"}))
    with pytest.raises(PolymodalError, match="unknown run kind 'hologram'"):
        load_run(run)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _internal_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of `from polymodal... import` / relative imports inside functions, except a package
    __init__'s lazy re-export of its own children."""
    tree = ast.parse(path.read_text())
    out = []
    pkg = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("polymodal")):
                    mod = node.module or ""
                    if path.name == "__init__.py" and fn.name == "__getattr__" and mod.startswith(pkg):
                        continue
                    out.append((node.lineno, mod))
    return out


def test_no_internal_imports_inside_functions():
    found = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {mod}" for p in _modules()
             for line, mod in _internal_local_imports(p)
             if (str(p.relative_to(PACKAGE.parent)), mod) not in LAZY_FOR_OPTIONAL]
    assert not found, "internal imports inside functions (import at module top; fix the layering):\n" + \
        "\n".join(found)


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (Tarjan's strongly connected components over polymodal's modules)."""
    names = {}
    for p in _modules():
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    edges: dict[str, set[str]] = {m: set() for m in names}
    for mod, p in names.items():
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polymodal"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                edges[mod].update(t for t in targets if t in names and t != mod)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in names:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_stay_readable():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along a real concept): {long}"
