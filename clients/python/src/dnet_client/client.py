"""The blocking client."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import grpc
import numpy as np

from . import _calls
from ._proto import QstatusMessage_pb2, TransmissionUnit_pb2_grpc
from .errors import from_rpc_error
from .images import Answer

Metadata = Sequence[Tuple[str, str]]


class Client:
    """Calls the first unit of a cascade (a transmission unit or a direct
    unit) at `address` ("host:port").

    - `timeout`: each call's deadline in seconds (None: the unit's own);
    - `attempts`: tries of a call answered UNAVAILABLE, with gRPC's
      exponential backoff and retry throttling, within the deadline (1 to 5;
      1: no retry);
    - `tls_ca`, `tls_cert`, `tls_key`, `tls_domain`: TLS as the units'
      `--tls-*` flags configure it (PEM files; the name to verify).

    Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        address: str,
        *,
        timeout: Optional[float] = 30.0,
        attempts: int = 3,
        tls_ca: Optional[str] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_domain: Optional[str] = None,
    ) -> None:
        self._channel = _calls.open_channel(grpc, address, attempts, tls_ca, tls_cert, tls_key, tls_domain)
        self._stub = TransmissionUnit_pb2_grpc.DNetStub(self._channel)
        self.timeout = timeout

    def classify(
        self,
        images: np.ndarray,
        *,
        normalised: bool = False,
        thresholds: Optional[Sequence[float]] = None,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> List[Answer]:
        """One answer per image (see `images.to_request_x` for the forms
        accepted). `thresholds`: exits 1..15 for this call only (units with
        --allow-threshold-override). `metadata`: gRPC metadata to send. With
        `opentelemetry` installed, the call carries the current span's trace
        context (unless `metadata` has a `traceparent`): the units' spans
        join the caller's trace. Raises a `DNetError` subclass."""
        request = _calls.request(images, normalised, thresholds)
        try:
            reply = self._stub.Compute(
                request, timeout=_calls.deadline(timeout, self.timeout), metadata=_calls.with_trace_context(metadata)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return _calls.answers(reply)

    def qstatus(self, *, timeout: Optional[float] = None) -> Tuple[int, int]:
        """(messages waiting in the unit's queue, its computation units)."""
        try:
            reply = self._stub.Qstatus(QstatusMessage_pb2.QstatusRequest(), timeout=_calls.deadline(timeout, self.timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return reply.qlength, reply.consumer

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
