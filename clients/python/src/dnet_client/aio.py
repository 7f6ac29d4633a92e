"""The asyncio client: `Client`'s calls as coroutines (grpc.aio)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import grpc
import grpc.aio
import numpy as np

from . import _calls
from ._proto import QstatusMessage_pb2, TransmissionUnit_pb2_grpc
from .errors import from_rpc_error
from .images import Answer

Metadata = Sequence[Tuple[str, str]]


class AsyncClient:
    """`dnet_client.Client` for asyncio: the same arguments; `classify` and
    `qstatus` are coroutines. Use it with `async with`, or await `close()`."""

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
        self._channel = _calls.open_channel(grpc.aio, address, attempts, tls_ca, tls_cert, tls_key, tls_domain)
        self._stub = TransmissionUnit_pb2_grpc.DNetStub(self._channel)
        self.timeout = timeout

    async def classify(
        self,
        images: np.ndarray,
        *,
        normalised: bool = False,
        thresholds: Optional[Sequence[float]] = None,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
    ) -> List[Answer]:
        """As `Client.classify`."""
        request = _calls.request(images, normalised, thresholds)
        try:
            reply = await self._stub.Compute(
                request, timeout=_calls.deadline(timeout, self.timeout), metadata=_calls.with_trace_context(metadata)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return _calls.answers(reply)

    async def qstatus(self, *, timeout: Optional[float] = None) -> Tuple[int, int]:
        """As `Client.qstatus`."""
        try:
            reply = await self._stub.Qstatus(
                QstatusMessage_pb2.QstatusRequest(), timeout=_calls.deadline(timeout, self.timeout)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return reply.qlength, reply.consumer

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
