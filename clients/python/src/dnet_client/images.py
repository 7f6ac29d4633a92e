"""Images to a request's `x`, and a reply's `result` to answers.

The contract (docs/architecture.md, "Tensor encoding"): `x` is safetensors
with one F32 tensor named "x", shape [N, 3, 32, 32] at start layer 0,
normalised per channel with CIFAR-10's mean and deviation, as the original
client and `test-unit` do; a SUCCESS `result` holds "category" (I64 [N]),
"probs" (F32 [N, 10]) and "exit_layer" (I64 [N]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from safetensors.numpy import load, save

# CIFAR-10's per-channel mean and standard deviation (test-unit's, the original's).
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float64).reshape(1, 3, 1, 1)
STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float64).reshape(1, 3, 1, 1)
SIDE = 32


@dataclass(frozen=True)
class Hop:
    """What one unit did with the request (its `HopRecord`)."""

    unit: str
    start_layer: int
    exit_layer: int
    queue_wait_us: int
    compute_us: int
    total_us: int
    batch_size: int
    threshold: float


@dataclass(frozen=True)
class Answer:
    """One sample's answer."""

    category: int
    probabilities: np.ndarray
    # The exit that answered (1..16); None when no unit answered the sample.
    exit_layer: Optional[int]
    # A unit answered below its threshold because the units after it could
    # not have answered before the deadline (--answer-when-late).
    degraded: bool
    # The request's hop records, first unit first (shared by its samples).
    hops: List[Hop] = field(default_factory=list)


def to_request_x(images: np.ndarray, normalised: bool = False) -> bytes:
    """`images` as a request's `x`: uint8 pixels (0..255) or floats on the
    0..1 scale, each image 3 x 32 x 32 or 32 x 32 x 3, one image or a batch
    (N first). With `normalised`, floats already normalised as the model
    expects (channels first) are sent as they are."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4:
        raise ValueError(f"images must be one image or a batch (N first), not shape {array.shape}")
    if array.shape[1:] == (SIDE, SIDE, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1:] != (3, SIDE, SIDE):
        raise ValueError(f"each image must be 3 x 32 x 32 or 32 x 32 x 3, not {array.shape[1:]}")
    if array.shape[0] == 0:
        raise ValueError("no images")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float64) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("images hold NaN or infinite values")
        if normalised:
            return save({"x": np.ascontiguousarray(array, dtype=np.float32)})
        scaled = array.astype(np.float64)
    else:
        raise ValueError(f"images must be uint8 or floating point, not {array.dtype}")
    # In float64, then to float32, as test-unit computes it: the same bits.
    x = ((scaled - MEAN) / STD).astype(np.float32)
    return save({"x": np.ascontiguousarray(x)})


def hops_of(records) -> List[Hop]:
    """The reply's hop records as `Hop`s."""
    return [
        Hop(
            unit=r.unit,
            start_layer=r.start_layer,
            exit_layer=r.exit_layer,
            queue_wait_us=r.queue_wait_us,
            compute_us=r.compute_us,
            total_us=r.total_us,
            batch_size=r.batch_size,
            threshold=r.threshold,
        )
        for r in records
    ]


def answers_of(result: bytes, degraded: bool, hops: List[Hop]) -> List[Answer]:
    """A SUCCESS `result` (or NOT_SUCCESS `answered`) as one `Answer` per
    sample; exit layer 0 (handed on, not answered) becomes None."""
    tensors = load(result)
    categories = tensors["category"]
    probabilities = tensors["probs"]
    exits = tensors.get("exit_layer")
    answers = []
    for i, category in enumerate(categories):
        exit_layer = int(exits[i]) if exits is not None else None
        answers.append(
            Answer(
                category=int(category),
                probabilities=probabilities[i],
                exit_layer=exit_layer or None,
                degraded=degraded,
                hops=hops,
            )
        )
    return answers
