"""Structural checks of encoded images, run before any native decoder sees their bytes.

DALI 2.4's decoders can segfault (not raise) on malformed input inside a multi-image batch: a JPEG
start followed by random bytes crashed a pure-DALI 100-image batch 8 times in 10 (docs/ROBUSTNESS.md).
A segfault kills the worker and Beam retries the same bundle until the job fails, so an image goes to
DALI only when its header structure has been walked here and found sane; anything else is decoded by
Pillow alone, where a bad file is a Python exception.

The checks read headers only (a JPEG's marker segments up to its first scan, a PNG's chunks up to its
first IDAT, ...): a few microseconds an image, next to about 1.6 ms to decode a 0.5 MP JPEG.
`dali_problem(data)` returns None for bytes DALI may decode, or why they must not reach it.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["dali_problem", "image_format"]

_U16BE = struct.Struct(">H")


def image_format(data: bytes) -> str | None:
    """The format named by the bytes' signature: jpeg, png, webp, gif, bmp, tiff, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def dali_problem(data: bytes) -> str | None:
    """None when `data` is structurally sound for DALI's decoders; otherwise the reason it is not
    (the image then goes to Pillow alone)."""
    kind = image_format(data)
    if kind is None:
        return "unrecognised image signature"
    if kind == "gif":
        return "GIF is decoded by Pillow"  # DALI has no GIF decoder
    return _CHECKS[kind](data)


# --- JPEG -----------------------------------------------------------------------------------------

# Frame types DALI's JPEG decoders handle: baseline, extended and progressive Huffman (8-bit).
_SOF_DECODED = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
# Lossless, hierarchical and arithmetic-coded frames: legal but rare, and left to Pillow.
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _check_jpeg(data: bytes) -> str | None:
    end = len(data)
    position = 2
    frame: dict[int, tuple[int, int, int]] | None = None  # component id -> (h, v, quant table)
    height_width = (0, 0)
    progressive = False
    quant_tables: set[int] = set()
    huffman_tables: set[tuple[int, int]] = set()  # (class: 0 DC / 1 AC, id)
    while True:
        if position + 4 > end:
            return "JPEG ends before its first scan"
        if data[position] != 0xFF:
            return f"no JPEG marker at offset {position}"
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD9:
            return f"JPEG marker 0x{marker:02X} before the first scan"
        length = _U16BE.unpack_from(data, position + 2)[0]
        if length < 2 or position + 2 + length > end:
            return f"JPEG segment 0x{marker:02X} at offset {position} runs past the data"
        segment = data[position + 4 : position + 2 + length]
        if marker in _SOF_DECODED:
            if frame is not None:
                return "JPEG has a second frame header"
            frame, problem = _jpeg_frame(segment)
            if problem:
                return problem
            height_width = struct.unpack_from(">HH", segment, 1)
            progressive = marker == 0xC2
        elif marker in _SOF_OTHER:
            return f"JPEG frame type 0x{marker:02X} (lossless, hierarchical or arithmetic) is decoded by Pillow"
        elif marker == 0xDB:
            problem = _jpeg_quant_tables(segment, quant_tables)
            if problem:
                return problem
        elif marker == 0xC4:
            problem = _jpeg_huffman_tables(segment, huffman_tables)
            if problem:
                return problem
        elif marker == 0xDD:
            if length != 4:
                return "JPEG restart interval segment has the wrong length"
        elif marker == 0xDA:
            problem = _jpeg_scan(segment, frame, progressive, quant_tables, huffman_tables)
            if problem:
                return problem
            scan_bytes = end - (position + 2 + length)
            # Every 8x8 block of the first scan takes at least one bit of Huffman code: a frame size
            # far beyond the data (32768x65500 in 3 KB) segfaulted DALI's GPU decoder.
            blocks = _jpeg_scan_blocks(frame, segment, height_width)
            if scan_bytes * 8 < blocks:
                return f"JPEG frame of {height_width[1]}x{height_width[0]} needs {blocks} blocks, " \
                       f"more than its {scan_bytes} bytes of scan data can hold"
            return None
        elif marker in (0xC8, 0xDC, 0xDE, 0xDF):  # JPG extension, DNL, DHP, EXP
            return f"JPEG marker 0x{marker:02X} is not supported before the first scan"
        position += 2 + length


