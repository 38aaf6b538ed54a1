"""Domain errors shared by every modelport package.

Each class knows its meaning as a gRPC status *name*, never the grpc module: domain code
raises these, and one server interceptor (``modelport.runtime.interceptors``) maps them to
status codes on the wire.
"""

from __future__ import annotations


class ModelportError(Exception):
    """Base of all expected errors. ``status`` is a gRPC status code name."""

    status = "UNKNOWN"

    def __init__(self, message: str, details: dict[str, str] | None = None, payload: object | None = None):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        # A record that travels with the error (a failed ``job_records.ParityReport``); picklable, so it
        # crosses the worker boundary, and the job event stream translates it (JobError.parity).
        self.payload = payload

    def __reduce__(self):  # keep subclasses picklable across worker processes
        return (self.__class__, (self.message, self.details, self.payload))


class InvalidArgument(ModelportError):
    """The request itself is wrong: bad option, unreadable model, malformed dataset."""

    status = "INVALID_ARGUMENT"


class NotFound(ModelportError):
    """A named thing (artifact, model, version) does not exist."""

    status = "NOT_FOUND"


class AlreadyExists(ModelportError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(ModelportError):
    """The request is well formed but the state forbids it (e.g. parity failed)."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(ModelportError):
    """A size cap or a queue bound was hit."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(ModelportError):
    """Temporarily unable to serve (queue full, model loading, origin down); retry later."""

    status = "UNAVAILABLE"


class DeadlineExceeded(ModelportError):
    status = "DEADLINE_EXCEEDED"


class Cancelled(ModelportError):
    status = "CANCELLED"


class Unauthenticated(ModelportError):
    status = "UNAUTHENTICATED"


class PermissionDenied(ModelportError):
    status = "PERMISSION_DENIED"


class Unimplemented(ModelportError):
    status = "UNIMPLEMENTED"


class Internal(ModelportError):
    """A failure the caller cannot fix, with a safe message (e.g. a worker process died)."""

    status = "INTERNAL"


_BY_STATUS = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        Internal,
    )
}


def error_for_status(status: str, message: str, details: dict[str, str] | None = None,
                     payload: object | None = None) -> ModelportError:
    """Rebuild a domain error from a status name (used across process and RPC boundaries)."""
    return _BY_STATUS.get(status, ModelportError)(message, details, payload)
