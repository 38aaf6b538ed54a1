"""Crossing protobuf's 2 GiB line: a Keras 3 model with 2.29 GB of weights (two 1.15 GB embedding tables)
converts to ONNX through a real converter service, as one folder artifact with external data, with parity.

The conversion half of issue 13's end-to-end test (int8-dynamic, serving and tritonclient come with
external-data support in the optimizer and the inference service). The model is built and saved in its own
process; the converter runs in a dedicated server whose worker exits after the job. About three minutes
(a minute of it the conversion job) and 6 GB of memory at peak; skipped when the machine has less than 9 GB available.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from converter_fixtures import ConverterClient, make_converter

from modelport.memory import available_bytes
from modelport.runtime.background import BackgroundServer

pytestmark = pytest.mark.integration

VOCAB, DIM = 140_000, 2048
WEIGHT_BYTES = 2 * VOCAB * DIM * 4 + (DIM * 4 + 4) * 4

_BUILD = textwrap.dedent(f"""
    import sys
    import keras
    keras.utils.set_random_seed(0)
    ids = keras.Input((16,), dtype="int32", name="token_ids")
    a = keras.layers.Embedding({VOCAB}, {DIM}, name="table_a")(ids)
    b = keras.layers.Embedding({VOCAB}, {DIM}, name="table_b")(ids)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([a, b]))
    keras.Model(ids, keras.layers.Dense(4, name="head")(x)).save(sys.argv[1])
""")


@pytest.mark.skipif(available_bytes().available < 9e9, reason="needs about 6 GB of memory free (9 GB available)")
def test_keras_model_past_2_gib_converts_with_external_data(tmp_path):
    path = tmp_path / "big.keras"
    subprocess.run([sys.executable, "-c", _BUILD, str(path)], check=True, capture_output=True, timeout=900)
    srv = BackgroundServer(make_converter(tmp_path / "store")).start()  # worker_max_jobs=1: memory back after
    client = ConverterClient(srv.address)
    try:
        ref = client.upload(path, "application/vnd.modelport.keras")
        events = client.convert(ref, "onnx", timeout=1800)
    finally:
        client.close()
        srv.stop()
    res = events[-1].convert_result
    assert events[-1].stage == "done" and res.parity.passed, res.parity
    assert res.parity.outputs[0].max_abs_diff < 1e-5
    assert res.source_info.parameter_count == WEIGHT_BYTES // 4
    # Every weight is an initializer of the result (plus a few scalar constants of the graph).
    assert 0 <= res.info.parameter_count - WEIGHT_BYTES // 4 < 100
    assert res.artifact.media_type == "application/vnd.modelport.onnx+tar"
    assert res.artifact.size > 2 ** 31  # past protobuf's limit, in one artifact
    assert res.info.details["external_data"] == "model.onnx.data"
