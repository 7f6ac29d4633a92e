"""A session-wide OTLP trace receiver on DNET_TEST_OTLP_PORT, where the
cascade's units export their spans (scripts/test_python_client.sh sets it
and OTEL_EXPORTER_OTLP_ENDPOINT for the units): started before any call,
so that every call's spans arrive."""

import os
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import List, Optional

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

PORT = os.environ.get("DNET_TEST_OTLP_PORT")


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._spans: List[Span] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (gRPC's name)
        received = [
            Span(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex())
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> List[Span]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="session", autouse=True)
def otlp_receiver() -> Optional[Receiver]:
    if PORT is None:
        yield None
        return
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    if server.add_insecure_port(f"127.0.0.1:{PORT}") == 0:
        raise RuntimeError(f"the OTLP receiver cannot listen on 127.0.0.1:{PORT}")
    server.start()
    yield receiver
    server.stop(0)