def _jpeg_frame(segment: bytes):
    if len(segment) < 6:
        return None, "JPEG frame header is too short"
    precision, height, width, count = segment[0], *struct.unpack_from(">HH", segment, 1), segment[5]
    if precision != 8:
        return None, f"{precision}-bit JPEG is decoded by Pillow"
    if width == 0 or height == 0:
        return None, f"JPEG frame size {width}x{height} (a zero height needs a DNL marker)"
    if count not in (1, 3, 4) or len(segment) != 6 + 3 * count:
        return None, f"JPEG frame header with {count} component(s) and {len(segment)} bytes"
    components: dict[int, tuple[int, int, int]] = {}
    for offset in range(6, 6 + 3 * count, 3):
        ident, sampling, table = segment[offset], segment[offset + 1], segment[offset + 2]
        h, v = sampling >> 4, sampling & 0x0F
        if ident in components or not (1 <= h <= 4 and 1 <= v <= 4) or table > 3:
            return None, f"JPEG frame component {ident} is invalid (sampling {h}x{v}, table {table})"
        components[ident] = (h, v, table)
    return components, None


def _jpeg_scan_blocks(frame, scan, height_width) -> int:
    """8x8 blocks the scan covers: whole MCUs when it interleaves components, else the component's own."""
    height, width = height_width
    h_max = max(h for h, _, _ in frame.values())
    v_max = max(v for _, v, _ in frame.values())
    idents = [scan[offset] for offset in range(1, 1 + 2 * scan[0], 2)]
    if len(idents) > 1:
        mcus = _ceil_div(width, 8 * h_max) * _ceil_div(height, 8 * v_max)
        return mcus * sum(frame[ident][0] * frame[ident][1] for ident in idents)
    h, v, _ = frame[idents[0]]
    return _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_quant_tables(segment: bytes, defined: set[int]) -> str | None:
    offset = 0
    while offset < len(segment):
        precision, table = segment[offset] >> 4, segment[offset] & 0x0F
        size = 64 * (precision + 1)
        if precision > 1 or table > 3 or offset + 1 + size > len(segment):
            return "JPEG quantisation table segment is malformed"
        values = segment[offset + 1 : offset + 1 + size]
        if not any(values):
            return "JPEG quantisation table is all zeros"
        defined.add(table)
        offset += 1 + size
    return None if offset else "JPEG quantisation table segment is empty"


def _jpeg_huffman_tables(segment: bytes, defined: set[tuple[int, int]]) -> str | None:
    offset = 0
    while offset < len(segment):
        if offset + 17 > len(segment):
            return "JPEG Huffman table segment is truncated"
        table_class, table = segment[offset] >> 4, segment[offset] & 0x0F
        counts = segment[offset + 1 : offset + 17]
        total = sum(counts)
        if table_class > 1 or table > 3 or total == 0 or total > 256 or offset + 17 + total > len(segment):
            return "JPEG Huffman table segment is malformed"
        # The code lengths must form a prefix code: at most 2**length codes of each length.
        codes = 0
        for length, count in enumerate(counts, start=1):
            codes = (codes << 1) + count
            if codes > 1 << length:
                return "JPEG Huffman table is not a valid prefix code"
        defined.add((table_class, table))
        offset += 17 + total
    return None if offset else "JPEG Huffman table segment is empty"


def _jpeg_scan(segment, frame, progressive, quant_tables, huffman_tables) -> str | None:
    if frame is None:
        return "JPEG scan before any frame header"
    if not quant_tables.issuperset(table for _, _, table in frame.values()):
        return "JPEG frame uses a quantisation table that is not defined"
    if not segment:
        return "JPEG scan header is empty"
    count = segment[0]
    if not 1 <= count <= len(frame) or len(segment) != 4 + 2 * count:
        return f"JPEG scan header with {count} component(s) and {len(segment)} bytes"
    start, stop, approximation = segment[-3], segment[-2], segment[-1]
    high, low = approximation >> 4, approximation & 0x0F
    if progressive:
        if stop > 63 or start > stop or (start == 0 and stop != 0) or (start > 0 and count != 1):
            return f"JPEG progressive scan has spectral range {start}..{stop} for {count} component(s)"
        if high > 13 or low > 13:
            return "JPEG progressive scan has an invalid successive approximation"
    elif start != 0 or stop != 63 or approximation != 0:
        return f"JPEG sequential scan has spectral range {start}..{stop}, approximation {approximation}"
    blocks, seen = 0, set()
    for offset in range(1, 1 + 2 * count, 2):
        ident, tables = segment[offset], segment[offset + 1]
        if ident not in frame or ident in seen:
            return f"JPEG scan names component {ident}, which the frame does not define (or twice)"
        seen.add(ident)
        h, v, _ = frame[ident]
        blocks += h * v
        dc, ac = tables >> 4, tables & 0x0F
        needs_dc = not progressive or (start == 0 and high == 0)
        needs_ac = not progressive or start > 0
        if (needs_dc and (0, dc) not in huffman_tables) or (needs_ac and (1, ac) not in huffman_tables):
            return "JPEG scan uses a Huffman table that is not defined"
    if count > 1 and blocks > 10:
        return f"JPEG scan has {blocks} blocks per MCU (at most 10)"
    return None


