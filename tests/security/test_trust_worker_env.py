"""Model code that runs (operator opt-in + request flag) finds no secret in its worker's environment.

A real converter process (``python -m converter_svc --allow-remote-code``) gets its token and a TLS path
through the environment, as a Deployment gives them. A Keras Lambda reads ``os.environ`` and
``/proc/self/environ`` of the process it runs in and writes both, with its pid, to a marker file. The
marker shows the code ran in a converter worker (a child of the service, with the worker's own
variables) and that neither the token nor the TLS path is there.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from test_trust_parsing import ServiceProcess
from trust_helpers import TOKEN, health, token_channel, upload

from modelport.v1 import converter_pb2, converter_pb2_grpc

pytestmark = pytest.mark.integration

TLS_PATH = "/run/secrets/modelport-tls/ca.crt"


def env_reading_lambda(path: Path, marker: Path) -> Path:
    """A .keras model whose Lambda writes {pid, environ, proc_environ} as JSON to ``marker`` when it runs."""
    import keras

    code = ("lambda t: (__import__('pathlib').Path({m!r}).write_text(__import__('json').dumps({{"
            "'pid': __import__('os').getpid(), 'environ': dict(__import__('os').environ), "
            "'proc_environ': open('/proc/self/environ', 'rb').read().decode('utf-8', 'replace')}})), t)[1]")
    fn = eval(code.format(m=str(marker)))  # noqa: S307
    x = keras.Input((4,), name="x")
    keras.Model(x, keras.layers.Dense(2, name="y")(keras.layers.Lambda(fn, name="reads_env")(x))).save(str(path))
    marker.unlink(missing_ok=True)  # saving traced it once, in this process
    return path


def test_model_code_in_a_worker_sees_no_token_and_no_tls_path(tmp_path):
    marker = tmp_path / "environ.json"
    model = env_reading_lambda(tmp_path / "reads_env.keras", marker)
    srv = ServiceProcess("converter_svc", "converter", tmp_path / "store", "--allow-remote-code",
                         env={"MODELPORT_CONVERTER_TLS_PEER_CA": TLS_PATH})
    try:
        with token_channel(srv.address) as ch:
            ref = upload(ch, model)
            # Inspect builds the model in a worker (cheaper than a conversion): that is where the Lambda runs.
            info = converter_pb2_grpc.ConverterStub(ch).Inspect(
                converter_pb2.InspectRequest(artifact=ref, trust_remote_code=True), timeout=600)
            assert info.format == "keras" and [i.name for i in info.inputs] == ["x"]
            assert health(ch) == "SERVING"
        seen = json.loads(marker.read_text())
        # It ran in a converter worker: a child of the service, with the worker's own variables.
        assert psutil.Process(seen["pid"]).ppid() == srv.proc.pid
        assert seen["environ"]["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] == "1" and seen["environ"]["PATH"]
        for where in (json.dumps(seen["environ"]), seen["proc_environ"]):
            assert TOKEN not in where and TLS_PATH not in where
        assert not [k for k in seen["environ"] if "AUTH_TOKEN" in k or "TLS" in k]
    finally:
        srv.stop()
