"""``modelport up``: the three services on this machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gateway.cli.app import app, fail, out


@app.command()
def up(
    store: Path = typer.Option(Path(".modelport/store"), help="Artifact store shared by the three services."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind ('0.0.0.0' for all: then export "
                             "MODELPORT_<SERVICE>_AUTH_TOKEN, or the services refuse to start without a token)."),
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
    launcher = Launcher(store, ports=ports, host=host, log_dir=log_dir)

    def ready(addrs: dict[str, str]) -> None:
        t = Table(title="modelport services (SERVING)", title_justify="left")
        t.add_column("service")
        t.add_column("address")
        t.add_column("env")
        for name, addr in addrs.items():
            t.add_row(name, addr, f"MODELPORT_{name.upper()}_ADDR={addr}")
        out.print(t)
        out.print(f"store: {launcher.store}   stop with Ctrl-C", highlight=False)
        # a plain line for scripts and tests that wait on stdout
        print("modelport up: all services SERVING " + " ".join(f"{n}={a}" for n, a in addrs.items()), flush=True)

    try:
        code = run_up(launcher, timeout=startup_timeout, on_ready=ready)
    except LaunchError as e:
        raise fail(str(e)) from None
    if code == 0:
        print("modelport up: stopped", flush=True)
    raise typer.Exit(code)
