"""Image decoding with NVIDIA DALI: one pipeline per worker process, GPU ('mixed') or CPU.

No image reaches DALI before its structure has been checked (beam_curator.formats.image_structure): DALI's
decoders can segfault on malformed bytes, which no Python code can catch. Images that fail the check
(and GIF, which DALI does not decode) are decoded by Pillow alone. DALI decodes a whole batch or fails
it whole, so a batch that fails is decoded again one image at a time to find the bad sample, which
then falls back to Pillow.
Nothing here runs at import time and nothing touches CUDA until a decoder is built on a worker.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import logging
import os
import re
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from beam_curator.formats.image_structure import dali_problem
from beam_curator.formats.model_input import DeviceRow, DeviceRows, ModelInput

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DaliImageDecoder",
    "DecodeOutputs",
    "Decoded",
    "DecodedImages",
    "DecoderBase",
    "ImageDecodeError",
    "cuda_device_count",
    "decode_with_pillow",
    "probe_size",
    "stderr_settled",
]

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
_LIVE_DECODERS: weakref.WeakSet = weakref.WeakSet()


def _release_live_decoders() -> None:
    # DALI pipelines left for interpreter teardown fail in their __del__; release them first.
    for decoder in list(_LIVE_DECODERS):
        if decoder._executor is not None:
            decoder._executor.shutdown(wait=True)
        decoder._pipeline = None


class ImageDecodeError(ValueError):
    """An image's bytes could not be decoded by DALI nor by the Pillow fallback."""


def cuda_device_count() -> int:
    """CUDA devices this process sees, through DALI's backend (0 without a driver)."""
    try:
        from nvidia.dali import backend
    except ImportError as exc:  # pragma: no cover - DALI is a core dependency
        raise ImportError("beam_curator needs NVIDIA DALI: pip install nvidia-dali-cuda120") from exc
    try:
        return int(backend.GetCUDADeviceCount())  # type: ignore[attr-defined]  # made at run time
    except RuntimeError:
        return 0


def decode_with_pillow(data: bytes) -> np.ndarray:
    """Decode to HxWx3 uint8 RGB with Pillow: first frame of animations, EXIF orientation applied
    (as DALI does)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:
        # Pillow names the BytesIO object by address; keep failure messages reproducible.
        message = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise ImageDecodeError(f"{type(exc).__name__}: {message}") from exc


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding its pixels; None when Pillow does
    not recognise the format. Pillow's own decompression-bomb refusal is raised as ImageDecodeError."""
    size = _jpeg_size(data)
    if size is not None:
        return size
    return _pillow_size(data)


# Start-of-frame markers (they hold the size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment; None for anything else or anything odd
    (then Pillow decides). Pillow's header parse costs as much per image as reading the tar."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in _SOF_MARKERS:
            if position + 9 > end:
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return (width, height) if width and height else None  # height 0: defined later (DNL)
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(str(exc)) from exc
    except Exception:
        return None


@dataclasses.dataclass(frozen=True)
class DecodeOutputs:
    """What a decoder hands back of each image beside its height and width: its full-size pixels
    (only when a stage reads them: on the GPU each is a device-to-host copy), and the input of a model
    (`model_input`: CLIP's preprocessing, made in the decoding pipeline; on the GPU it stays there)."""

    pixels: bool = True
    model_input: ModelInput | None = None


@dataclasses.dataclass
class Decoded:
    """One decoded image: its size, its HxWx3 uint8 RGB pixels (a read-only view, when asked for) and
    its model input (3xHxW in the model's dtype: a host array, or a DeviceRow on the GPU, when asked
    for)."""

    height: int
    width: int
    pixels: np.ndarray | None = None
    model_input: Any = None

    @classmethod
    def of(cls, pixels: np.ndarray, outputs: DecodeOutputs) -> Decoded:
        """What `outputs` asks for, made on the host from decoded pixels (images DALI did not decode)."""
        model_input = outputs.model_input.on_host(pixels) if outputs.model_input is not None else None
        return cls(int(pixels.shape[0]), int(pixels.shape[1]), pixels if outputs.pixels else None, model_input)


class DecodedImages(list):
    """What a submitted batch's future gives: decode()'s results, `pillow`, how many of them Pillow
    decoded (DALI refused them, or their structure kept them from DALI), and `pixels_to_host`, how many
    images' full-size pixels came to host memory."""

    pillow = 0
    pixels_to_host = 0


