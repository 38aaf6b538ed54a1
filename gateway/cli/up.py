"""``modelport up``: the three services on this machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.app import app, fail, out


@app.command()
def up(
    store: Path = typer.Option(Path(".modelport/store"), help="Artifact store shared by the three services."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind ('0.0.0.0' for all: then give --token-file "
                             "or MODELPORT_AUTH_TOKEN, or the services refuse to start without a token)."),
    token_file: Path = typer.Option(None, "--token-file", envvar="MODELPORT_AUTH_TOKEN_FILE",
                                    help="File holding the bearer token (one line) the three services require on "
                                         "mutating RPCs; each gets --auth-token-file, so the token is in no command "
                                         "line or environment. The CLI reads the same variable. Without it, "
                                         "MODELPORT_AUTH_TOKEN (if set) becomes each service's token."),
    port_offset: int = typer.Option(0, help="Added to every default port (run two sets side by side)."),
    converter_port: int = typer.Option(None, help="Converter port (default 50051; 0 = any free port)."),
    optimizer_port: int = typer.Option(None, help="Optimizer port (default 50052; 0 = any free port)."),
    inference_port: int = typer.Option(None, help="Inference port (default 8001; 0 = any free port)."),
    log_dir: Path = typer.Option(None, help="Write each service's log to DIR/<name>.log instead of stderr."),
    startup_timeout: float = typer.Option(180.0, help="Seconds to wait for all three to be SERVING."),
) -> None:
    """Start converter, optimizer and inference on this machine; Ctrl-C or SIGTERM stops them cleanly."""
    from gateway.launcher import DEFAULT_PORTS, Launcher, LaunchError, run_up

    given = {"converter": converter_port, "optimizer": optimizer_port, "inference": inference_port}
    ports = {n: (p if given[n] is None else given[n]) + (port_offset if given[n] is None else 0)
             for n, p in DEFAULT_PORTS.items()}
    extra_args, env = token_settings(token_file)
    launcher = Launcher(store, ports=ports, host=host, log_dir=log_dir, extra_args=extra_args, env=env)

    auth = (f"token from {token_file}" if token_file else "token from MODELPORT_AUTH_TOKEN" if env
            else "none (loopback only)")

    def ready(addrs: dict[str, str]) -> None:
        t = Table(title="modelport services (SERVING)", title_justify="left")
        t.add_column("service")
        t.add_column("address")
        t.add_column("env")
        for name, addr in addrs.items():
            t.add_row(name, addr, f"MODELPORT_{name.upper()}_ADDR={addr}")
        out.print(t)
        out.print(f"store: {launcher.store}   auth: {auth}   stop with Ctrl-C", highlight=False)
        # a plain line for scripts and tests that wait on stdout
        print("modelport up: all services SERVING " + " ".join(f"{n}={a}" for n, a in addrs.items()), flush=True)

    try:
        code = run_up(launcher, timeout=startup_timeout, on_ready=ready)
    except LaunchError as e:
        raise fail(str(e)) from None
    if code == 0:
        print("modelport up: stopped", flush=True)
    raise typer.Exit(code)


SERVICES = ("converter", "optimizer", "inference")


def token_settings(token_file: Path | None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(extra flags, extra environment) giving the three services their token: ``--auth-token-file`` from
    ``--token-file`` (checked here, so a bad file fails before anything starts), else
    ``MODELPORT_<SERVICE>_AUTH_TOKEN`` from ``MODELPORT_AUTH_TOKEN``, else nothing (loopback only)."""
    import os

    if token_file is not None:
        path = token_file.expanduser().resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"cannot read --token-file {token_file}: {getattr(e, 'strerror', None) or e}", 2) from None
        if not text.strip():
            raise fail(f"--token-file {token_file} is empty; write the token into it (one line)", 2)
        return {name: ["--auth-token-file", str(path)] for name in SERVICES}, {}
    token = os.environ.get("MODELPORT_AUTH_TOKEN", "").strip()
    if token:
        return {}, {f"MODELPORT_{name.upper()}_AUTH_TOKEN": token for name in SERVICES}
    return {}, {}
