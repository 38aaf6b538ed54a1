"""Issue 13's end-to-end test: a Keras 3 model past protobuf's 2 GiB line through every service.

A Keras model of 2.15 GB of float32 weights (eight 65,600 x 1024 embedding tables summed into a dense
layer, so it builds and converts in about a minute) is built and saved in its own process, which also
computes Keras's outputs for a batch of token ids. Then, through the three real services on loopback:
upload (streamed, with byte progress) -> Convert to ONNX (one folder artifact: model.onnx +
model.onnx.data, parity against Keras) -> Optimize int8-dynamic (external data in and out) -> LoadModel
from the store -> one inference through tritonclient, compared with the Keras outputs.

Multi-GB on a shared machine: the workers exit after each job (``worker_max_jobs=1``, no warm spares),
so one multi-GB process runs at a time; every file the test wrote is removed at the end, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelport import Client, media

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TABLES, VOCAB, DIM, OUT = 8, 65_600, 1024, 16
WEIGHT_BYTES = 4 * (TABLES * VOCAB * DIM + DIM * OUT + OUT)

_BUILD = textwrap.dedent(f"""
    import sys
    import numpy as np
    import keras
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    tables = [keras.layers.Embedding({VOCAB}, {DIM}, name=f"table_{{k}}")(ids) for k in range({TABLES})]
    y = keras.layers.Dense({OUT}, name="head")(keras.layers.Add()(tables))
    model = keras.Model(ids, y)
    model.save(sys.argv[1])
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(0, {VOCAB}, (3, 5)), [[0, 1, {VOCAB} - 1, 4093, 65_000]]]).astype(np.int32)
    np.savez(sys.argv[2], token_ids=x, y=np.asarray(model.predict(x, verbose=0)))
""")


def triton_python() -> str:
    for c in (os.environ.get("MODELPORT_TRITON_PYTHON", ""), str(ROOT / ".venv-triton" / "bin" / "python")):
        if c and Path(c).is_file():
            return c
    pytest.fail("no tritonclient venv: run `make triton-venv` (or set MODELPORT_TRITON_PYTHON to a python with "
                "tritonclient[grpc] installed)")


def test_keras_past_2_gib_converts_quantizes_serves_and_infers_through_tritonclient(monkeypatch):
    from gateway.launcher import in_process_services

    py = triton_python()
    for svc in ("CONVERTER", "OPTIMIZER"):
        monkeypatch.setenv(f"MODELPORT_{svc}_WARM_WORKERS", "0")
        monkeypatch.setenv(f"MODELPORT_{svc}_WORKER_MAX_JOBS", "1")  # each job's memory goes back after it
    assert WEIGHT_BYTES > 2**31  # past what one protobuf can hold
    root = Path(tempfile.mkdtemp(prefix="modelport-large-"))
    try:
        src, ref_npz = root / "big.keras", root / "keras.npz"
        p = subprocess.run([sys.executable, "-c", _BUILD, str(src), str(ref_npz)], capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr[-4000:]
        with np.load(ref_npz) as z:
            ids, reference = z["token_ids"], z["y"]
        np.savez(root / "in.npz", token_ids=ids)

        with in_process_services(root / "store") as addrs, Client(**addrs) as client:
            seen: list[int] = []
            up = client.upload(src, progress=lambda done, total: seen.append(done))
            assert up.media_type == media.KERAS and up.size > WEIGHT_BYTES and seen[-1] == up.size
            src.unlink()  # the store holds it now

            # Convert: weights as inputs, streamed to one data file; parity against Keras on real inputs.
            conv = client.convert(up, "onnx")
            assert conv.parity.passed and conv.parity.outputs[0].max_abs_diff < 1e-5, conv.parity
            assert conv.source_info.parameter_count == WEIGHT_BYTES // 4
            assert 0 <= conv.info.parameter_count - WEIGHT_BYTES // 4 < 100  # + a few scalar constants
            assert conv.artifact.media_type == media.ONNX_FOLDER and conv.artifact.size > 2**31
            assert conv.info.details["external_data"] == "model.onnx.data"

            # int8-dynamic on the converter's artifact (pulled by ref): external data in and out.
            res = client.optimize(conv.artifact, ["int8-dynamic"], max_accuracy_drop=1.0)
            assert res.chosen_technique == "int8-dynamic", res.reason
            q = next(c for c in res.candidates if c.technique == "int8-dynamic")
            assert res.artifact.media_type == media.ONNX_FOLDER
            assert int(q.details["int8_weight_tensors"]) == TABLES + 1  # every table and the dense kernel
            assert q.size_bytes < 0.3 * res.baseline.size_bytes and res.baseline.size_bytes > 2**31

            loaded = client.load_model("big", res.artifact)
            assert loaded.model.state == "READY"
            p = subprocess.run([py, str(ROOT / "tests" / "triton_compat" / "infer_once.py"), addrs["inference"],
                                "big", str(root / "in.npz"), str(root / "out.npz")],
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-4000:]
            with np.load(root / "out.npz") as z:
                assert len(z.files) == 1, z.files
                y = z[z.files[0]]
        assert y.shape == reference.shape == (4, 5, OUT)
        # int8 tables and kernel: each output off by a few quantization steps of its 8 summed rows
        err = np.max(np.abs(y - reference)) / np.max(np.abs(reference))
        assert err < 0.05, err
        assert np.corrcoef(y.ravel(), reference.ravel())[0, 1] > 0.999
    finally:
        shutil.rmtree(root, ignore_errors=True)
