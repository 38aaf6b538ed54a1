"""ONNX -> TFLite / SavedModel through onnx2tf, run as a tool in its own Python >= 3.12 venv.

onnx2tf 2.x needs Python >= 3.12 and pins onnx, onnxruntime, numpy and protobuf versions that
cannot share a process (or a venv) with the converter's stack, so it runs as a subprocess of a
separate interpreter (``.venv-onnx2tf``, built by ``make onnx2tf-venv``). Its output is then
loaded and checked for parity by the converter like any other result.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from modelport.errors import FailedPrecondition, Unimplemented

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-onnx2tf" / "bin" / "python"


def onnx2tf_python(configured: str = "") -> Path | None:
    """The interpreter that has onnx2tf: the configured one, else ``.venv-onnx2tf`` if present."""
    p = Path(configured) if configured else DEFAULT_PYTHON
    return p if p.is_file() and os.access(p, os.X_OK) else None


def onnx2tf_version(python: Path | None) -> str:
    """onnx2tf's version from the venv's package metadata (no subprocess), or "absent"."""
    if python is None:
        return "absent"
    for dist in python.parent.parent.glob("lib/python3*/site-packages/onnx2tf-*.dist-info"):
        return dist.name.removeprefix("onnx2tf-").removesuffix(".dist-info")
    return "unknown"


def unimplemented(target: str) -> Unimplemented:
    return Unimplemented(
        f"ONNX -> {target} needs onnx2tf, which is not installed for this converter: onnx2tf requires "
        "Python >= 3.12 and pins onnx/onnxruntime/numpy/protobuf versions that conflict with the converter's "
        "Python 3.11 / TensorFlow 2.21 stack, so it runs from its own venv (build it with `make onnx2tf-venv` "
        "or set the converter's onnx2tf_python setting). Or convert from the Keras, SavedModel or TFLite source",
        details={"missing": "onnx2tf"},
    )


def run_onnx2tf(python: Path, onnx_path: Path, input_names: list[str], target: str, workdir: Path,
                fixed_batch: int = 0, timeout: float = 1800) -> Path:
    """Convert with onnx2tf; returns the float32 .tflite file or a clean SavedModel folder."""
    # A private copy: onnx2tf rewrites its input file in place (it names unnamed ops), which must
    # never reach the content-addressed blob. It also names its outputs after the input file.
    from modelport.onnx_files import copy_model

    link = copy_model(onnx_path, workdir)  # external data files, if any, copied beside it
    out = workdir / "onnx2tf-out"
    cmd = [str(python), "-m", "onnx2tf", "-i", str(link), "-o", str(out), "-osd", "-n"]
    if input_names:
        cmd += ["-kat", *input_names]  # keep the model's own layout (no NCHW -> NHWC transpose)
    if target == "savedmodel":
        cmd.append("-fdosm")
    if fixed_batch:
        cmd += ["-b", str(fixed_batch)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONNOUSERSITE": "1"}
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"onnx2tf did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "Error" in ln or "error" in ln]
        why = lines[-1].strip()[:400] if lines else f"exit code {proc.returncode}"
        raise FailedPrecondition(f"onnx2tf could not convert this model to {target}: {why}",
                                 details={"tool": "onnx2tf"})
    if target == "tflite":
        tfl = out / "model_float32.tflite"
        if not tfl.is_file():
            raise FailedPrecondition("onnx2tf finished but wrote no float32 TFLite file")
        return tfl
    sm = workdir / "savedmodel"
    sm.mkdir()
    if not (out / "saved_model.pb").is_file():
        raise FailedPrecondition("onnx2tf finished but wrote no SavedModel")
    for name in ("saved_model.pb", "variables", "assets", "fingerprint.pb"):
        if (out / name).exists():
            os.replace(out / name, sm / name)
    return sm
