"""The client's calls join the caller's OpenTelemetry trace: the first
unit's span is a child of the caller's current span, as the units exported
it to the receiver (conftest.py)."""

import os
import time

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider

from dnet_client import Client

FIRST_UNIT = os.environ.get("FIRST_UNIT")
# Units export in batches, every few seconds.
PATIENCE_S = 60

pytestmark = pytest.mark.skipif(
    FIRST_UNIT is None or os.environ.get("DNET_TEST_OTLP_PORT") is None,
    reason="needs a cascade exporting to DNET_TEST_OTLP_PORT (scripts/test_python_client.sh)",
)


def test_a_call_joins_the_callers_trace(otlp_receiver):
    tracer = TracerProvider().get_tracer("dnet-client-test")
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    with Client(FIRST_UNIT) as client:
        with tracer.start_as_current_span("caller") as caller:
            client.classify(image)
    context = caller.get_span_context()
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    ended = time.monotonic() + PATIENCE_S
    # The first unit's span is the caller's child; the units after it are
    # children of the first, and each unit exports on its own timer.
    while time.monotonic() < ended:
        first = [s for s in otlp_receiver.spans() if s.name == "dnet.unit" and s.parent_span_id == span_id]
        if first:
            break
        time.sleep(0.2)
    assert len(first) == 1, f"no dnet.unit span under the caller's span within {PATIENCE_S} s"
    assert first[0].trace_id == trace_id, first
