"""Where the CLI finds the services: flags > environment > config file > defaults.

The config file (``--config FILE``, ``$MODELPORT_CONFIG``, else ``~/.config/modelport/config.yaml``
when it exists) is YAML with the keys of ``GatewayConfig``; unknown keys are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from modelport.client import DEFAULT_ADDRESSES, Client
from modelport.runtime.channels import ClientTLS

DEFAULT_CONFIG = Path("~/.config/modelport/config.yaml")


class GatewayConfig(BaseModel):
    """Connection settings of the gateway (addresses, TLS, token, RPC timeout)."""

    model_config = ConfigDict(extra="forbid")

    converter: str = DEFAULT_ADDRESSES["converter"]
    optimizer: str = DEFAULT_ADDRESSES["optimizer"]
    inference: str = DEFAULT_ADDRESSES["inference"]
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    auth_token: str | None = None
    timeout: float = 3600.0

    def client(self) -> Client:
        tls = None
        if self.tls_ca or self.tls_cert or self.tls_key:
            tls = ClientTLS(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, server_name=self.tls_server_name)
        return Client(converter=self.converter, optimizer=self.optimizer, inference=self.inference, tls=tls,
                      token=self.auth_token, timeout=self.timeout)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the problem."""


def load_config(path: Path | None, overrides: dict) -> GatewayConfig:
    """Merge the config file (if any) with flag/env ``overrides`` (None = not given)."""
    data: dict = {}
    explicit = path is not None
    path = Path(path or os.environ.get("MODELPORT_CONFIG") or DEFAULT_CONFIG).expanduser()
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping (converter: host:port, ...)")
        data.update(loaded)
    elif explicit:
        raise ConfigError(f"config file not found: {path}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{loc}' (allowed: {', '.join(GatewayConfig.model_fields)})")
            else:
                problems.append(f"'{loc}': {err['msg'].lower()}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
