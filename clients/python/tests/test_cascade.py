"""Against a real cascade 8 -> 12 -> 16 (scripts/cascade.sh sets
FIRST_UNIT; `make test` runs these): the client's answers equal test-unit's
for the same images; an expiring deadline, a refused request and a unit
that does not answer raise their exceptions with the unit's message."""

import asyncio
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dnet_client import AsyncClient, Client, DeadlineExceeded, Unavailable, UnitError

REPOSITORY = Path(__file__).resolve().parents[3]
FIRST_UNIT = os.environ.get("FIRST_UNIT")
IMAGES = 32

pytestmark = pytest.mark.skipif(
    FIRST_UNIT is None, reason="needs a cascade: scripts/cascade.sh pytest ... (make test runs it)"
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """IMAGES labelled CIFAR-10 records (label byte + R, G, B planes), seeded."""
    rng = np.random.default_rng(2026)
    pixels = rng.integers(0, 256, size=(IMAGES, 3, 32, 32), dtype=np.uint8)
    path = tmp_path_factory.mktemp("dataset") / "images.bin"
    with path.open("wb") as out:
        for label, image in zip(rng.integers(0, 10, size=IMAGES), pixels):
            out.write(bytes([int(label)]) + image.tobytes())
    return path, pixels


@pytest.fixture(scope="module")
def test_unit_answers(images):
    """(exit, category) of each image, one request each, as test-unit answers them."""
    path, _ = images
    binary = Path(os.environ.get("DNET_BIN_DIR", REPOSITORY / "target/release")) / "test-unit"
    run = subprocess.run(
        [str(binary), "-a", FIRST_UNIT, "--dataset", str(path), "-n", str(IMAGES), "-c", "1", "--each"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    answers = re.findall(r"^#\d+: exit (\d+) \(category (\d+)\)", run.stdout, re.MULTILINE)
    assert len(answers) == IMAGES, run.stdout
    return [(int(exit), int(category)) for exit, category in answers]


def test_answers_equal_test_units_for_the_same_images(images, test_unit_answers):
    _, pixels = images
    with Client(FIRST_UNIT) as client:
        ours = []
        for image in pixels:
            (answer,) = client.classify(image)
            ours.append((answer.exit_layer, answer.category))
            assert answer.probabilities.shape == (10,)
            assert answer.category == int(np.argmax(answer.probabilities))
            assert [hop.exit_layer for hop in answer.hops] == [8, 12, 16][: len(answer.hops)]
            assert answer.hops[-1].exit_layer == answer.exit_layer
            assert not answer.degraded
    assert ours == test_unit_answers
    # The demo's thresholds answer some images at exit 8 and hand others on
    # to exit 16: answers that crossed one unit and all three.
    assert {8, 16} <= {exit for exit, _ in ours}, ours


def test_the_asyncio_client_answers_as_the_blocking_one(images, test_unit_answers):
    _, pixels = images

    async def classify_all():
        async with AsyncClient(FIRST_UNIT) as client:
            replies = await asyncio.gather(*(client.classify(image.transpose(1, 2, 0)) for image in pixels))
            return [(answer.exit_layer, answer.category) for (answer,) in replies]

    assert asyncio.run(classify_all()) == test_unit_answers


def test_a_batch_is_answered_per_sample(images):
    _, pixels = images
    with Client(FIRST_UNIT) as client:
        answers = client.classify(pixels)
    assert len(answers) == IMAGES
    assert all(answer.exit_layer in (8, 12, 16) for answer in answers)


def test_qstatus_reads_the_first_units_queue():
    with Client(FIRST_UNIT) as client:
        waiting, consumers = client.qstatus()
    assert waiting >= 0 and consumers >= 1, (waiting, consumers)


def test_an_expiring_deadline_raises_deadline_exceeded(images):
    _, pixels = images
    with Client(FIRST_UNIT) as client:
        # Layers 0 to 8 alone take milliseconds: 1 ms cannot be met.
        with pytest.raises(DeadlineExceeded):
            client.classify(pixels[0], timeout=0.001)


def test_a_refused_request_raises_with_the_units_message(images):
    _, pixels = images
    with Client(FIRST_UNIT) as client:
        # The demo's units allow no threshold override: they answer ERROR.
        with pytest.raises(UnitError, match="--allow-threshold-override"):
            client.classify(pixels[0], thresholds=[0.5] * 15)


def test_no_unit_raises_unavailable_after_the_retries(images):
    _, pixels = images
    # Port 1 on loopback: nothing listens.
    with Client("127.0.0.1:1", attempts=3, timeout=10) as client:
        with pytest.raises(Unavailable):
            client.classify(pixels[0])
