"""The layering of DESIGN.md holds, and a deliberate upward import is caught (import-linter contracts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modelport", "converter_svc", "optimizer_svc", "inference_svc", "gateway")


def _lint(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable}: run `make venv` (dev extra)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(exe), "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy_tree(dst: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.md"))


def test_the_contracts_hold_on_this_tree():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 kept, 0 broken" in res.stdout


@pytest.mark.parametrize(("file", "line", "contract"), [
    ("modelport/errors.py", "import gateway.launcher", "gateway above the services"),
    ("converter_svc/plan.py", "import inference_svc.batching", "the services independent"),
    ("inference_svc/stats.py", "import tensorflow", "never imports TensorFlow"),
    ("modelport/parity.py", "import grpc", "domain modules never import grpc"),
    ("optimizer_svc/selection.py", "import modelport.v1.jobs_pb2", "never import the protobuf messages"),
    ("modelport/conversion/convert.py", "from modelport.v1 import converter_pb2", "never import the protobuf messages"),
])
def test_a_deliberate_violation_breaks_its_contract(tmp_path, file, line, contract):
    _copy_tree(tmp_path)
    target = tmp_path / file
    target.write_text(target.read_text() + f"\n{line}  # deliberate violation\n")
    res = _lint(tmp_path)
    assert res.returncode != 0, res.stdout
    broken = [ln for ln in res.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(contract in b for b in broken) or contract in res.stdout.split("Broken contracts")[-1], res.stdout
