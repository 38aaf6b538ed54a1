"""A model past protobuf's 2 GiB line end to end: an ONNX model of 2.15 GB of float32 weights (eight
embedding tables summed into a dense layer, built tensor by tensor with onnx.helper and saved as
model.onnx + model.onnx.data) is uploaded as a folder, quantized with int8-dynamic by the optimizer,
loaded by the inference service from its store, and queried through tritonclient; the outputs are
compared with the reference computed in numpy.

Multi-GB on a shared machine: one multi-GB process at a time (the optimizer's worker), and every file
the test wrote is removed at the end, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from extdata_fixtures import embedding_model, embedding_reference, weight_bytes

from modelport import Client, media

ROOT = Path(__file__).resolve().parent.parent
TABLES, VOCAB, DIM, OUT = 8, 65_600, 1024, 16


def triton_python() -> str:
    for c in (os.environ.get("MODELPORT_TRITON_PYTHON", ""), str(ROOT / ".venv-triton" / "bin" / "python")):
        if c and Path(c).is_file():
            return c
    pytest.fail("no tritonclient venv: run `make triton-venv` (or set MODELPORT_TRITON_PYTHON to a python with "
                "tritonclient[grpc] installed)")


@pytest.mark.integration
def test_past_2_gib_upload_int8_dynamic_serve_and_infer_through_tritonclient(monkeypatch):
    from gateway.launcher import in_process_services

    py = triton_python()
    monkeypatch.setenv("MODELPORT_CONVERTER_WARM_WORKERS", "0")
    monkeypatch.setenv("MODELPORT_OPTIMIZER_WARM_WORKERS", "0")
    assert weight_bytes(VOCAB, DIM, OUT, TABLES) > 2**31  # past what one protobuf can hold
    root = Path(tempfile.mkdtemp(prefix="modelport-large-"))
    try:
        model = embedding_model(root / "src", VOCAB, DIM, OUT, tables=TABLES)
        rng = np.random.default_rng(3)
        ids = np.concatenate([rng.integers(0, VOCAB, (3, 5)), [[0, 1, VOCAB - 1, 4093, 65_000]]]).astype(np.int64)
        reference = embedding_reference(ids, DIM, OUT, TABLES)
        with in_process_services(root / "store") as addrs, Client(**addrs) as client:
            seen: list[int] = []
            ref = client.upload(model.parent, service="optimizer", progress=lambda done, total: seen.append(done))
            assert ref.media_type == media.ONNX_FOLDER and ref.size > 2**31 and seen[-1] == ref.size
            shutil.rmtree(root / "src")  # the store holds it now

            res = client.optimize(ref, ["int8-dynamic"], max_accuracy_drop=1.0)
            assert res.chosen_technique == "int8-dynamic", res.reason
            q = next(c for c in res.candidates if c.technique == "int8-dynamic")
            assert res.artifact.media_type == media.ONNX_FOLDER  # came with external data: keeps it
            assert int(q.details["int8_weight_tensors"]) == TABLES + 1  # every table and the dense kernel
            assert q.size_bytes < 0.3 * res.baseline.size_bytes and res.baseline.size_bytes > 2**31

            loaded = client.load_model("big", res.artifact)
            assert loaded.model.state == "READY"
            np.savez(root / "in.npz", ids=ids)
            p = subprocess.run([py, str(ROOT / "tests" / "triton_compat" / "infer_once.py"), addrs["inference"],
                                "big", str(root / "in.npz"), str(root / "out.npz")],
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-4000:]
            with np.load(root / "out.npz") as z:
                y = z["y"]
        assert y.shape == reference.shape == (4, 5, OUT)
        # int8 embeddings and kernel: each output off by a few quantization steps of its 8 summed rows
        err = np.max(np.abs(y - reference)) / np.max(np.abs(reference))
        assert err < 0.05, err
        assert np.corrcoef(y.ravel(), reference.ravel())[0, 1] > 0.999
    finally:
        shutil.rmtree(root, ignore_errors=True)
