"""The structural check that stands between encoded bytes and DALI's native decoders."""

import struct
import zlib

import numpy as np
import pytest

from beam_curator.formats.decoding import DaliImageDecoder, ImageDecodeError
from beam_curator.formats.image_structure import dali_problem, image_format
from tests.support.decoder_fuzz import base_images
from tests.support.helpers import encode, make_image, pixels_of

PIXELS = make_image(3, 80, 60)
JPEG = encode(PIXELS, quality=90)


@pytest.mark.parametrize("family", sorted(base_images()))
def test_valid_images_of_every_supported_kind_pass(family):
    for data in base_images()[family]:
        assert dali_problem(data) is None


def _segments(data):
    position, found = 2, []
    while data[position + 1] != 0xDA:
        length = struct.unpack_from(">H", data, position + 2)[0]
        found.append((data[position + 1], position, position + 2 + length))
        position += 2 + length
    return found


def _without(data, marker):
    for found, start, end in _segments(data):
        if found == marker:
            return data[:start] + data[end:]
    raise AssertionError(marker)


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "runs past the data"),
    (JPEG[: _segments(JPEG)[2][2]], "ends before its first scan"),
    (_without(JPEG, 0xC4), "Huffman table that is not defined"),
    (_without(JPEG, 0xDB), "quantisation table that is not defined"),
    (_without(JPEG, 0xC0), "scan before any frame header"),
    (JPEG.replace(b"\xff\xc0", b"\xff\xc9", 1), "arithmetic"),
    (JPEG[: JPEG.index(b"\xff\xda") + 14], "bytes of scan data"),
    (b"<html><body>404</body></html>", "unrecognised image signature"),
    (encode(PIXELS, "GIF"), "GIF is decoded by Pillow"),
])
def test_malformed_jpegs_and_others_are_kept_from_dali(data, reason):
    assert reason in dali_problem(data)


def test_jpeg_frame_and_scan_must_agree():
    frame = JPEG.index(b"\xff\xc0")
    zero_height = bytearray(JPEG)
    zero_height[frame + 5 : frame + 7] = b"\x00\x00"
    assert "zero height" in dali_problem(bytes(zero_height))
    scan = JPEG.index(b"\xff\xda")
    wrong_component = bytearray(JPEG)
    wrong_component[scan + 5] = 9  # the scan's first component id: not one the frame defines
    assert "does not define" in dali_problem(bytes(wrong_component))
    absurd = bytearray(JPEG)
    absurd[frame + 5 : frame + 9] = struct.pack(">HH", 32768, 65500)  # crashed DALI's GPU decoder
    assert "more than its" in dali_problem(bytes(absurd))
    bad_code = bytearray(JPEG)
    huffman = JPEG.index(b"\xff\xc4")
    bad_code[huffman + 5 : huffman + 21] = bytes([3] + [0] * 15)  # three 1-bit codes: not a prefix code
    assert dali_problem(bytes(bad_code)) is not None


def test_png_chunks_are_walked_with_their_crcs():
    png = bytearray(encode(PIXELS, "PNG"))
    assert dali_problem(bytes(png[:40])) is not None
    flipped = bytearray(png)
    flipped[20] ^= 1  # inside IHDR: its CRC no longer matches
    assert "CRC" in dali_problem(bytes(flipped))
    huge = bytearray(png)
    huge[16:24] = struct.pack(">II", 1 << 31, 5)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    assert "out of range" in dali_problem(bytes(huge))


def test_webp_tiff_bmp_headers():
    webp, tiff, bmp = encode(PIXELS, "WEBP"), encode(PIXELS, "TIFF"), encode(PIXELS, "BMP")
    assert [image_format(d) for d in (webp, tiff, bmp)] == ["webp", "tiff", "bmp"]
    assert "RIFF size" in dali_problem(webp[:-10])
    assert "runs past the file" in dali_problem(tiff[:-100])
    assert "runs past the file" in dali_problem(bmp[:-100])
    assert dali_problem(encode(PIXELS, "TIFF", compression="jpeg")) is not None  # left to Pillow


def test_decoder_sends_what_fails_the_check_to_pillow_alone():
    decoder = DaliImageDecoder(batch_size=8, num_threads=2, use_gpu=False)
    gif, broken = encode(PIXELS, "GIF"), b"\xff\xd8\xff\xe0" + bytes(5000)
    results = pixels_of(decoder.decode([JPEG, broken, gif, JPEG]))
    assert results[0].shape == results[3].shape == (60, 80, 3)
    assert isinstance(results[1], ImageDecodeError) and "not given to DALI" in str(results[1])
    assert results[2].shape == (60, 80, 3)  # Pillow decodes the GIF
    np.testing.assert_array_equal(results[0], results[3])


def test_the_tiff_that_crashed_the_gpu_decoder_is_kept_from_dali():
    """Seed 0, case 411 of the crash-fuzz campaign: a flipped bit turned SamplesPerPixel (277) into an
    unknown tag, leaving an RGB TIFF with 3 BitsPerSample values and 1 sample per pixel. DALI's CPU
    decoder refuses it; the GPU decoder segfaulted on an H200 (docs/ROBUSTNESS.md)."""
    from tests.support.decoder_fuzz import make_case

    kind, data = make_case(0, 411, base_images())
    assert kind == "tiff/header_bitflip"
    assert "out of order" in dali_problem(data)
    without_order_problem = bytearray(encode(PIXELS, "TIFF"))
    # The same loss, the tags still in order: SamplesPerPixel is simply missing.
    order = "<" if without_order_problem[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", without_order_problem, 4)[0]
    count = struct.unpack_from(order + "H", without_order_problem, ifd)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from(order + "H", without_order_problem, entry)[0] == 277:
            struct.pack_into(order + "H", without_order_problem, entry, 276)  # still sorted, not 277
    assert dali_problem(bytes(without_order_problem)) in ("TIFF BitsPerSample and SamplesPerPixel disagree",
                                                          "RGB TIFF with fewer than 3 samples per pixel")
