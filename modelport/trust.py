"""The trust model (DESIGN.md, "Trust model") as code shared by every service: one rule per decision.

- ``current_caller()``: what the RPC's caller proved (set per call by the server interceptor, read by
  domain code that must bind a resource to token holders, e.g. shared-memory regions).
- ``remote_code_allowed``: running a model's own Python code (Lambda layers, custom objects, graph ops
  that touch files) needs the service's ``allow_remote_code`` setting *and* the request's
  ``trust_remote_code``; converter and optimizer ask this one function.
- ``check_model_name`` / ``check_version``: names from requests, checked before they touch a path.
- ``OriginPolicy``: the origins a service may pull artifacts from.
- ``redact``: the last line of defence that keeps internal paths out of what clients read.

Never imports grpc (domain code calls it).
"""

from __future__ import annotations

import contextvars
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from modelport.errors import InvalidArgument, PermissionDenied, Unauthenticated

# ---- the caller ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """What the caller of the current RPC proved. ``token_required`` is False when the service runs
    without a token (then every caller counts as authenticated)."""

    token_required: bool = False
    authenticated: bool = True

    @property
    def trusted(self) -> bool:
        return self.authenticated or not self.token_required


_OPEN = Caller()
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("modelport_caller", default=None)


def set_caller(caller: Caller) -> contextvars.Token:
    """Record the caller of the current RPC (the server interceptor does this for every call)."""
    return _CALLER.set(caller)


def current_caller() -> Caller:
    """The caller of the RPC being handled (an open caller outside RPCs: in-process use)."""
    return _CALLER.get() or _OPEN


def require_token_holder(what: str) -> None:
    """Unauthenticated unless the current caller holds the service's token (or none is configured)."""
    caller = current_caller()
    if not caller.trusted:
        raise Unauthenticated(
            f"{what} belongs to callers holding the service's token; send 'authorization: Bearer <token>' "
            "metadata (tritonclient: headers={'authorization': 'Bearer <token>'})",
            {"reason": "token_required"},
        )


# ---- running a model's own code -------------------------------------------------------------------

REMOTE_CODE_REFUSED = "remote_code_not_allowed"


def remote_code_allowed(requested: bool, allowed: bool, service: str) -> bool:
    """Whether a job may run the model's own code: both the server setting and the request flag.

    A request asking for it on a server that does not allow it is refused with PERMISSION_DENIED
    naming the setting (the request's flag alone never turns safe loading off). Returns False when
    the request did not ask (safe loading), True when both agree.
    """
    if not requested:
        return False
    if not allowed:
        prefix = f"MODELPORT_{service.upper()}_" if service else "MODELPORT_<SERVICE>_"
        raise PermissionDenied(
            "trust_remote_code asks to run the model's own Python code (Lambda layers, custom objects), and "
            f"this {service or 'service'} does not allow that: the operator must start it with "
            f"--allow-remote-code ({prefix}ALLOW_REMOTE_CODE=true), and only for models from trusted sources. "
            "Without it, re-export the model without Lambda layers/custom objects (or as a SavedModel)",
            {"reason": REMOTE_CODE_REFUSED, "setting": "allow_remote_code"},
        )
    return True


def hide_from_model_code() -> bool:
    """Make this (service) process non-dumpable (Linux ``PR_SET_DUMPABLE`` 0): processes of the same user --
    its workers, where a model's own code runs under --allow-remote-code -- can then no longer read its
    ``/proc/<pid>/environ`` (the token a Deployment passes in the environment), its memory, or ptrace it.
    Workers are exec'd, so they stay ordinary processes. Returns whether it took effect."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):  # not Linux
        return False


# ---- names from requests ------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
MAX_VERSION = 2**63 - 1


def check_model_name(name: str, what: str = "model name") -> str:
    """A model name that is safe as one folder name: letters, digits, '_', '-', '.' (not leading), at
    most 128 characters, never '.'/'..'. InvalidArgument otherwise, before any path is built."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        shown = repr(name[:64]) + ("..." if isinstance(name, str) and len(name) > 64 else "")
        raise InvalidArgument(
            f"{what} {shown} is not allowed: use 1-128 letters, digits, '_', '-' or '.' (not first), as in "
            "'resnet50' or 'digits-cnn_v2'; names are folder names in the model repository",
            {"field": what.replace(" ", "_")},
        )
    return name


def check_version(version: str) -> int | None:
    """A version string from a request as a positive int64 (None when empty); InvalidArgument otherwise."""
    if not version:
        return None
    text = version.strip()
    if not text.isdigit() or len(text) > 19:
        raise InvalidArgument(f"version {version[:32]!r} is not a positive integer; versions are 1, 2, 3, ...",
                              {"field": "version"})
    v = int(text)
    if not 1 <= v <= MAX_VERSION:
        raise InvalidArgument(f"version {v} must be between 1 and {MAX_VERSION}", {"field": "version"})
    return v


# ---- origins ------------------------------------------------------------------------------------


def _norm(address: str) -> str:
    a = address.strip().lower()
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        a = a.removeprefix(scheme)
    return a


@dataclass(frozen=True)
class OriginPolicy:
    """The origins (``host:port``) a service pulls artifacts from: its own address plus its configured
    peers. Anything else, including every other port on loopback, is refused before a connection is made."""

    allowed: frozenset[str]

    @classmethod
    def of(cls, addresses: Iterable[str]) -> OriginPolicy:
        return cls(frozenset(_norm(a) for a in addresses if a and a.strip()))

    def check(self, origin: str) -> None:
        if _norm(origin) not in self.allowed:
            raise PermissionDenied(
                f"this service does not pull artifacts from origin {origin[:200]!r}: it is not one of its peers. "
                "Upload the artifact to this service instead, or have the operator add the origin to "
                "--allowed-origins (MODELPORT_<SERVICE>_ALLOWED_ORIGINS)",
                {"reason": "origin_not_allowed"},
            )


# ---- what clients read ------------------------------------------------------------------------------

_INTERNAL_ROOTS: set[str] = set()


def add_internal_root(path: str | os.PathLike) -> None:
    """Name a folder whose layout clients must not read (a store root, a model repository)."""
    for p in {os.path.abspath(path), os.path.realpath(path)}:
        if p not in ("/", ""):
            _INTERNAL_ROOTS.add(p.rstrip("/"))


for _root in (tempfile.gettempdir(), sys.prefix, sys.base_prefix, os.path.expanduser("~"), os.getcwd()):
    add_internal_root(_root)


def redact(text: str) -> str:
    """``text`` with every path under an internal root (temp folders, the interpreter, the home and working
    folders, store roots, repositories) replaced by its last component in angle brackets. What a client
    sent (a key, a name) and public conventions (/dev/shm) stay as they are."""
    if not text or "/" not in text:
        return text
    roots = sorted(_INTERNAL_ROOTS, key=len, reverse=True)
    seg = r"[^\s/'\"`:,;()\[\]{}<>]"  # one path component's characters
    # a root, not followed by more of a component (/app is not /apple), then any /components under it
    pattern = re.compile("(?:" + "|".join(re.escape(r) for r in roots) + ")" + rf"(?!{seg})(?:/{seg}*)*")

    def short(m: re.Match) -> str:
        tail = m.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f"<{tail}>" if tail else "<path>"

    return pattern.sub(short, text)
