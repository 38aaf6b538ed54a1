"""Model code that runs (operator opt-in + request flag) finds no secret in its worker's environment.

A real converter process (``python -m converter_svc --allow-remote-code``) gets its token and a TLS path
through the environment, as a Deployment gives them. A Keras Lambda reads ``os.environ`` and
``/proc/self/environ`` of the process it runs in and writes both, with its pid, to a marker file. The
marker shows the code ran in a converter worker (a child of the service, with the worker's own
variables) and that neither the token nor the TLS path is there.

The token is still in the service's own ``/proc/<pid>/environ``. A service started with
``--allow-remote-code`` makes itself non-dumpable (``modelport.trust.hide_from_model_code``), so a
process of the same user -- its workers -- cannot read that file. Root reads it anyway
(CAP_SYS_PTRACE), so the mechanism is shown with the service's user an ordinary one, as in the images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from test_trust_parsing import ROOT, ServiceProcess
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
                         env={"MODELPORT_CONVERTER_TLS_PEER_CA": TLS_PATH}, log=tmp_path / "converter.log")
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
    # The service hid its own environment (where the token came in) from same-user processes.
    assert "this process is not dumpable, so they cannot read its environment" in (tmp_path / "converter.log").read_text()


_HIDE = textwrap.dedent("""
    import subprocess, sys
    if sys.argv[1] == "hide":
        from modelport.trust import hide_from_model_code
        assert hide_from_model_code()
    child = "import os\\ntry:\\n    open('/proc/%d/environ' % os.getppid(), 'rb').read(); print('readable')\\n" \\
            "except PermissionError:\\n    print('denied')"
    print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip())
""")


def test_a_hidden_service_environment_is_denied_to_its_children():
    """The mechanism as an ordinary user: a child (as a worker is) reads its parent's environ, until the parent
    calls hide_from_model_code. As root, run as ``nobody`` with the system Python (the venv lives under a folder
    only root may enter here)."""
    if os.geteuid() == 0:
        prefix, python = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"], "/usr/bin/python3"
    else:
        prefix, python = [], sys.executable
    seen = {}
    for mode in ("show", "hide"):
        r = subprocess.run([*prefix, python, "-c", _HIDE, mode], capture_output=True, text=True, cwd="/",
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "MODELPORT_X_AUTH_TOKEN": TOKEN},
                           timeout=60)
        assert r.returncode == 0, r.stderr
        seen[mode] = r.stdout.strip()
    assert seen == {"show": "readable", "hide": "denied"}