# --- PNG ------------------------------------------------------------------------------------------

_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _check_png(data: bytes) -> str | None:
    position, end = 8, len(data)
    first = True
    palette = False
    colour_type = -1
    while True:
        if position + 12 > end:
            return "PNG ends before its first IDAT chunk"
        length = struct.unpack_from(">I", data, position)[0]
        kind = data[position + 4 : position + 8]
        if length > 0x7FFFFFFF or position + 12 + length > end:
            return f"PNG chunk {kind!r} at offset {position} runs past the data"
        body = data[position + 8 : position + 8 + length]
        if not kind.isalpha():
            return f"PNG chunk type {kind!r} is not a chunk name"
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, position + 8 + length)[0]:
            return f"PNG chunk {kind.decode()} fails its CRC"
        if first:
            if kind != b"IHDR" or length != 13:
                return "PNG does not start with a 13-byte IHDR chunk"
            width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if not (0 < width < 1 << 31 and 0 < height < 1 << 31):
                return f"PNG size {width}x{height} is out of range"
            if depth not in _PNG_DEPTHS.get(colour_type, ()) or compression or filtering or interlace > 1:
                return f"PNG header has depth {depth}, colour type {colour_type}, methods " \
                       f"{compression}/{filtering}/{interlace}"
            first = False
        elif kind == b"PLTE":
            if length == 0 or length % 3 or length > 768:
                return "PNG palette has an invalid length"
            palette = True
        elif kind == b"IDAT":
            if colour_type == 3 and not palette:
                return "PNG with a palette colour type has no PLTE before IDAT"
            return None
        elif kind in (b"IEND", b"IHDR"):
            return f"PNG chunk {kind.decode()} before the first IDAT"
        position += 12 + length


# --- WebP -----------------------------------------------------------------------------------------


def _check_webp(data: bytes) -> str | None:
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size < 4 or riff_size + 8 > len(data):
        return f"WebP RIFF size {riff_size} does not fit the {len(data)} bytes"
    end = riff_size + 8
    position = 12
    extended = False
    while True:
        if position + 8 > end:
            return "WebP ends before its image chunk"
        kind = data[position : position + 4]
        size = struct.unpack_from("<I", data, position + 4)[0]
        body = data[position + 8 : position + 8 + size]
        if position + 8 + size > end:
            return f"WebP chunk {kind!r} runs past the data"
        if kind == b"VP8X" and position == 12:
            if size < 10:
                return "WebP VP8X chunk is too short"
            if body[0] & 0x02:  # animation
                return "animated WebP is decoded by Pillow"
            extended = True
        elif kind == b"VP8 ":
            return _webp_lossy(body)
        elif kind == b"VP8L":
            return _webp_lossless(body)
        elif not extended or kind in (b"ANIM", b"ANMF"):
            return f"WebP chunk {kind!r} where the image should be"
        position += 8 + size + (size & 1)


def _webp_lossy(body: bytes) -> str | None:
    if len(body) < 10:
        return "WebP VP8 chunk is too short"
    tag = body[0] | body[1] << 8 | body[2] << 16
    if tag & 1 or body[3:6] != b"\x9d\x01\x2a":
        return "WebP VP8 chunk does not start with a key frame"
    if (tag >> 5) > len(body) - 10:
        return "WebP VP8 first partition runs past the chunk"
    width, height = (struct.unpack_from("<H", body, 6)[0] & 0x3FFF), (struct.unpack_from("<H", body, 8)[0] & 0x3FFF)
    return None if width and height else "WebP VP8 size is zero"


def _webp_lossless(body: bytes) -> str | None:
    if len(body) < 5 or body[0] != 0x2F:
        return "WebP VP8L chunk has no signature"
    bits = struct.unpack_from("<I", body, 1)[0]
    if bits >> 29:
        return "WebP VP8L version is not 0"
    return None


