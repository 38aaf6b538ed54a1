"""ONNX -> PyTorch through onnx2torch, run as a tool in its own venv (``.venv-onnx2torch``).

torch (the CPU build, ~1 GB) and onnx2torch stay out of the converter's venv and images: the converter
runs ``onnx2torch_tool.py`` (a script with no modelport imports) under that venv's interpreter, once to
convert and export a ``torch.export`` program (``.pt2``), and once per parity check to run it.
``TorchModel`` is the converted program as a ``LoadedModel`` for the parity check; its input/output
specs come from the ``modelport.json`` the tool stores inside the ``.pt2`` archive (read without torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from modelport import formats
from modelport.conversion.models import LoadedModel, tensor_spec
from modelport.errors import FailedPrecondition, InvalidArgument, Unimplemented
from modelport.job_records import ModelInfo

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-onnx2torch" / "bin" / "python"
TOOL = Path(__file__).resolve().parent / "onnx2torch_tool.py"
UNSUPPORTED_EXIT = 3
META = "modelport.json"


def onnx2torch_python(configured: str = "") -> Path | None:
    """The interpreter that has onnx2torch: the configured one, else ``.venv-onnx2torch`` if present."""
    p = Path(configured) if configured else DEFAULT_PYTHON
    return p if p.is_file() and os.access(p, os.X_OK) else None


def tool_versions(python: Path | None) -> dict[str, str]:
    """torch and onnx2torch versions from the venv's package metadata (no subprocess)."""
    out = {"onnx2torch": "absent", "torch": "absent"}
    if python is None:
        return out
    for name in out:
        for dist in python.parent.parent.glob(f"lib/python3*/site-packages/{name}-*.dist-info"):
            out[name] = dist.name.removeprefix(f"{name}-").removesuffix(".dist-info")
    return out


def unimplemented() -> Unimplemented:
    return Unimplemented(
        "conversion to pytorch needs onnx2torch and torch, which are not installed for this converter: they run "
        "from their own venv (build it with `make onnx2torch-venv`, or set the converter's onnx2torch_python "
        "setting to a Python with torch and onnx2torch)",
        details={"missing": "onnx2torch"},
    )


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "CUDA_VISIBLE_DEVICES": "",
            "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _tool(python: Path, args: list[str], timeout: float) -> tuple[int, dict, str]:
    """(exit code, the tool's JSON answer or {}, stderr tail)."""
    try:
        proc = subprocess.run([str(python), "-I", str(TOOL), *args], env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"onnx2torch_tool {args[0]} did not finish within {timeout:g}s") from None
    answer = {}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            answer = json.loads(lines[-1])
        except json.JSONDecodeError:
            answer = {}
    return proc.returncode, answer, proc.stderr[-2000:]


def _why(answer: dict, stderr: str, code: int) -> str:
    if answer.get("error"):
        return str(answer["error"])
    lines = [ln.strip() for ln in stderr.splitlines() if "Error" in ln or "error" in ln]
    return lines[-1][:400] if lines else f"exit code {code}"


def run_onnx2torch(python: Path, onnx_path: Path, out: Path, fixed_batch: int = 0,
                   timeout: float = 1800) -> dict[str, str]:
    """Convert an ONNX file to a torch.export program at ``out``; returns notes for the result."""
    args = ["convert", str(onnx_path), str(out)] + (["--fixed-batch", str(fixed_batch)] if fixed_batch else [])
    code, answer, stderr = _tool(python, args, timeout)
    if code == UNSUPPORTED_EXIT and answer.get("unsupported"):
        ops = answer["unsupported"]
        raise FailedPrecondition(
            f"onnx2torch cannot convert these ONNX operators to PyTorch: {', '.join(ops)}; the model uses "
            "operations onnx2torch has no converter for (replace them in the source model, or convert to onnx "
            "or tflite instead)",
            details={"unsupported_ops": ",".join(ops)},
        )
    if code != 0 or not out.is_file():
        raise FailedPrecondition(f"onnx2torch could not convert this model to PyTorch: {_why(answer, stderr, code)}",
                                 details={"tool": "onnx2torch"})
    return {"tool": f"onnx2torch {answer.get('onnx2torch', '')}".strip(), "torch": str(answer.get("torch", "")),
            "export": str(answer.get("export", "")),
            "load": "torch.export.load(path).module()(*inputs), inputs in the order of ModelInfo.inputs"}


def read_meta(path: Path) -> dict:
    """The ``modelport.json`` stored in a .pt2 archive (names, dtypes, shapes of inputs and outputs)."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/extra/" + META)), None)
            if name is None:
                raise InvalidArgument("the PyTorch program carries no modelport.json; only programs written by "
                                      "modelport's converter can be checked")
            return json.loads(z.read(name))
    except (zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise InvalidArgument(f"the PyTorch program could not be read: {e}") from None


class TorchModel(LoadedModel):
    """A torch.export program run by the onnx2torch venv (for parity; this process never imports torch)."""

    format = formats.PYTORCH

    def __init__(self, path: Path, python: str = ""):
        super().__init__(path)
        self.python = onnx2torch_python(python)
        if self.python is None:
            raise unimplemented()
        self.meta = read_meta(self.path)
        self.inputs = [tensor_spec(s["name"], s["dtype"], s["shape"]) for s in self.meta["inputs"]]
        self.outputs = [tensor_spec(s["name"], s["dtype"], s["shape"]) for s in self.meta["outputs"]]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All samples in one tool run (torch's import is the cost); a pinned batch runs chunk by chunk."""
        step = self.fixed_batch
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        if step and n % step:
            raise InvalidArgument(f"the pytorch model has a fixed batch size of {step}; give a multiple of {step} "
                                  f"samples (got {n})")
        folder = Path(tempfile.mkdtemp(prefix="torch-run-"))
        try:
            np.savez(folder / "in.npz", **inputs)
            if not step or step == n:
                return self._tool_run(folder, folder / "in.npz")
            parts = []
            for i in range(0, n, step):
                np.savez(folder / f"in{i}.npz", **{k: v[i:i + step] for k, v in inputs.items()})
                parts.append(self._tool_run(folder, folder / f"in{i}.npz"))
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _tool_run(self, folder: Path, feeds: Path) -> dict[str, np.ndarray]:
        out = folder / "out.npz"
        code, answer, stderr = _tool(self.python, ["run", str(self.path), str(feeds), str(out)], 1800)
        if code != 0 or not out.is_file():
            raise RuntimeError(f"the PyTorch program failed: {_why(answer, stderr, code)}")
        with np.load(out, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def info(self) -> ModelInfo:
        info = self._base_info()
        info.producer = f"torch {self.meta.get('torch', '')}".strip()
        info.details["export"] = str(self.meta.get("export", ""))
        return info
