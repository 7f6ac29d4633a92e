"""Classify a few images through a DNet cascade, blocking and asyncio.

    python example.py [ADDRESS]     (default: $FIRST_UNIT, else 127.0.0.1:50060)
"""

import asyncio
import os
import sys

import numpy as np

from dnet_client import AsyncClient, Client, DNetError

address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FIRST_UNIT", "127.0.0.1:50060")
# Four 32 x 32 RGB images (uint8, height x width x channels), as an image library loads them.
images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)

with Client(address, timeout=10) as client:
    waiting, consumers = client.qstatus()
    print(f"first unit {address}: {waiting} requests waiting, {consumers} computation units")
    for i, image in enumerate(images):
        (answer,) = client.classify(image)
        route = " -> ".join(f"{hop.unit} (exit {hop.exit_layer}, {hop.compute_us / 1000:.1f} ms)" for hop in answer.hops)
        print(f"image {i}: category {answer.category} at exit {answer.exit_layer}, p = {answer.probabilities.max():.3f}; {route}")
    try:
        client.classify(images[0], timeout=0.001)
    except DNetError as error:
        print(f"a 1 ms deadline: {type(error).__name__}: {error.message}")


async def batch() -> None:
    async with AsyncClient(address) as client:
        answers = await client.classify(images)  # one request, four samples
        print("one batch:", [(a.category, a.exit_layer) for a in answers])


asyncio.run(batch())
