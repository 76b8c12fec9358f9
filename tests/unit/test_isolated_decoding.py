"""IsolatedDecoder: DALI in a child process; a native crash fails one image, never the worker."""

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

from beam_curator.formats.decoding import DaliImageDecoder, ImageDecodeError
from beam_curator.formats.isolated_decoding import IsolatedDecoder
from tests.support.helpers import encode, make_image, pixels_of

IMAGES = [encode(make_image(i, 64 + 8 * (i % 3), 48), quality=90) for i in range(12)]


@pytest.fixture(scope="module")
def reference():
    return pixels_of(DaliImageDecoder(batch_size=5, num_threads=2, use_gpu=False).decode(IMAGES))


@pytest.fixture
def decoder():
    decoder = IsolatedDecoder(batch_size=5, num_threads=2, use_gpu=False)
    yield decoder
    decoder.close()


def _leftover_segments(pid):
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"beam_curator-decoded-{pid}-")] \
        if os.path.isdir("/dev/shm") else []


def test_decodes_exactly_as_in_process(decoder, reference):
    results = pixels_of(decoder.decode([*IMAGES, b"\xff\xd8\xff\xe0 not really a jpeg", IMAGES[0]]))
    assert len(results) == 14 and decoder.device == "cpu"
    for got, want in zip(results[:12], reference):
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    assert isinstance(results[12], ImageDecodeError) and "not given to DALI" in str(results[12])
    np.testing.assert_array_equal(results[13], reference[0])
    assert decoder.submit(IMAGES[:3]).result()[2].pixels.shape == reference[2].shape
    assert decoder.take_pillow_count() == 0
    gif = decoder.decode([encode(make_image(40), "GIF"), IMAGES[1]])
    assert gif[0].pixels.shape == (64, 96, 3) and decoder.take_pillow_count() == 1 and decoder.take_pillow_count() == 0


def test_shared_memory_is_reused_once_the_arrays_are_gone(decoder, reference):
    kept = pixels_of(decoder.decode(IMAGES))  # held: its segment must not be reused while these arrays live
    for _ in range(8):
        decoder.decode(IMAGES)
        gc.collect()
    assert len(decoder._segments) == 2  # the held batch's, and one reused by the eight others
    for got, want in zip(kept, reference):
        np.testing.assert_array_equal(got, want)
    assert _leftover_segments(decoder._child.pid) == []  # names are removed as soon as mapped


def test_a_crashed_decoding_process_fails_nothing_but_the_crash(decoder, reference):
    pid = decoder._child.pid
    os.kill(pid, signal.SIGSEGV)  # a native crash between two batches
    results = pixels_of(decoder.decode(IMAGES))
    assert decoder.restarts == 1 and decoder._child.pid != pid
    for got, want in zip(results, reference):
        np.testing.assert_array_equal(got, want)  # the batch was decoded again, one image at a time


def test_the_image_the_process_dies_on_fails_alone(decoder, reference):
    # Kill the child while it works on the one-at-a-time pass: the image in flight fails alone.
    original = decoder._decode_in_child
    calls = []

    def crash_on_the_fourth(images):
        calls.append(len(images))
        if len(calls) == 4:  # the batch, then images 0, 1, 2 one at a time: image 2 crashes
            threading.Timer(0.0, os.kill, (decoder._child.pid, signal.SIGSEGV)).start()
            time.sleep(0.5)
        return original(images)

    decoder._decode_in_child = crash_on_the_fourth
    os.kill(decoder._child.pid, signal.SIGSEGV)
    time.sleep(0.2)
    results = pixels_of(decoder.decode(IMAGES[:5]))
    assert calls[:1] == [5] and decoder.restarts == 2
    assert isinstance(results[2], ImageDecodeError) and "SIGSEGV" in str(results[2])
    for index in (0, 1, 3, 4):
        np.testing.assert_array_equal(results[index], reference[index])
