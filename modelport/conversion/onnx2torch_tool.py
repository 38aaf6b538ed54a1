"""ONNX -> PyTorch (torch.export ``.pt2``) and running such a program: a script for ``.venv-onnx2torch``.

Runs as ``python -I onnx2torch_tool.py convert|run ...`` under the onnx2torch venv (torch CPU + onnx2torch),
never inside the converter's process: it imports nothing from modelport, and answers on stdout with one
JSON line. ``modelport.conversion.onnx2torch_bridge`` calls it and turns its answers into results/errors.

- ``convert MODEL.onnx OUT.pt2 [--fixed-batch N]``: checks every node against onnx2torch's converters
  (exit code 3 with {"unsupported": [...]} when some are missing), converts with ``onnx2torch.convert``
  and exports the module with ``torch.export`` (batch dimension dynamic unless pinned). Saved with
  ``torch.export.save`` plus an extra file ``modelport.json`` naming inputs/outputs in call order.
- ``run MODEL.pt2 IN.npz OUT.npz``: ``torch.export.load(...).module()`` on the NPZ's arrays (inputs by
  name, in the program's order), outputs written by name.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import types
import zipfile

import numpy as np

UNSUPPORTED_EXIT = 3
META = "modelport.json"
# onnx2torch imports torchvision only for these two converters; PyPI's torchvision does not import
# beside the CPU build of torch, so without it they are reported as unsupported.
NEEDS_TORCHVISION = {"NonMaxSuppression", "RoiAlign"}

ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _import_onnx2torch() -> bool:
    """Import onnx2torch; returns whether a working torchvision is present (else a stub stands in)."""
    try:
        import torchvision  # noqa: F401

        have = True
    except Exception:  # noqa: BLE001 - absent, or built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

        def missing(*args, **kwargs):
            raise RuntimeError("torchvision is not installed in the onnx2torch venv")

        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = missing
        tv.ops = ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
        have = False
    import onnx2torch  # noqa: F401

    return have


def _answer(obj: dict, code: int = 0) -> None:
    print(json.dumps(obj), flush=True)
    raise SystemExit(code)


def _specs(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append({"name": v.name, "dtype": ONNX_TO_NUMPY.get(t.elem_type, f"onnx:{t.elem_type}"), "shape": dims})
    return out


def unsupported_ops(model, have_torchvision: bool) -> list[str]:
    """``op (domain, opset N)`` of every node type onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    missing = set()
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        label = node.op_type if not domain else f"{domain}.{node.op_type}"
        if node.op_type in NEEDS_TORCHVISION and not have_torchvision:
            missing.add(f"{label} (needs torchvision)")
            continue
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            missing.add(f"{label} (opset {opsets.get(domain, 1)})")
    return sorted(missing)


def constant_shape_operands(module) -> int:
    """Give onnx2torch's Reshape/Squeeze/Unsqueeze modules whose shape or axes operand is a constant that
    operand as Python ints; returns how many were rewritten.

    onnx2torch passes those operands as tensors and branches on their values (``any(shape == 0)``, a loop
    over sorted axes), which torch.export cannot trace with a dynamic batch. A constant operand is known
    at conversion time, so the module becomes one that takes only the data tensor (ONNX's Reshape 0 =
    copy that input dimension kept).
    """
    import torch
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.squeeze import OnnxSqueezeDynamicAxes, OnnxSqueezeStaticAxes
    from onnx2torch.node_converters.unsqueeze import OnnxUnsqueezeDynamicAxes, OnnxUnsqueezeStaticAxes

    class ConstantReshape(torch.nn.Module):
        def __init__(self, shape: list[int]):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])

    def replacement(old, values: list[int]):
        if isinstance(old, OnnxReshape):
            return ConstantReshape(values)
        if isinstance(old, OnnxSqueezeDynamicAxes) and values:
            return OnnxSqueezeStaticAxes(values)
        if isinstance(old, OnnxUnsqueezeDynamicAxes) and values and min(values) >= 0:
            return OnnxUnsqueezeStaticAxes(values)
        return None

    done = 0
    for node in module.graph.nodes:
        if node.op != "call_module" or len(node.args) != 2 or getattr(node.args[1], "op", "") != "get_attr":
            continue
        operand = module
        for part in node.args[1].target.split("."):
            operand = getattr(operand, part)
        new = replacement(module.get_submodule(node.target), [int(d) for d in operand.reshape(-1).tolist()])
        if new is None:
            continue
        parent, _, leaf = node.target.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, new)
        node.args = (node.args[0],)
        done += 1
    module.graph.eliminate_dead_code()
    module.recompile()
    return done


