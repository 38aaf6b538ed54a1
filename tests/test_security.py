"""TLS, mutual TLS and bearer tokens on a real service, with certificates made in the test.

The services under test are the shared runtime ``Service`` (health + reflection + the embedded
Artifacts service that every modelport service carries), started by ``BackgroundServer`` on
127.0.0.1 port 0 with the same ``server_credentials``/interceptor path ``python -m <svc>`` uses.
Certificates come from ``cryptography``: one CA for the deployment, a server certificate
(localhost + 127.0.0.1), a client certificate, and a rogue CA with its own client certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport.runtime.artifacts import ensure_local, upload_requests
from modelport.runtime.background import BackgroundServer
from modelport.runtime.channels import ClientTLS, make_channel
from modelport.runtime.server import Service, server_credentials
from modelport.runtime.settings import ServiceSettings
from modelport.v1 import artifacts_pb2, artifacts_pb2_grpc

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, key, cert) -> tuple[Path, Path]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, *, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # Service certificates carry both usages: a service is a server and, when it pulls
    # artifacts from a peer under mTLS, a client.
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    b = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("modelport test CA")
    ca_path, _ = _write(d, "ca", ca_key, ca_cert)
    server_cert, server_key = _write(d, "server", *_leaf(ca_key, ca_cert, "modelport-service", server=True))
    client_cert, client_key = _write(d, "client", *_leaf(ca_key, ca_cert, "modelport-cli", server=False))
    rogue_key, rogue_ca_cert = _ca("rogue CA")
    rogue_ca, _ = _write(d, "rogue-ca", rogue_key, rogue_ca_cert)
    rogue_cert, rogue_leaf_key = _write(d, "rogue", *_leaf(rogue_key, rogue_ca_cert, "intruder", server=False))
    return Certs(ca_path, server_cert, server_key, client_cert, client_key, rogue_ca, rogue_cert, rogue_leaf_key)


# ---------------------------------------------------------------------------------------------
# servers


def _start(tmp_path_factory, name: str, **settings) -> BackgroundServer:
    store = tmp_path_factory.mktemp(name)
    return BackgroundServer(Service(ServiceSettings(host="127.0.0.1", port=0, store=store, **settings))).start()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certs):
    srv = _start(tmp_path_factory, "tls", tls_cert=certs.server_cert, tls_key=certs.server_key)
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, certs):
    """mTLS + token: the production posture."""
    srv = _start(tmp_path_factory, "mtls", tls_cert=certs.server_cert, tls_key=certs.server_key,
                 tls_client_ca=certs.ca, auth_token=TOKEN)
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    srv = _start(tmp_path_factory, "token", auth_token=TOKEN)
    yield srv
    srv.stop(grace=1)


def health(channel, timeout: float = 10) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"not really onnx, but bytes are bytes" * 100)
    return p


def upload(channel, path: Path, **kw) -> artifacts_pb2.ArtifactRef:
    return artifacts_pb2_grpc.ArtifactsStub(channel).Upload(
        upload_requests(path, "application/octet-stream"), timeout=10, **kw)


def rpc_error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# ---------------------------------------------------------------------------------------------
# TLS


def test_tls_server_refuses_plaintext(tls_server):
    with grpc.insecure_channel(tls_server.address) as ch:
        err = rpc_error(lambda: health(ch, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_trusting_the_ca_works(tls_server, certs, model_file):
    with make_channel(tls_server.address, tls=ClientTLS(ca=certs.ca)) as ch:
        assert health(ch) == "SERVING"
        ref = upload(ch, model_file)  # no token configured on this server: upload is open
        stat = artifacts_pb2_grpc.ArtifactsStub(ch).Stat(artifacts_pb2.StatRequest(digest=ref.digest), timeout=5)
    assert stat.digest == ref.digest and stat.size == model_file.stat().st_size


def test_tls_client_refuses_a_server_signed_by_another_ca(tls_server, certs):
    with make_channel(tls_server.address, tls=ClientTLS(ca=certs.rogue_ca)) as ch:
        err = rpc_error(lambda: health(ch, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_server_name_override_checks_the_certificate_name(tls_server, certs):
    """A name the certificate does not carry is refused; one it carries is accepted."""
    ok = ClientTLS(ca=certs.ca, server_name="localhost")
    with make_channel(tls_server.address, tls=ok) as ch:
        assert health(ch) == "SERVING"
    wrong = ClientTLS(ca=certs.ca, server_name="inference.example.com")
    with make_channel(tls_server.address, tls=wrong) as ch:
        assert rpc_error(lambda: health(ch, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------
# mutual TLS


def test_mtls_refuses_a_client_without_a_certificate(mtls_server, certs):
    with make_channel(mtls_server.address, tls=ClientTLS(ca=certs.ca)) as ch:
        err = rpc_error(lambda: health(ch, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server, certs):
    tls = ClientTLS(ca=certs.ca, cert=certs.rogue_cert, key=certs.rogue_key)
    with make_channel(mtls_server.address, tls=tls) as ch:
        err = rpc_error(lambda: health(ch, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_plaintext(mtls_server):
    with grpc.insecure_channel(mtls_server.address) as ch:
        assert rpc_error(lambda: health(ch, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_good_client_with_token_uploads_and_reads(mtls_server, certs, model_file):
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    with make_channel(mtls_server.address, tls=tls, token=TOKEN) as ch:
        assert health(ch) == "SERVING"
        ref = upload(ch, model_file)
        stub = artifacts_pb2_grpc.ArtifactsStub(ch)
        data = b"".join(c.data for c in stub.Download(artifacts_pb2.DownloadRequest(digest=ref.digest), timeout=5))
    assert data == model_file.read_bytes()
    assert ref.digest.startswith("sha256:") and ref.size == len(data)


def test_mtls_good_client_without_token_is_unauthenticated_on_upload(mtls_server, certs, model_file):
    """A valid certificate is not a substitute for the token on mutating RPCs."""
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    with make_channel(mtls_server.address, tls=tls) as ch:
        assert health(ch) == "SERVING"
        err = rpc_error(lambda: upload(ch, model_file))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in err.details()


def test_aio_channel_with_mtls_and_token(mtls_server, certs, model_file):
    """The grpc.aio flavour of make_channel carries the certificate and the token too."""
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)

    async def go():
        async with make_channel(mtls_server.address, tls=tls, token=TOKEN, aio=True) as ch:
            stub = artifacts_pb2_grpc.ArtifactsStub(ch)
            ref = await stub.Upload(upload_requests(model_file, "application/octet-stream"), timeout=10)
            return await stub.Stat(artifacts_pb2.StatRequest(digest=ref.digest), timeout=5)

    stat = asyncio.run(go())
    assert stat.size == model_file.stat().st_size


# ---------------------------------------------------------------------------------------------
# bearer token


def test_upload_without_token_is_unauthenticated(token_server, model_file, channel_to):
    err = rpc_error(lambda: upload(channel_to(token_server.address), model_file))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == ("this RPC changes state and needs 'authorization: Bearer <token>' metadata "
                             "(CLI: --auth-token or MODELPORT_AUTH_TOKEN)")


def test_upload_with_wrong_token_is_permission_denied(token_server, model_file):
    with make_channel(token_server.address, token="not-the-token") as ch:
        err = rpc_error(lambda: upload(ch, model_file))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details().startswith("the bearer token is not valid for this service")
    assert "--auth-token" in err.details()
    assert TOKEN not in err.details()  # never echo the secret


@pytest.mark.parametrize("header", ["Basic czNjcmV0LXRva2Vu", f"Token {TOKEN}", "Bearer"])
def test_malformed_authorization_is_permission_denied(token_server, model_file, header, channel_to):
    err = rpc_error(lambda: upload(channel_to(token_server.address), model_file,
                                   metadata=(("authorization", header),)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_upload_with_the_token_is_stored(token_server, model_file):
    with make_channel(token_server.address, token=TOKEN) as ch:
        ref = upload(ch, model_file)
    assert token_server.service.store.has(ref.digest)


def test_read_only_rpcs_stay_open_without_token(token_server, model_file, channel_to):
    """Probes and reads need no token: health, Stat (and Download) are not mutating."""
    with make_channel(token_server.address, token=TOKEN) as ch:
        ref = upload(ch, model_file)
    ch = channel_to(token_server.address)
    assert health(ch) == "SERVING"
    stub = artifacts_pb2_grpc.ArtifactsStub(ch)
    assert stub.Stat(artifacts_pb2.StatRequest(digest=ref.digest), timeout=5).digest == ref.digest
    # an unknown digest answers NOT_FOUND, not an auth error: Stat really is open
    missing = "sha256:" + "0" * 64
    err = rpc_error(lambda: stub.Stat(artifacts_pb2.StatRequest(digest=missing), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    data = b"".join(c.data for c in stub.Download(artifacts_pb2.DownloadRequest(digest=ref.digest), timeout=5))
    assert data == model_file.read_bytes()


def test_service_keeps_serving_after_refused_calls(token_server, model_file, channel_to):
    ch = channel_to(token_server.address)
    for _ in range(3):
        assert rpc_error(lambda: upload(ch, model_file)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert health(ch) == "SERVING"


# ---------------------------------------------------------------------------------------------
# service to service, settings, probe


def test_artifact_pull_between_mtls_services(tmp_path_factory, certs, mtls_server, model_file):
    """A service pulls a ref from an mTLS peer with tls_peer_ca + its own certificate."""
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    with make_channel(mtls_server.address, tls=tls, token=TOKEN) as ch:
        ref = upload(ch, model_file)
    assert ref.origin == mtls_server.address
    puller = _start(tmp_path_factory, "puller", tls_cert=certs.server_cert, tls_key=certs.server_key,
                    tls_peer_ca=certs.ca)
    blind = _start(tmp_path_factory, "blind")  # no peer CA: tries plaintext and is refused
    try:
        got = puller.call(ensure_local(puller.service.store, ref, channel_factory=puller.service.channel))
        assert got.digest == ref.digest and Path(got.path).read_bytes() == model_file.read_bytes()
        from modelport.errors import Unavailable

        with pytest.raises(Unavailable, match=rf"could not pull {ref.digest} from origin {ref.origin} \(UNAVAILABLE\)"):
            blind.call(ensure_local(blind.service.store, ref, channel_factory=blind.service.channel))
        assert not blind.service.store.has(ref.digest)  # nothing partial became visible
    finally:
        puller.stop(grace=1)
        blind.stop(grace=1)


def test_tls_settings_come_from_flags_and_env(certs, monkeypatch):
    from modelport.runtime.settings import parse_settings

    monkeypatch.setenv("MODELPORT_AUTH_TOKEN", TOKEN)
    s = parse_settings(ServiceSettings, ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
                                         "--tls-client-ca", str(certs.ca)])
    assert s.auth_token == TOKEN and s.tls_client_ca == certs.ca
    assert isinstance(server_credentials(s), grpc.ServerCredentials)
    assert TOKEN not in repr(s)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tls_cert": "cert"}, "TLS needs both --tls-cert and --tls-key"),
    ({"tls_key": "key"}, "TLS needs both --tls-cert and --tls-key"),
    ({"tls_client_ca": "ca"}, "tls_client_ca (mTLS) needs a server certificate too"),
])
def test_incomplete_tls_settings_refuse_to_start_in_plaintext(kwargs, message, certs):
    paths = {"cert": certs.server_cert, "key": certs.server_key, "ca": certs.ca}
    s = ServiceSettings(**{k: paths[v] for k, v in kwargs.items()})
    with pytest.raises(ValueError) as info:
        server_credentials(s)
    assert str(info.value).startswith(message)


def test_healthcheck_probe_speaks_mtls(mtls_server, certs):
    base = [sys.executable, "-m", "modelport.healthcheck", mtls_server.address, "--timeout", "5"]
    good = subprocess.run([*base, "--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert),
                           "--tls-key", str(certs.client_key)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert good.returncode == 0 and good.stdout.strip() == f"{mtls_server.address}: SERVING", good.stderr
    bad = subprocess.run(base, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 1 and "UNAVAILABLE" in bad.stderr


def test_sdk_client_and_gateway_config_speak_mtls_with_token(mtls_server, certs, model_file, tmp_path):
    """The CLI/SDK side: GatewayConfig (what `modelport --config` reads) -> Client over mTLS."""
    from gateway.cli.config import load_config
    from modelport.client import ClientError

    def client(**keys):
        cfg_file = tmp_path / "gateway.yaml"
        cfg_file.write_text("".join(f"{k}: {v}\n" for k, v in {"converter": mtls_server.address, **keys}.items()))
        return load_config(cfg_file, {}).client()

    tls_keys = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key}
    good = client(**tls_keys, auth_token=TOKEN)
    no_token = client(**tls_keys)
    no_cert = client(tls_ca=certs.ca, auth_token=TOKEN)
    try:
        (status,) = good.status(services=["converter"])
        assert status.status == "SERVING"
        ref = good.upload(model_file, service="converter")
        assert good.stat(ref.digest, service="converter").size == model_file.stat().st_size
        with pytest.raises(ClientError) as info:
            no_token.upload(model_file, service="converter")
        assert info.value.code == "UNAUTHENTICATED"
        (status,) = no_cert.status(services=["converter"], timeout=5)
        assert status.status == "UNREACHABLE"  # the handshake is refused before any RPC
    finally:
        for c in (good, no_token, no_cert):
            c.close()


@pytest.fixture(scope="module")
def secured_inference(tmp_path_factory, certs):
    """The real inference service under mTLS + token (what the k8s/compose deployments run)."""
    from inference_svc.service import InferenceService
    from inference_svc.settings import InferenceSettings

    settings = InferenceSettings(host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("inf"),
                                 execution_provider="cpu", tls_cert=certs.server_cert, tls_key=certs.server_key,
                                 tls_client_ca=certs.ca, auth_token=TOKEN)
    srv = BackgroundServer(InferenceService(settings)).start()
    yield srv
    srv.stop(grace=1)


def test_inference_service_guards_model_load_and_leaves_reads_open(secured_inference, certs, model_file):
    from modelport.kserve.v2 import grpc_service_pb2 as kpb
    from modelport.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
    from modelport.v1 import serving_pb2, serving_pb2_grpc

    addr = secured_inference.address
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    with grpc.insecure_channel(addr) as ch:
        assert rpc_error(lambda: health(ch, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE
    load = serving_pb2.LoadModelRequest(name="m", model=artifacts_pb2.ArtifactRef(digest="sha256:" + "1" * 64))
    with make_channel(addr, tls=tls) as ch:
        control = serving_pb2_grpc.ModelControlStub(ch)
        kserve = kpb_grpc.GRPCInferenceServiceStub(ch)
        # reads are open: health, ServerLive, ListModels
        assert health(ch) == "SERVING"
        assert kserve.ServerLive(kpb.ServerLiveRequest(), timeout=5).live is True
        assert list(control.ListModels(serving_pb2.ListModelsRequest(), timeout=5).models) == []
        # mutating: LoadModel and the KServe repository load both need the token
        err = rpc_error(lambda: control.LoadModel(load, timeout=5))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.details()
        err = rpc_error(lambda: kserve.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(model_name="m"), timeout=5))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with make_channel(addr, tls=tls, token="wrong") as ch:
        err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(ch).LoadModel(load, timeout=5))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    with make_channel(addr, tls=tls, token=TOKEN) as ch:
        # past auth, the request itself is judged: the digest is in no store and names no origin
        err = rpc_error(lambda: serving_pb2_grpc.ModelControlStub(ch).LoadModel(load, timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "sha256:" + "1" * 64 in err.details()


def _optimizer(store, **tls):
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    return OptimizerService(OptimizerSettings(host="127.0.0.1", port=0, store=store, warm_workers=0, **tls))


def _converter(store, **tls):
    from converter_svc.service import ConverterService
    from converter_svc.settings import ConverterSettings

    return ConverterService(ConverterSettings(host="127.0.0.1", port=0, store=store, warm_workers=0, **tls))


JOB_SERVICES = {
    # name: (factory(store, **tls settings), mutating server-streaming method, "module:RequestClass")
    "converter": (_converter, "/modelport.v1.Converter/Convert", "modelport.v1.converter_pb2:ConvertRequest"),
    "optimizer": (_optimizer, "/modelport.v1.Optimizer/Optimize", "modelport.v1.optimizer_pb2:OptimizeRequest"),
}


@pytest.mark.parametrize("name", list(JOB_SERVICES))
def test_job_service_under_mtls_guards_its_job_rpc(name, tmp_path, certs):
    """Converter/optimizer: the job RPC needs the token; the same TLS/mTLS rules as everywhere."""
    import importlib

    factory, method, request_path = JOB_SERVICES[name]
    module, _, cls = request_path.partition(":")
    request_cls = getattr(importlib.import_module(module), cls)
    service = factory(tmp_path / "store", tls_cert=certs.server_cert, tls_key=certs.server_key,
                      tls_client_ca=certs.ca, auth_token=TOKEN)
    srv = BackgroundServer(service).start()
    tls = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    try:
        with grpc.insecure_channel(srv.address) as ch:
            assert rpc_error(lambda: health(ch, timeout=5)).code() == grpc.StatusCode.UNAVAILABLE

        def call(ch):
            job = ch.unary_stream(method, request_serializer=request_cls.SerializeToString,
                                  response_deserializer=lambda b: b)
            return list(job(request_cls(), timeout=30))

        with make_channel(srv.address, tls=tls) as ch:
            assert health(ch) == "SERVING"
            err = rpc_error(lambda: call(ch))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.details()
        with make_channel(srv.address, tls=tls, token="wrong") as ch:
            assert rpc_error(lambda: call(ch)).code() == grpc.StatusCode.PERMISSION_DENIED
        with make_channel(srv.address, tls=tls, token=TOKEN) as ch:
            # authorized: an empty request is now judged on its content (no model ref given)
            err = rpc_error(lambda: call(ch))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    finally:
        srv.stop(grace=1)
