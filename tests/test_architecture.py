"""The house rules of bench/ (docs/architecture.md, "How the code is laid out"), read from the code's own imports:
which wing may import which, who talks to MLflow, and which modules stay free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"

# wing (or top-level module) → the bench parts it may import; everything is a part: "run", "eval", "tracking",
# "report", "tools", "cli", or a top-level module ("config", "schema", ...)
TOP = {"config", "schema", "encoder_registry", "storage", "typed_toml", "data", "devices"}
MAY_IMPORT = {
    "schema": {"encoder_registry"},  # the encoders' table is part of the schema, re-exported by it
    "encoder_registry": set(),
    "storage": set(),
    "typed_toml": set(),
    "config": {"schema", "typed_toml", "data"},
    "data": {"storage"},
    "devices": {"config", "storage"},
    "tracking": {"schema", "storage"},
    "eval": {"eval", *TOP},
    "report": {"report", "tracking", "schema", "config"},
    "run": {"run", "eval", "tracking", *TOP},
    "tools": {"tools", "run", "eval", "tracking", *TOP},
    "cli": {"cli", "run", "eval", "tracking", "report", "tools", *TOP},
    "api": {"run", "tools", *TOP},
    "__main__": {"cli"},
    "__init__": {"api"},
}


def part_of(module: str) -> str:
    """bench.run.cell → run; bench.schema → schema."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def bench_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(BENCH.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, at the top or inside a function, absolute."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from bench import tracking`
    return found


MODULES = bench_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_wing_imports_only_what_its_rule_allows(module):
    own = part_of(module) if module != "bench" else "__init__"
    allowed = MAY_IMPORT[own] | {own}
    used = {part_of(m) for m in imports(MODULES[module], module) if m.startswith("bench.") and m in MODULES}
    assert used <= allowed, f"{module} imports {sorted(used - allowed)}; its wing may import {sorted(allowed)}"


def test_only_the_tracking_wing_imports_mlflow():
    talkers = {m for m, path in MODULES.items() if any(i.split(".")[0] == "mlflow" for i in imports(path, m))}
    assert talkers and all(m.startswith("bench.tracking") for m in talkers), sorted(talkers)


def test_the_rules_cover_every_part():
    assert {part_of(m) for m in MODULES if m != "bench"} <= set(MAY_IMPORT)


def test_a_rule_that_is_broken_is_seen(tmp_path):
    """The checker itself: an eval module that imports the run wing is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bench.run.cell import execute\n")
    used = {part_of(m) for m in imports(bad, "bench.eval.bad") if m.startswith("bench.") and m in MODULES}
    assert "run" in used and not used <= MAY_IMPORT["eval"] | {"eval"}


def test_the_report_side_and_the_config_never_import_torch():
    """`bench report` and `bench list` read the store and bench.toml only: they load without torch."""
    modules = (
        "bench.report.files, bench.report.render, bench.report.page, bench.report.tidy, bench.schema, bench.config, "
        "bench.cli.common"
    )
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
