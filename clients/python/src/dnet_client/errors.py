"""What a call can fail with: one exception type per kind a caller handles
differently, each carrying the unit's own message."""

from __future__ import annotations

from typing import Optional

import grpc


class DNetError(Exception):
    """A call failed. `code` is the gRPC status (None for a unit's ERROR
    reply) and `message` the unit's or gRPC's words."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message if code is None else f"{code.name}: {message}")
        self.message = message
        self.code = code


class UnitError(DNetError):
    """A unit answered ERROR: it refused the request (a wrong shape, an
    override it does not allow, a poison request). Resending it will not help."""


class NotAnswered(DNetError):
    """The last unit handed the request on (NOT_SUCCESS) with no unit after
    it: the cascade ends before exit 16. `answers` holds the samples that
    were answered; the others have `exit_layer` None."""

    def __init__(self, message: str, answers: list) -> None:
        super().__init__(message)
        self.answers = answers


class DeadlineExceeded(DNetError):
    """The call's deadline passed before an answer."""


class Unavailable(DNetError):
    """No unit could take the call (after the retries of the channel's policy)."""


class ResourceExhausted(DNetError):
    """The unit is full (admission refused the call): retry later or elsewhere."""


class InvalidArgument(DNetError):
    """The call was malformed for the unit (before any computation)."""


_BY_CODE = {
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


def from_rpc_error(error: grpc.RpcError) -> DNetError:
    """The exception for a failed gRPC call, with the unit's details."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, DNetError)(details, code)
