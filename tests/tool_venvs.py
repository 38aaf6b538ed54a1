"""The separate tool venvs the converter runs (onnx2tf, onnx2torch): present, or a loud answer.

A test that needs one fails saying how to build it. Only an explicit opt-out
(``MODELPORT_SKIP_ONNX2TF=1`` / ``MODELPORT_SKIP_ONNX2TORCH=1``) turns that into a skip, which pytest
reports with its reason (``-ra``): the suite never passes without having run the conversion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python312() -> str:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "find_python.py"), "3.12"], capture_output=True,
                       text=True, timeout=120)
    return p.stdout.strip()


def _require(python: Path | None, reason: str, opt_out: str, how: str) -> Path:
    """``python`` when the venv exists; else a skip when ``opt_out=1`` is set, else a failure saying ``how``."""
    if python is not None:
        return python
    if os.environ.get(opt_out) == "1":
        pytest.skip(f"{reason} ({opt_out}=1)")
    pytest.fail(f"{reason}: {how}; or set {opt_out}=1 to skip these tests explicitly")


def require_onnx2tf() -> Path:
    """The onnx2tf interpreter (``.venv-onnx2tf``), else fail (or skip when explicitly opted out)."""
    from modelport.conversion.onnx2tf_bridge import onnx2tf_python

    python = onnx2tf_python()
    found = _python312() if python is None else ""
    how = (f"run `make onnx2tf-venv` (it will use {found})" if found else
           "no Python 3.12 was found (scripts/find_python.py looked at PYTHON312, python3.12 on PATH, pyenv, uv and "
           "the system folders): install one (e.g. `pyenv install 3.12`) and run `make onnx2tf-venv`, or set "
           "PYTHON312=/path/to/python3.12")
    return _require(python, "the onnx2tf venv is missing, so ONNX -> TFLite/SavedModel is untested",
                    "MODELPORT_SKIP_ONNX2TF", how)


def require_onnx2torch() -> Path:
    """The onnx2torch interpreter (``.venv-onnx2torch``), else fail (or skip when explicitly opted out)."""
    from modelport.conversion.onnx2torch_bridge import onnx2torch_python

    return _require(onnx2torch_python(), "the onnx2torch venv is missing, so conversion to PyTorch is untested",
                    "MODELPORT_SKIP_ONNX2TORCH",
                    "run `make onnx2torch-venv` (torch 2.13 CPU + onnx2torch 1.5.15)")