# --- BMP ------------------------------------------------------------------------------------------


def _check_bmp(data: bytes) -> str | None:
    if len(data) < 26:
        return "BMP header is truncated"
    offset, header_size = struct.unpack_from("<II", data, 10)
    if header_size not in (40, 52, 56, 108, 124) or len(data) < 14 + header_size:
        return f"BMP info header of {header_size} bytes is not supported here"
    width, height, planes, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if width <= 0 or height == 0 or planes != 1 or bits not in (8, 24, 32) or compression not in (0, 3):
        return f"BMP {width}x{height}, {bits} bits, compression {compression} is decoded by Pillow"
    row = (width * bits + 31) // 32 * 4
    colours = struct.unpack_from("<I", data, 46)[0] if bits == 8 else 0
    if colours > 256:
        return f"BMP palette of {colours} colours"
    palette_end = 14 + header_size + 4 * (colours or (256 if bits == 8 else 0))
    if offset < 14 + header_size or (bits == 8 and offset < palette_end) or offset + row * abs(height) > len(data):
        return "BMP pixel data runs past the file"
    return None


# --- TIFF -----------------------------------------------------------------------------------------

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
# Uncompressed, LZW, Deflate (both codes), PackBits: what DALI's TIFF decoder reads.
_TIFF_COMPRESSIONS = (1, 5, 8, 32946, 32773)


def _check_tiff(data: bytes) -> str | None:
    order = "<" if data[:2] == b"II" else ">"
    end = len(data)
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd < 8 or ifd + 2 > end:
        return "TIFF first directory is outside the file"
    count = struct.unpack_from(order + "H", data, ifd)[0]
    if count == 0 or ifd + 2 + 12 * count > end:
        return "TIFF first directory runs past the file"
    tags: dict[int, list[int]] = {}
    previous = -1
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
        if tag <= previous:  # TIFF 6.0 sorts a directory's tags; a flipped bit in a tag breaks the order
            return f"TIFF tags are out of order ({tag} after {previous})"
        previous = tag
        size = _TIFF_TYPE_SIZES.get(kind)
        if size is None:
            return f"TIFF tag {tag} has unknown type {kind}"
        if n * size > 4:
            where = struct.unpack_from(order + "I", data, entry + 8)[0]
            if where + n * size > end:
                return f"TIFF tag {tag} points outside the file"
        else:
            where = entry + 8
        if kind in (3, 4) and n <= 65536:
            fmt = order + ("H" if kind == 3 else "I") * n
            tags[tag] = list(struct.unpack_from(fmt, data, where))
    width, height = tags.get(256, [0])[0], tags.get(257, [0])[0]
    if not width or not height:
        return "TIFF has no image size"
    if tags.get(259, [1])[0] not in _TIFF_COMPRESSIONS:
        return f"TIFF compression {tags[259][0]} is decoded by Pillow"
    if any(bits != 8 for bits in tags.get(258, [1])) or tags.get(277, [1])[0] not in (1, 3, 4):
        return "TIFF sample layout is decoded by Pillow"
    # One BitsPerSample value per sample: a GPU decoder segfaulted on an RGB TIFF whose SamplesPerPixel
    # tag was lost (3 bits-per-sample values, 1 sample per pixel by default; docs/ROBUSTNESS.md).
    if len(tags.get(258, [8])) not in (1, tags.get(277, [1])[0]):
        return "TIFF BitsPerSample and SamplesPerPixel disagree"
    if tags.get(262, [1])[0] == 2 and tags.get(277, [1])[0] < 3:
        return "RGB TIFF with fewer than 3 samples per pixel"
    if 322 in tags or 324 in tags:
        return "tiled TIFF is decoded by Pillow"
    offsets, counts = tags.get(273), tags.get(279)
    if not offsets or not counts or len(offsets) != len(counts):
        return "TIFF strips are not described"
    if any(offset + length > end for offset, length in zip(offsets, counts)):
        return "TIFF strip data runs past the file"
    if tags.get(259, [1])[0] == 1 and sum(counts) < width * height * len(tags.get(258, [1])):
        return "uncompressed TIFF strips hold fewer bytes than its pixels"
    return None


_CHECKS = {"jpeg": _check_jpeg, "png": _check_png, "webp": _check_webp, "bmp": _check_bmp, "tiff": _check_tiff}