class DecoderBase:
    """What every decoder shares: `submit(images)` runs decode() on one background thread per decoder,
    in the order submitted; `take_pillow_count()` says how many images Pillow decoded since last asked
    (DALI refused them, or their structure kept them from DALI)."""

    _executor: ThreadPoolExecutor | None = None
    _executor_lock = threading.Lock()  # not a decoder's own lock: that one is held while it decodes
    _pillow_decoded = 0
    _count_lock = threading.Lock()

    def take_pillow_count(self) -> int:
        with self._count_lock:
            count, self._pillow_decoded = self._pillow_decoded, 0
        return count

    def _count_pillow(self, count: int = 1) -> None:
        with self._count_lock:
            self._pillow_decoded += count

    def submit(self, images: Sequence[bytes]) -> Future:
        """Start decoding `images` in the background; the future's result is what decode() returns, as
        DecodedImages: with the number of them Pillow decoded, counted for this batch alone.

        Work is done in the order submitted (one background thread per decoder, shared by all callers).
        """
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-decode")
            return self._executor.submit(self._decode_counted, images)

    def _decode_counted(self, images: Sequence[bytes]) -> DecodedImages:
        # On the one decoding thread: the count taken right after decode() is this batch's, whichever
        # DoFn thread submitted it (a count taken later by the caller could hold other threads' batches).
        self.take_pillow_count()
        results = DecodedImages(self.decode(images))
        results.pillow = self.take_pillow_count()
        results.pixels_to_host = sum(isinstance(result, Decoded) and result.pixels is not None for result in results)
        return results

    def decode(self, images: Sequence[bytes]) -> list:
        raise NotImplementedError


class DaliImageDecoder(DecoderBase):
    """A DALI pipeline that decodes batches of encoded images (see DecodeOutputs for what it returns).

    Thread-safe: Beam runs one DoFn instance per harness thread and they share one decoder per
    process, so feeding and running the pipeline is serialised by a lock (DALI itself decodes with
    `num_threads` threads). `submit` decodes on the decoder's own thread, so that the caller reads and
    writes while DALI decodes.
    """

    def __init__(self, *, batch_size: int, num_threads: int, use_gpu: bool, device_id: int = 0,
                 outputs: DecodeOutputs = DecodeOutputs(), _check_structure: bool = True):
        from nvidia.dali import fn, pipeline_def, types

        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = "mixed" if use_gpu else "cpu"
        self.outputs = outputs
        self._lock = threading.Lock()
        self._check_structure = _check_structure  # False only in the crash-fuzz harness (tests/support/decoder_fuzz.py)

        decoder_options = {"device": self.device, "output_type": types.RGB}
        if use_gpu:
            # The default changed between DALI releases; share the work between the hardware
            # JPEG decoder and CUDA explicitly.
            decoder_options["hw_decoder_load"] = 0.65

        @pipeline_def(
            batch_size=batch_size,
            num_threads=num_threads,
            # DALI's CPU-only mode wants device_id=None; a GPU pipeline names its device.
            device_id=device_id if use_gpu else None,
            prefetch_queue_depth=1,
            exec_dynamic=True,
        )
        def _pipeline():
            # no_copy: DALI reads the callers' bytes in place; _run keeps them alive until the outputs are back.
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=True)
            decoded = fn.decoders.image(encoded, **decoder_options)
            # The shapes always (a CPU output, also for images on the GPU: no pixels need copying for
            # them); the pixels and the model input when asked for.
            wanted = [decoded.shape(dtype=types.INT64)]
            if outputs.pixels:
                wanted.append(decoded)
            if outputs.model_input is not None:
                wanted.append(outputs.model_input.dali(decoded))
            return tuple(wanted)

        self._pipeline = _pipeline()
        self._pipeline.build()
        if not _LIVE_DECODERS:
            atexit.register(_release_live_decoders)
        _LIVE_DECODERS.add(self)
        _LOG.info("built DALI %s decoding pipeline (batch_size=%s, num_threads=%s, pixels=%s, model input=%s)",
                  self.device, batch_size, num_threads, outputs.pixels,
                  outputs.model_input.dtype if outputs.model_input else None)

    def decode(self, images: Sequence[bytes]) -> list[Decoded | ImageDecodeError]:
        """Decode `images`; each result is a Decoded or the error that stopped that image alone.

        Only images whose structure passes `dali_problem` reach DALI (its decoders can segfault on
        malformed bytes); the others are decoded by Pillow alone."""
        results: list[Decoded | ImageDecodeError | None] = [None] * len(images)
        checked: list[int] = []  # indexes of the images DALI may decode
        for index, data in enumerate(images):
            problem = (dali_problem(data) if self._check_structure else None) if data else "empty image member"
            if problem is None:
                checked.append(index)
            else:
                results[index] = self._decode_with_pillow(data, f"not given to DALI ({problem})")
        for start in range(0, len(checked), self.batch_size):
            indexes = checked[start : start + self.batch_size]
            decoded = self._decode_checked([images[index] for index in indexes])
            for index, result in zip(indexes, decoded):
                results[index] = result
        return results  # type: ignore[return-value]

    def _decode_checked(self, chunk: Sequence[bytes]) -> list[Decoded | ImageDecodeError]:
        """Decode images that passed the structural check: the whole chunk at once, or one by one
        when DALI fails it."""
        try:
            return list(self._run(chunk))
        except RuntimeError:
            return self._decode_one_by_one(chunk)

    def _run(self, chunk: Sequence[bytes]) -> list[Decoded]:
        arrays = [np.frombuffer(data, dtype=np.uint8) for data in chunk]
        with self._lock, _native_stderr_to_debug_log():
            self._pipeline.feed_input("encoded", arrays)
            shapes, *rest = self._pipeline.run()
        pixels = rest.pop(0) if self.outputs.pixels else None
        model_input = rest.pop(0) if self.outputs.model_input is not None else None
        if pixels is not None and self.device == "mixed":
            pixels = pixels.as_cpu()  # the one device-to-host copy of full-size pixels, made only when asked for
        rows = DeviceRows(model_input) if model_input is not None and self.device == "mixed" else None
        results = []
        for index in range(len(chunk)):
            height, width = (int(extent) for extent in np.asarray(shapes[index])[:2])
            # Zero-copy views: with the dynamic executor an output buffer stays valid, and is not reused,
            # for as long as a view of it lives (tests/unit/test_decoding.py checks this). Copying them out
            # cost as much as decoding.
            results.append(Decoded(
                height, width, np.asarray(pixels[index]) if pixels is not None else None,
                DeviceRow(rows, index) if rows is not None else
                np.asarray(model_input[index]) if model_input is not None else None))
        return results

    def _decode_one_by_one(self, chunk: Sequence[bytes]) -> list[Decoded | ImageDecodeError]:
        results: list[Decoded | ImageDecodeError] = []
        for data in chunk:
            try:
                (decoded,) = self._run([data])
            except RuntimeError as dali_error:
                dali_reason = _dali_reason(dali_error)
                _LOG.debug("DALI could not decode an image (%s), trying Pillow", dali_reason)
                results.append(self._decode_with_pillow(data, f"DALI: {dali_reason}"))
                continue
            results.append(decoded)
        return results

    def _decode_with_pillow(self, data: bytes, why_not_dali: str) -> Decoded | ImageDecodeError:
        """An image DALI did not decode, decoded by Pillow (what the outputs ask for made on the host)."""
        try:
            decoded = Decoded.of(decode_with_pillow(data), self.outputs)
        except ImageDecodeError as pillow_error:
            return ImageDecodeError(f"{why_not_dali}; Pillow: {pillow_error}")
        except ValueError as error:  # the model input could not be made of these pixels
            return ImageDecodeError(f"{why_not_dali}; Pillow decoded it, the model input failed: {error}")
        self._count_pillow()
        return decoded


