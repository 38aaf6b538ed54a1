"""The ``modelport`` CLI's application object, global flags and the helpers its commands share.

Every command that talks to the services goes through ``modelport.Client``. Service addresses
come from the global flags (``modelport --inference HOST:PORT deploy ...``), the environment
(``MODELPORT_CONVERTER_ADDR``, ``MODELPORT_OPTIMIZER_ADDR``, ``MODELPORT_INFERENCE_ADDR``), a
config file, or the defaults ``modelport up`` uses. Exit codes: 0 ok, 1 a stage/RPC failed,
2 bad usage or an invalid spec.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from gateway.cli.config import ConfigError, GatewayConfig, load_config
from gateway.cli.render import RichProgress

app = typer.Typer(name="modelport", add_completion=False, no_args_is_help=True,
                  help="Convert, optimize and serve TensorFlow/Keras models over gRPC.")
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def gateway_config(ctx: typer.Context) -> GatewayConfig:
    return ctx.obj["config"]


def print_json(data: Any) -> None:
    # plain print, not rich: scripts parse this
    print(json.dumps(data, indent=2, default=str))


@app.callback()
def root(
    ctx: typer.Context,
    converter: str = typer.Option(None, envvar="MODELPORT_CONVERTER_ADDR", help="Converter address host:port."),
    optimizer: str = typer.Option(None, envvar="MODELPORT_OPTIMIZER_ADDR", help="Optimizer address host:port."),
    inference: str = typer.Option(None, envvar="MODELPORT_INFERENCE_ADDR",
                                  help="Inference address host:port (several IP:port, comma-separated: "
                                       "balanced, with failover across the replicas)."),
    config: Path = typer.Option(None, envvar="MODELPORT_CONFIG",
                                help="YAML with converter/optimizer/inference/tls_*/auth_token/timeout "
                                     "(default ~/.config/modelport/config.yaml)."),
    tls_ca: Path = typer.Option(None, envvar="MODELPORT_TLS_CA", help="PEM CA that signed the services' certs."),
    tls_cert: Path = typer.Option(None, envvar="MODELPORT_TLS_CERT", help="PEM client certificate (mTLS)."),
    tls_key: Path = typer.Option(None, envvar="MODELPORT_TLS_KEY", help="PEM client key (mTLS)."),
    tls_server_name: str = typer.Option(None, envvar="MODELPORT_TLS_SERVER_NAME",
                                        help="Override the TLS server name checked."),
    auth_token: str = typer.Option(None, envvar="MODELPORT_AUTH_TOKEN", help="Bearer token for mutating RPCs."),
    auth_token_file: Path = typer.Option(None, envvar="MODELPORT_AUTH_TOKEN_FILE",
                                         help="File holding the bearer token (one line), instead of --auth-token "
                                              "(the file `modelport up --token-file` gives the services)."),
    timeout: float = typer.Option(None, envvar="MODELPORT_TIMEOUT", help="Per-RPC timeout in seconds."),
) -> None:
    """modelport gateway: one command from a Keras file to a verified, served model."""
    if auth_token_file is not None and not auth_token:
        try:
            auth_token = auth_token_file.expanduser().read_text(encoding="utf-8").strip().split("\n")[0].strip()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"cannot read --auth-token-file {auth_token_file}: {getattr(e, 'strerror', None) or e}",
                       2) from None
        if not auth_token:
            raise fail(f"--auth-token-file {auth_token_file} is empty; write the token into it (one line)", 2)
    overrides = dict(converter=converter, optimizer=optimizer, inference=inference, tls_ca=tls_ca, tls_cert=tls_cert,
                     tls_key=tls_key, tls_server_name=tls_server_name, auth_token=auth_token, timeout=timeout)
    try:
        ctx.obj = {"config": load_config(config, overrides)}
    except ConfigError as e:
        raise fail(str(e), 2) from None


def job_progress(progress: RichProgress, stage: str):
    progress.start(stage)

    def cb(ev) -> None:
        progress.update(stage, ev.progress, f"{ev.stage}: {ev.message}" if ev.message else ev.stage)
    return cb


def with_client(ctx: typer.Context, offline: bool):
    """A Client to the configured services, or to in-process ones (offline) — a context manager."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        if not offline:
            with gateway_config(ctx).client() as c:
                yield c
            return
        from gateway.launcher import in_process_services
        from modelport.client import Client

        with tempfile.TemporaryDirectory(prefix="modelport-offline-") as tmp, \
                in_process_services(Path(tmp) / "store") as addrs, Client(**addrs) as c:
            yield c
    return cm()


def save_artifact(client, ref, dest: Path, service: str, progress: RichProgress | None = None) -> Path:
    """Write a result model locally: a file, or a folder artifact unpacked (a SavedModel folder; an ONNX
    model with external data as ``dest/model.onnx`` + data, or ``dest`` + data beside it for a .onnx name)."""
    cb = None
    if progress is not None:
        progress.start("download")
        cb = lambda done, total: progress.transfer("download", done, total)  # noqa: E731
    return client.download_model(ref, dest, service=service, progress=cb)


def upload_progress(progress: RichProgress, label: str = ""):
    """A byte-progress callback drawing the upload bar."""
    progress.start("upload")
    return lambda done, total: progress.transfer("upload", done, total, label)