def _example(spec: dict, batch: int):
    import torch

    shape = [batch if i == 0 and d < 0 else (d if d >= 0 else 2) for i, d in enumerate(spec["shape"])]
    dtype = np.dtype(spec["dtype"])
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        arr = rng.random(shape).astype(dtype)
    elif dtype.kind == "b":
        arr = rng.integers(0, 2, shape).astype(bool)
    else:
        arr = rng.integers(0, 2, shape).astype(dtype)
    return torch.from_numpy(arr)


def convert(onnx_path: str, out_path: str, fixed_batch: int) -> None:
    import onnx
    import torch

    have_tv = _import_onnx2torch()
    import onnx2torch  # noqa: F401 - importable now (torchvision stub in place when needed)
    model = onnx.load(onnx_path)
    missing = unsupported_ops(model, have_tv)
    if missing:
        _answer({"unsupported": missing}, UNSUPPORTED_EXIT)
    initializers = {t.name for t in model.graph.initializer}
    inputs = _specs([i for i in model.graph.input if i.name not in initializers])
    outputs = _specs(model.graph.output)
    try:
        module = onnx2torch.convert(model)
    except NotImplementedError as e:
        _answer({"unsupported": [str(e).splitlines()[0][:300]]}, UNSUPPORTED_EXIT)
    module.eval()
    constant_shape_operands(module)
    # Export at a batch unlike the parity batch (8), so a batch size baked in by mistake shows in parity.
    batch = fixed_batch or 3
    args = tuple(_example(s, batch) for s in inputs)
    dynamic = None
    if not fixed_batch and any(s["shape"] and s["shape"][0] < 0 for s in inputs):
        dim = torch.export.Dim("batch", min=1, max=1 << 30)
        dynamic = tuple({0: dim} if s["shape"] and s["shape"][0] < 0 else {} for s in inputs)
    how = "torch.export.export"
    with torch.no_grad():
        try:
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        except Exception as first:  # noqa: BLE001 - data-dependent shapes: let real values decide
            # onnx2torch keeps constant shape operands (Reshape targets, Slice bounds) as tensors and
            # branches on their values, which export cannot see through; draft_export evaluates them on
            # the example inputs and asserts the assumption at run time.
            try:
                program = torch.export.draft_export(module, args, dynamic_shapes=dynamic, strict=False)
            except Exception as second:  # noqa: BLE001
                _answer({"error": f"torch.export failed: {str(first).splitlines()[0][:300]}; draft_export "
                                  f"failed too: {str(second).splitlines()[0][:300]}"}, 4)
            how = ("torch.export.draft_export (constant shape operands specialized from their values; "
                   "run-time asserts guard them)")
    meta = {"inputs": inputs, "outputs": outputs, "export": how, "torch": torch.__version__,
            "onnx2torch": importlib.metadata.version("onnx2torch")}
    torch.export.save(program, out_path, extra_files={META: json.dumps(meta)})
    _answer({"export": how, "torch": torch.__version__, "onnx2torch": meta["onnx2torch"]})


def read_meta(path: str) -> dict:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/extra/" + META))
        return json.loads(z.read(name))


def run(pt2: str, in_path: str, out_path: str) -> None:
    import torch

    meta = read_meta(pt2)
    program = torch.export.load(pt2).module()
    with np.load(in_path, allow_pickle=False) as z:
        feeds = [torch.from_numpy(np.ascontiguousarray(z[s["name"]])) for s in meta["inputs"]]
    with torch.no_grad():
        got = program(*feeds)
    if isinstance(got, torch.Tensor):
        got = [got]
    names = [s["name"] for s in meta["outputs"]]
    if len(got) != len(names):
        _answer({"error": f"the program returned {len(got)} outputs, its metadata names {len(names)}"}, 4)
    np.savez(out_path, **{n: t.detach().cpu().numpy() for n, t in zip(names, got, strict=True)})
    _answer({"outputs": names})


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="onnx2torch_tool")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("onnx")
    c.add_argument("out")
    c.add_argument("--fixed-batch", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("pt2")
    r.add_argument("inputs")
    r.add_argument("outputs")
    a = p.parse_args(argv)
    if a.cmd == "convert":
        convert(a.onnx, a.out, a.fixed_batch)
    else:
        run(a.pt2, a.inputs, a.outputs)


if __name__ == "__main__":
    main(sys.argv[1:])
