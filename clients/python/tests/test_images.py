"""Encoding and decoding without a unit: the forms of images accepted, the
normalisation test-unit applies, the committed stubs matching proto/."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save

from dnet_client.images import answers_of, to_request_x

HERE = Path(__file__).resolve().parent


def x_of(images, **kwargs):
    return load(to_request_x(images, **kwargs))["x"]


def test_uint8_images_are_normalised_per_channel_as_test_unit_does():
    pixels = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    pixels[0, 0, 0, 0] = 255  # red, first pixel
    pixels[0, 2, 0, 0] = 255  # blue, first pixel
    x = x_of(pixels)
    assert x.dtype == np.float32 and x.shape == (1, 3, 32, 32)
    # test-unit's own figures (crates/test-unit/src/inputs.rs): (p - mean) / std.
    assert x[0, 0, 0, 0] == np.float32((1.0 - 0.4914) / 0.2023)
    assert x[0, 1, 0, 0] == np.float32((0.0 - 0.4822) / 0.1994)
    assert x[0, 2, 0, 0] == np.float32((1.0 - 0.4465) / 0.2010)


def test_every_layout_of_the_same_images_gives_the_same_tensor():
    rng = np.random.default_rng(7)
    chw = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    hwc = chw.transpose(0, 2, 3, 1)
    floats = chw.astype(np.float64) / 255.0
    expected = x_of(chw)
    assert np.array_equal(x_of(hwc), expected)
    assert np.array_equal(x_of(floats), expected)
    assert np.array_equal(x_of(chw[0]), expected[:1]), "one image without N"
    assert np.array_equal(x_of(expected, normalised=True), expected), "normalised floats as they are"


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 3, 28, 28), np.uint8), "3 x 32 x 32"),
        (np.zeros((32, 32), np.uint8), "one image or a batch"),
        (np.zeros((0, 3, 32, 32), np.uint8), "no images"),
        (np.zeros((1, 3, 32, 32), np.int32), "uint8 or floating point"),
        (np.full((1, 3, 32, 32), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_images_are_refused_before_a_call(images, message):
    with pytest.raises(ValueError, match=message):
        to_request_x(images)


def test_a_result_reads_as_one_answer_per_sample():
    result = save(
        {
            "category": np.array([3, 9], dtype=np.int64),
            "probs": np.eye(10, dtype=np.float32)[[3, 9]],
            "exit_layer": np.array([8, 0], dtype=np.int64),
        }
    )
    first, second = answers_of(result, degraded=False, hops=[])
    assert (first.category, first.exit_layer, first.probabilities[3]) == (3, 8, 1.0)
    assert (second.category, second.exit_layer) == (9, None), "exit 0: handed on, not answered"


def test_the_committed_stubs_match_proto():
    run = subprocess.run(
        [sys.executable, str(HERE.parent / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr + run.stdout
