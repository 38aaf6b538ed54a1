"""``modelport up --token-file`` and the services' ``--auth-token-file``: the token from a file, in no command
line and no environment; a missing or empty file refuses to start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import psutil
import pytest
from test_up import NO_WARM, _read_until

from converter_svc.settings import ConverterSettings
from modelport.runtime.artifacts import upload_requests
from modelport.runtime.channels import make_channel
from modelport.v1 import artifacts_pb2_grpc

TOKEN = "up-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


def test_service_settings_read_the_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    s = ConverterSettings(auth_token_file=f, store=tmp_path / "s")
    assert s.auth_token == TOKEN
    assert TOKEN not in repr(s)
    f.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"auth_token_file .*token is empty; write the token into it"):
        ConverterSettings(auth_token_file=f, store=tmp_path / "s")
    with pytest.raises(ValueError, match=r"cannot read auth_token_file .*missing: No such file or directory"):
        ConverterSettings(auth_token_file=tmp_path / "missing", store=tmp_path / "s")
    f.write_text(TOKEN)
    with pytest.raises(ValueError, match="give the auth token once"):
        ConverterSettings(auth_token_file=f, auth_token="other", store=tmp_path / "s")


def test_a_service_refuses_to_start_with_an_empty_token_file(tmp_path):
    (tmp_path / "token").write_text("")
    r = subprocess.run([sys.executable, "-m", "inference_svc", "--host", "0.0.0.0", "--port", "0", "--store",
                        str(tmp_path / "s"), "--auth-token-file", str(tmp_path / "token")],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=120)
    assert r.returncode == 2
    assert "modelport-inference: settings: Value error, auth_token_file" in r.stderr
    assert "is empty; write the token into it" in r.stderr and "Traceback" not in r.stderr


def test_up_with_an_empty_token_file_starts_nothing(tmp_path):
    (tmp_path / "token").write_text("\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "up", "--store", str(tmp_path / "store"),
                        "--token-file", str(tmp_path / "token")], capture_output=True, text=True, cwd=tmp_path,
                       env={**NO_WARM, "COLUMNS": "200"}, timeout=120)
    assert r.returncode == 2
    assert "--token-file" in r.stderr and "is empty; write the token into it" in r.stderr
    assert not (tmp_path / "store").exists()  # nothing was started


def test_up_token_file_guards_all_three_and_stays_out_of_argv_and_environ(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    model = tmp_path / "blob.bin"
    model.write_bytes(b"x" * 1000)
    cmd = [sys.executable, "-m", "gateway.cli", "up", "--store", str(tmp_path / "store"), "--converter-port", "0",
           "--optimizer-port", "0", "--inference-port", "0", "--log-dir", str(tmp_path / "logs"),
           "--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**NO_WARM, "COLUMNS": "200"})
    try:
        m = _read_until(proc, r"all services SERVING converter=(\S+) optimizer=(\S+) inference=(\S+)", [])
        for address in m.groups():
            with make_channel(address) as ch:
                with pytest.raises(grpc.RpcError) as info:
                    artifacts_pb2_grpc.ArtifactsStub(ch).Upload(upload_requests(model, "application/octet-stream"),
                                                                timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, address
            with make_channel(address, token=TOKEN) as ch:
                ref = artifacts_pb2_grpc.ArtifactsStub(ch).Upload(upload_requests(model, "application/octet-stream"),
                                                                  timeout=30)
                assert ref.size == 1000
        services = psutil.Process(proc.pid).children()
        assert len(services) == 3
        for p in [*services, *(c for s in services for c in s.children(recursive=True))]:
            cmdline = " ".join(p.cmdline())
            assert TOKEN not in cmdline
            assert TOKEN.encode() not in Path(f"/proc/{p.pid}/environ").read_bytes(), cmdline
        assert all(["--auth-token-file", str(token_file.resolve())] == s.cmdline()[-2:] for s in services)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
