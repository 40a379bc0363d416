"""The package's shape: subpackages by the flow, imports only down the flow, complete stage deps."""

from __future__ import annotations

import ast
from pathlib import Path

import imports
import yaml

REPO = Path(__file__).resolve().parents[1]
# The flow, upstream first. Top-level modules (cli, config, errors, atomic) sit outside it.
FLOW = ["data", "model", "train", "study"]
STAGE_ENTRY = {"data": "data.corpus", "features": "data.features", "train": "train.stage",
               "train_tuned": "train.stage", "train_cells": "train.stage",
               "sweep": "train.sweep", "compare": "study.compare", "pretrain": "train.pretrain"}
PKG = imports.PACKAGE


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FLOW else None


def test_every_subpackage_says_its_job_in_one_line():
    # ... and holds nothing else but constants (data: the inputs' normalisation, which validating
    # params reads without importing torch): importing a subpackage runs no other code.
    for name in FLOW:
        tree = ast.parse((imports.SRC / name / "__init__.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc and "\n" not in doc, name
        rest = tree.body[1:]
        assert all(isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant | ast.Tuple)
                   for node in rest), name


def test_no_import_runs_back_up_the_flow():
    backwards = []
    for module in imports.modules():
        here = _subpackage(module)
        for target in imports.imports(module):
            there = _subpackage(target)
            if here and there and FLOW.index(there) > FLOW.index(here):
                backwards.append(f"{module} -> {target}")
            if module.count(".") > 1 and target in (f"{PKG}.cli",):
                backwards.append(f"{module} -> {target}")
    assert backwards == []


def test_the_import_graph_has_no_cycles():
    graph = {m: imports.imports(m) for m in imports.modules()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if node not in state and visit(node, []):
            break
    assert cycle == []


def test_the_import_check_sees_a_backward_import(tmp_path, monkeypatch):
    # The checks above read the source; make sure the reader finds relative and absolute imports.
    assert f"{PKG}.model.registry" in imports.imports(f"{PKG}.train.stage")
    assert f"{PKG}.data.inputs" in imports.imports(f"{PKG}.model.activation_cache")
    assert f"{PKG}.errors" in imports.imports(f"{PKG}.data.splits")


def test_every_stage_lists_exactly_the_package_modules_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, entry in STAGE_ENTRY.items():
        listed = {d for d in stages[name]["deps"] if d.startswith("src/")}
        runs = {imports.source_path(m) for m in imports.stage_modules(entry)}
        assert listed == runs, (name, sorted(runs - listed), sorted(listed - runs))