_STDERR_LOCK = threading.Lock()  # one redirection of fd 2 at a time in this process
_STDERR_CAPTURE: list = []  # the one temporary file it goes to, made on first use


@contextlib.contextmanager
def stderr_settled():
    """While held, fd 2 is the process's own stderr and no decoder redirects it: what a thread printed
    during a redirection has been written back. The CLI holds it to print its last lines and leave
    (os._exit would otherwise drop text a redirection had captured)."""
    with _STDERR_LOCK:
        yield


@contextlib.contextmanager
def _native_stderr_to_debug_log():
    """While DALI runs, what its native libraries print to fd 2 (libjpeg-turbo's "Corrupt JPEG data",
    libpng's errors, nvImageCodec's coloured [ERROR] lines) goes to a temporary file, then to this
    module's logger at DEBUG: the failure record names the image once, in Python. Anything else that
    reached fd 2 meanwhile (another thread's log lines) is written back to stderr."""
    with _STDERR_LOCK:
        if not _STDERR_CAPTURE:
            _STDERR_CAPTURE.append(tempfile.TemporaryFile())  # noqa: SIM115 - open for the process's life
        capture = _STDERR_CAPTURE[0]
        capture.seek(0)
        capture.truncate()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", errors="replace").splitlines(keepends=True):
                text = _ANSI_ESCAPES.sub("", line).strip()
                if _NATIVE_LINE.match(text):
                    _LOG.debug("DALI: %s", text)
                elif text:
                    sys.stderr.write(line)


_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
_NATIVE_LINE = re.compile(r"^(\[(ERROR|WARNING|INFO|DEBUG|TRACE|FATAL)\]|libpng |Corrupt JPEG data|Premature end of "
                          r"JPEG|Invalid JPEG|Unsupported marker|Input file read error|Bogus |Warning: |"
                          r"Not a JPEG|JPEG datastream|Huffman table|Quantization table|TIFF|OpenCV)")


def _dali_reason(error: RuntimeError) -> str:
    """The informative line of a DALI error (they end with boilerplate about the pipeline)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "pipeline" not in line.lower() and not line.startswith(("File ", "C++ context"))]
    return (useful or lines or [type(error).__name__])[-1][:300]
