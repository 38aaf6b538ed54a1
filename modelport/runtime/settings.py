"""Settings common to every service; each service subclasses with its own env prefix.

Precedence: command-line flags > environment (``MODELPORT_<SERVICE>_<FIELD>``) > defaults.
Flags come from the fields through pydantic-settings' CLI source, so every setting is also a flag
(``--max-message-mb``, booleans as ``--log-json/--no-log-json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service has."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore", use_attribute_docstrings=True,
                                      cli_kebab_case=True, cli_implicit_flags=True)

    host: str = "[::]"
    """Interface to bind; '[::]' listens on all, '127.0.0.1' on loopback only."""
    port: int = 0
    """gRPC port; 0 picks a free one (the bound port is logged)."""
    store: Path = Path("./.modelport/store")
    """Artifact store folder; services that share it share artifacts without copying."""
    max_artifact_bytes: int = 16 << 30
    """Largest artifact accepted by Upload (RESOURCE_EXHAUSTED beyond)."""
    max_message_mb: int = 256
    """gRPC send/receive message limit in MiB (models and tensors are big)."""
    keepalive_time_ms: int = 30_000
    """Server keepalive ping interval."""
    grace_period_s: float = 30.0
    """On SIGTERM: health goes NOT_SERVING, then in-flight calls get this long to finish."""
    drain_delay_s: float = 0.0
    """On SIGTERM: time between health turning NOT_SERVING and refusing new calls (lets load
    balancers and health-checking clients move away; set it to a few seconds on Kubernetes)."""
    metrics_port: int = -1
    """Prometheus metrics HTTP port; -1 disables, 0 picks a free one."""
    log_level: str = "INFO"
    """Python log level name."""
    event_loop: str = "auto"
    """asyncio event loop of the process: auto (uvloop when installed, else asyncio's own), uvloop, asyncio.
    uvloop handles grpc.aio's events with less CPU per call (measured 5-20% less on the serving path)."""
    log_json: bool = False
    """Emit one JSON object per log line."""
    tls_cert: Path | None = None
    """PEM server certificate chain; with tls_key enables TLS."""
    tls_key: Path | None = None
    """PEM private key for tls_cert."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    tls_peer_ca: Path | None = None
    """PEM CA that signed the other services' certificates; when set, artifact pulls from peers use
    TLS and present tls_cert/tls_key as the client certificate (for peers that require mTLS)."""
    auth_token: str | None = Field(default=None, repr=False)
    """Bearer token required on every RPC that writes to the store, pulls from an origin, loads a model or
    runs model code (upload, convert, inspect, optimize, load, unload, shared-memory registration)."""
    auth_token_file: Path | None = None
    """File holding auth_token (its first line; a mounted Secret, say): the token stays out of the command line
    and the environment, where other processes of the host could read it. Give auth_token or this, not both."""
    allow_unauthenticated: bool = False
    """Run without a token on an interface other than loopback (every mutating RPC open to anyone who can
    reach the port). Without it such a service refuses to start; on loopback no token is needed."""
    advertise_address: str = ""
    """Address other services use to pull artifacts from this one (default host:port)."""
    allowed_origins: str = ""
    """Comma-separated host:port of the peers this service may pull artifacts from (ArtifactRef.origin);
    its own address is always allowed. Any other origin is refused with PERMISSION_DENIED."""
    metrics_host: str = ""
    """Interface the Prometheus metrics HTTP server binds (default: the gRPC --host)."""

    @model_validator(mode="after")
    def _token_from_file(self) -> ServiceSettings:
        """auth_token from auth_token_file; a missing, unreadable or empty file refuses to start (fail closed)."""
        if self.auth_token_file is None:
            return self
        path = self.auth_token_file
        if self.auth_token:
            raise ValueError("give the auth token once: auth_token (--auth-token) or auth_token_file "
                             "(--auth-token-file), not both")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read auth_token_file {path}: {getattr(e, 'strerror', None) or e}; "
                             "point it at the file holding the token") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ValueError(f"auth_token_file {path} is empty; write the token into it (one line)")
        self.auth_token = token
        return self


def parse_settings(cls: type[ServiceSettings], argv: list[str] | None = None, prog: str | None = None):
    """Build settings from env, then override with the flags given in ``argv`` (pydantic-settings' CLI source).

    Every field is a kebab-case flag (``--max-message-mb``), booleans come as ``--x/--no-x``, and the
    field docstrings are the help text.
    """
    return cls(_cli_parse_args=list(sys.argv[1:] if argv is None else argv), _cli_prog_name=prog)
