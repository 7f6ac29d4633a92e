"""What the blocking and the asyncio client share: the channel's settings,
the request, and the reading of a reply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import grpc
import numpy as np

from ._proto import ComputationMessage_pb2 as messages
from .errors import NotAnswered, UnitError
from .images import Answer, answers_of, hops_of, to_request_x

# Replies carry a result per sample; a request of many images can be large.
MAX_MESSAGE_BYTES = 64 << 20
SERVICE = "unit.DNet"


def deadline(per_call: Optional[float], client: Optional[float]) -> Optional[float]:
    """A call's timeout: its own when given (0 included), else the client's."""
    return client if per_call is None else per_call


def retry_policy(attempts: int) -> str:
    """gRPC's service config retrying UNAVAILABLE with exponential backoff,
    within the call's deadline. UNAVAILABLE means the first unit could not
    take the call, or a unit after it could not (the first units then
    computed their part, which a retry computes again: the computation is
    pure, so that is safe, but it is work). gRPC's retry throttling stops
    retrying when most calls fail, so an outage does not multiply the load."""
    config = {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    return json.dumps(config)


def channel_options(attempts: int, tls_domain: Optional[str]) -> List[Tuple[str, object]]:
    """The channel's options: message sizes, the retry policy, the name a
    TLS certificate must carry."""
    if not 1 <= attempts <= 5:
        # gRPC caps maxAttempts at 5.
        raise ValueError(f"attempts must be 1 to 5, not {attempts}")
    options: List[Tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1 if attempts > 1 else 0),
    ]
    if attempts > 1:
        # gRPC's retry policy takes 2 attempts at least.
        options.append(("grpc.service_config", retry_policy(attempts)))
    if tls_domain:
        options.append(("grpc.ssl_target_name_override", tls_domain))
    return options


def credentials(
    tls_ca: Optional[str], tls_cert: Optional[str], tls_key: Optional[str]
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials from PEM files (a CA; a client certificate and key for
    units that require one), or None for plain TCP."""
    if tls_cert and not tls_key or tls_key and not tls_cert:
        raise ValueError("tls_cert and tls_key go together")
    if not (tls_ca or tls_cert):
        return None
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca), private_key=read(tls_key), certificate_chain=read(tls_cert)
    )


def open_channel(
    grpc_module,
    address: str,
    attempts: int,
    tls_ca: Optional[str],
    tls_cert: Optional[str],
    tls_key: Optional[str],
    tls_domain: Optional[str],
):
    """A channel to `address` from `grpc_module` (`grpc` or `grpc.aio`, which
    open channels alike): TLS when a CA or client certificate is given."""
    options = channel_options(attempts, tls_domain)
    creds = credentials(tls_ca, tls_cert, tls_key)
    if creds is None:
        return grpc_module.insecure_channel(address, options=options)
    return grpc_module.secure_channel(address, creds, options=options)


def request(images: np.ndarray, normalised: bool, thresholds: Optional[Sequence[float]]) -> messages.ComputationRequest:
    """A request computing `images` from the first layer."""
    if thresholds is not None and len(thresholds) != 15:
        raise ValueError(f"thresholds: exactly 15 (exits 1..15), not {len(thresholds)}")
    return messages.ComputationRequest(
        start_layer=0, x=to_request_x(images, normalised), thresholds=list(thresholds or [])
    )


def with_trace_context(metadata: Optional[Sequence[Tuple[str, str]]]) -> Optional[List[Tuple[str, str]]]:
    """`metadata` plus the caller's current OpenTelemetry trace context
    (`traceparent`, `tracestate`), when `opentelemetry` is installed and a
    span is current: the units' spans then join the caller's trace. A
    `traceparent` the caller put in `metadata` is kept."""
    given = list(metadata or [])
    if any(key.lower() == "traceparent" for key, _ in given):
        return given or None
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return given or None
    carrier: dict = {}
    inject(carrier)
    return given + sorted(carrier.items()) or None


def answers(reply: messages.ComputationResponse) -> List[Answer]:
    """The reply's answers, or the exception its status means."""
    hops = hops_of(reply.hops)
    kind = reply.WhichOneof("data")
    if reply.status == messages.ComputationResponse.SUCCESS and kind == "result":
        return answers_of(reply.result, reply.degraded, hops)
    if reply.status == messages.ComputationResponse.NOT_SUCCESS:
        partial = answers_of(reply.answered, reply.degraded, hops) if reply.answered else []
        raise NotAnswered(
            f"the cascade ended at exit {reply.exit_layer} without answering every sample "
            "(its last unit has no next unit)",
            partial,
        )
    if reply.status == messages.ComputationResponse.ERROR:
        raise UnitError(reply.error_message or "the unit answered ERROR without a message")
    raise UnitError(f"a reply with status {reply.status} and no result")
