"""Crash-fuzz campaign for the image decoder: does any malformed image kill the decoding process?

Each case is one malformed image, made deterministically from (seed, index), decoded in the middle of a
full batch of good images (as the reader feeds DALI) by a worker child process. The parent watches the
child: when it dies (a segfault, an abort) or stops making progress, the case it was on is recorded and
a new child goes on from the next case. The good images around each bad one must come back with exactly
their reference pixels.

    python -m tests.support.decoder_fuzz --cases 20000                 # through DaliImageDecoder (checked)
    python -m tests.support.decoder_fuzz --cases 2000 --mode raw       # straight into DALI, no structural check
    python -m tests.support.decoder_fuzz --cases 2000 --mode isolated-raw   # no check, DALI in a child process
    python -m tests.support.decoder_fuzz --cases 2000 --device gpu     # DALI 'mixed'

`python3 dev.py fuzz-decoder ...` runs it in the project's environment. tests/pipelines/test_decoder_crash.py
keeps a seeded few-hundred-case run in the test suite; docs/ROBUSTNESS.md records the large campaigns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import select
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from tests.support.images import make_image

# --- valid images the mutations start from ---------------------------------------------------------


def _pixels(seed: int, width: int, height: int) -> np.ndarray:
    return make_image(seed, width, height, noise=12)


def _encode(pixels: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def base_images() -> dict[str, list[bytes]]:
    """Valid images of each format and variant, the material every mutation starts from."""
    small, wide = _pixels(1, 64, 48), _pixels(2, 150, 97)
    return {
        "jpeg": [
            _encode(small, "JPEG", quality=90),
            _encode(wide, "JPEG", quality=75, subsampling=0),
            _encode(wide, "JPEG", "L", quality=85),
            _encode(wide, "JPEG", "CMYK", quality=85),
        ],
        "jpeg_progressive": [_encode(wide, "JPEG", quality=85, progressive=True),
                             _encode(small, "JPEG", "L", progressive=True)],
        "jpeg_restart": [_encode(wide, "JPEG", quality=85, restart_marker_blocks=3),
                         _encode(small, "JPEG", quality=90, progressive=True, restart_marker_rows=1)],
        "png": [_encode(small, "PNG"), _encode(wide, "PNG", "P"), _encode(wide, "PNG", "LA"),
                _encode(small, "PNG", "RGBA")],
        "webp": [_encode(wide, "WEBP", quality=80), _encode(small, "WEBP", lossless=True)],
        "tiff": [_encode(small, "TIFF"), _encode(wide, "TIFF", compression="tiff_lzw"),
                 _encode(small, "TIFF", compression="packbits")],
        "bmp": [_encode(wide, "BMP"), _encode(small, "BMP", "P")],
    }


def good_images(count: int) -> list[bytes]:
    """The good images a batch is filled with: JPEGs of a few sizes, like a web shard."""
    return [_encode(_pixels(100 + i, 48 + 16 * (i % 5), 40 + 8 * (i % 3)), "JPEG", quality=85)
            for i in range(count)]


# --- mutations ------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each marker segment up to and including the first SOS."""
    segments, position = [], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = struct.unpack_from(">H", data, position + 2)[0]
        segments.append((position, position + 2 + length))
        position += 2 + length
        if marker == 0xDA:
            break
    return segments


def _scan_start(data: bytes) -> int:
    segments = _jpeg_segments(data)
    return segments[-1][1] if segments else 2


def _flip_bits(rng: random.Random, data: bytearray, start: int, stop: int, flips: int) -> None:
    for _ in range(flips):
        position = rng.randrange(start, max(stop, start + 1))
        if position < len(data):
            data[position] ^= 1 << rng.randrange(8)


def _jpeg_case(rng: random.Random, kind: str, base: bytes) -> bytes:
    data = bytearray(base)
    scan = _scan_start(base)
    segments = _jpeg_segments(base)
    if kind == "soi_random":
        return b"\xff\xd8\xff" + rng.randbytes(rng.randrange(1, 20000))
    if kind == "soi_app0_random":
        return b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randrange(1, 20000))
    if kind == "cut_after_segment":
        ends = [end for _, end in segments] + [len(base) - 2]
        return bytes(data[: rng.choice(ends)])
    if kind == "cut_in_scan":
        return bytes(data[: rng.randrange(scan, len(base))])
    if kind == "scan_random":
        start = rng.randrange(scan, len(base) - 2)
        span = rng.randrange(1, min(2000, len(base) - 2 - start) + 1)
        data[start : start + span] = rng.randbytes(span)
        return bytes(data)
    if kind == "scan_bitflip":
        _flip_bits(rng, data, scan, len(base) - 2, rng.randrange(1, 20))
        return bytes(data)
    if kind == "header_bitflip":
        _flip_bits(rng, data, 2, scan, rng.randrange(1, 5))
        return bytes(data)
    if kind == "header_insert":
        position = rng.randrange(2, scan)
        data[position:position] = rng.randbytes(rng.randrange(1, 64))
        return bytes(data)
    if kind == "segment_length":
        offset, _ = rng.choice(segments)
        data[offset + 2 : offset + 4] = struct.pack(">H", rng.choice([0, 1, 2, 3, rng.randrange(65536)]))
        return bytes(data)
    if kind == "table_random":
        tables = [(o, e) for o, e in segments if base[o + 1] in (0xDB, 0xC4)] or segments
        offset, end = rng.choice(tables)
        start = rng.randrange(offset + 4, max(end, offset + 5))
        span = rng.randrange(1, 40)
        data[start : start + span] = rng.randbytes(span)
        return bytes(data[: len(base)])
    if kind == "absurd_size":
        frames = [o for o, _ in segments if 0xC0 <= base[o + 1] <= 0xCF and base[o + 1] not in (0xC4, 0xC8, 0xCC)]
        offset = frames[0]
        sizes = [0, 1, 7, 65535, 65500, 32768, rng.randrange(65536)]
        data[offset + 5 : offset + 9] = struct.pack(">HH", rng.choice(sizes), rng.choice(sizes))
        return bytes(data)
    if kind == "restart_markers":
        markers = [i for i in range(scan, len(base) - 1) if base[i] == 0xFF and 0xD0 <= base[i + 1] <= 0xD7]
        for position in rng.sample(markers, min(len(markers), rng.randrange(1, 4))) if markers else []:
            data[position + 1] = rng.choice([0xD0 + rng.randrange(8), 0x00, 0xD9, 0xDA, rng.randrange(256)])
        return bytes(data)
    if kind == "eoi_early":
        position = rng.randrange(scan, len(base) - 2)
        data[position : position + 2] = b"\xff\xd9"
        return bytes(data)
    raise ValueError(kind)


def _png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    chunks, position = [], 8
    while position + 12 <= len(data):
        length = struct.unpack_from(">I", data, position)[0]
        chunks.append((position, length, data[position + 4 : position + 8]))
        position += 12 + length
    return chunks


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute every chunk's CRC, so that a mutation reaches the decoder past the CRC check."""
    for position, length, _kind in _png_chunks(bytes(data)):
        end = position + 8 + length
        if end + 4 <= len(data):
            data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[position + 4 : end])))


def _png_case(rng: random.Random, kind: str, base: bytes) -> bytes:
    data = bytearray(base)
    chunks = _png_chunks(base)
    if kind == "cut":
        return bytes(data[: rng.randrange(8, len(base))])
    if kind == "header_bitflip":
        _flip_bits(rng, data, 8, chunks[1][0] + 8, rng.randrange(1, 4))
        if rng.random() < 0.7:
            _fix_png_crcs(data)
        return bytes(data)
    if kind == "idat_random":
        idat = next(c for c in chunks if c[2] == b"IDAT")
        start = rng.randrange(idat[0] + 8, idat[0] + 8 + idat[1])
        span = rng.randrange(1, 200)
        data[start : min(start + span, idat[0] + 8 + idat[1])] = rng.randbytes(
            min(span, idat[0] + 8 + idat[1] - start))
        _fix_png_crcs(data)
        return bytes(data)
    if kind == "absurd_size":
        data[16:24] = struct.pack(">II", rng.choice([1, 65535, 1 << 20, rng.randrange(1, 1 << 31)]),
                                  rng.choice([1, 65535, 1 << 20, rng.randrange(1, 1 << 31)]))
        _fix_png_crcs(data)
        return bytes(data)
    if kind == "chunk_length":
        position, _, _ = rng.choice(chunks)
        data[position : position + 4] = struct.pack(">I", rng.randrange(1 << 32))
        return bytes(data)
    raise ValueError(kind)


def _generic_case(rng: random.Random, kind: str, base: bytes, header: int) -> bytes:
    data = bytearray(base)
    if kind == "cut":
        return bytes(data[: rng.randrange(1, len(base))])
    if kind == "header_bitflip":
        _flip_bits(rng, data, 0, min(header, len(base)), rng.randrange(1, 5))
        return bytes(data)
    if kind == "body_random":
        start = rng.randrange(header, len(base) - 1)
        span = rng.randrange(1, 500)
        data[start : start + span] = rng.randbytes(min(span, len(base) - start))
        return bytes(data[: len(base)])
    if kind == "insert":
        position = rng.randrange(0, len(base))
        data[position:position] = rng.randbytes(rng.randrange(1, 64))
        return bytes(data)
    raise ValueError(kind)


def _absurd_generic(rng: random.Random, fmt: str, base: bytes) -> bytes:
    data = bytearray(base)
    huge = [0, 1, 0x3FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]
    if fmt == "bmp":
        data[18:26] = struct.pack("<II", rng.choice(huge), rng.choice(huge))
    elif fmt == "webp":
        position = 12
        # VP8: sizes at chunk+8+6; VP8L: 14-bit fields packed after the signature
        data[position + 8 + 6 : position + 8 + 10] = rng.randbytes(4)
    else:  # tiff: rewrite the first IFD entries' values with absurd numbers
        order = "<" if base[:2] == b"II" else ">"
        ifd = struct.unpack_from(order + "I", base, 4)[0]
        count = struct.unpack_from(order + "H", base, ifd)[0]
        for _ in range(rng.randrange(1, 4)):
            entry = ifd + 2 + 12 * rng.randrange(count)
            data[entry + 8 : entry + 12] = struct.pack(order + "I", rng.choice(huge))
    return bytes(data)


KINDS: dict[str, list[str]] = {
    "jpeg": ["soi_random", "soi_app0_random", "cut_after_segment", "cut_in_scan", "scan_random", "scan_bitflip",
             "header_bitflip", "header_insert", "segment_length", "table_random", "absurd_size", "eoi_early"],
    "jpeg_progressive": ["cut_after_segment", "cut_in_scan", "scan_random", "scan_bitflip", "header_bitflip",
                         "table_random"],
    "jpeg_restart": ["restart_markers", "scan_random", "cut_in_scan", "header_bitflip"],
    "png": ["cut", "header_bitflip", "idat_random", "absurd_size", "chunk_length"],
    "webp": ["cut", "header_bitflip", "body_random", "insert", "absurd_size"],
    "tiff": ["cut", "header_bitflip", "body_random", "insert", "absurd_size"],
    "bmp": ["cut", "header_bitflip", "body_random", "insert", "absurd_size"],
}
ALL_KINDS = [(family, kind) for family, kinds in KINDS.items() for kind in kinds]
_HEADER_BYTES = {"webp": 40, "tiff": 200, "bmp": 54}


def make_case(seed: int, index: int, bases: dict[str, list[bytes]]) -> tuple[str, bytes]:
    """Case `index` of campaign `seed`: ("family/kind", bytes), the same on every machine."""
    rng = random.Random(seed * 1_000_003 + index)
    family, kind = ALL_KINDS[index % len(ALL_KINDS)]
    base = rng.choice(bases[family])
    if family.startswith("jpeg"):
        data = _jpeg_case(rng, kind, base)
    elif family == "png":
        data = _png_case(rng, kind, base)
    elif kind == "absurd_size":
        data = _absurd_generic(rng, family, base)
    else:
        data = _generic_case(rng, kind, base, _HEADER_BYTES[family])
    return f"{family}/{kind}", data


# --- a shard for end-to-end runs ------------------------------------------------------------------

# Cases of the seed-0 campaign that crashed DALI 2.4 fed without the structural check (`--mode raw`,
# 100-image batches, 4 threads): each killed the process in at least one run.
SEED0_RAW_CRASHES = (2, 6, 38, 44, 70, 106, 112, 120, 142, 147, 201, 204, 210, 233, 259)
# Cases of the seed-0 campaign that crashed DALI 2.4's GPU ('mixed') decoder behind the check (NVIDIA
# H200): 52, a frame size far beyond the scan data (the check as it first was); 411, an RGB TIFF that
# lost its SamplesPerPixel tag (2026-12-04, behind the scan-length rule).
SEED0_GPU_CRASHES = (52, 411)
_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiff": "tif", "bmp": "bmp"}


def write_malformed_shard(path: str, good: int = 300, bad_cases=SEED0_RAW_CRASHES[:12]) -> dict[str, bytes]:
    """A WebDataset shard of `good` JPEGs (with captions) and the given seed-0 cases spread evenly through
    it; returns the malformed samples' keys -> bytes."""
    import tarfile

    bases = base_images()
    every = max(good // max(len(bad_cases), 1), 1)
    malformed: dict[str, bytes] = {}
    members: list[tuple[str, bytes]] = []
    bad = list(bad_cases)
    for index in range(good):
        pixels = _pixels(1000 + index, 160 + 8 * (index % 7), 120 + 8 * (index % 5))
        members += [(f"good{index:05d}.jpg", _encode(pixels, "JPEG", quality=90)),
                    (f"good{index:05d}.txt", f"good image {index}".encode())]
        if index % every == every // 2 and bad:
            case = bad.pop(0)
            kind, data = make_case(0, case, bases)
            key = f"bad{case:05d}"
            malformed[key] = data
            members += [(f"{key}.{_EXTENSIONS[kind.split('/')[0].split('_')[0]]}", data),
                        (f"{key}.txt", kind.encode())]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return malformed


# --- the worker child -----------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    """Decode cases start..stop, each inside a full batch of good images; report each one done."""
    from beam_curator.formats.decoding import DaliImageDecoder
    from beam_curator.formats.isolated_decoding import IsolatedDecoder

    options = {"batch_size": args.batch_size, "num_threads": args.threads, "use_gpu": args.device == "gpu",
               "_check_structure": args.mode.endswith("checked")}
    decoder = (IsolatedDecoder if args.mode.startswith("isolated") else DaliImageDecoder)(**options)
    goods = good_images(args.batch_size - 1)
    reference = [getattr(result, "pixels", result) for result in decoder.decode(goods)]
    # The GPU's decoders differ in rounding from one batch layout to another (up to 4 levels were seen
    # on an H200): there a neighbour is wrong when it is far from its reference, not when it differs.
    exact = args.device == "cpu"
    bases = base_images()
    for index in range(args.start, args.stop):
        _, bad = make_case(args.seed, index, bases)
        where = index % args.batch_size
        batch = [*goods[:where], bad, *goods[where:]]
        results = [getattr(result, "pixels", result) for result in decoder.decode(batch)]
        others = results[:where] + results[where + 1 :]
        wrong = sum(not _same_image(got, want, exact) for got, want in zip(others, reference))
        result = results[where]
        outcome = ("decoded" if isinstance(result, np.ndarray)
                   else "contained" if "decoding process died" in str(result) else "failed")
        sys.stdout.write(f"{index} {outcome} {wrong}\n")
        sys.stdout.flush()


def _same_image(got, want: np.ndarray, exact: bool) -> bool:
    if not isinstance(got, np.ndarray) or got.shape != want.shape:
        return False
    if exact:
        return np.array_equal(got, want)
    return float(np.abs(got.astype(np.int16) - want).mean()) < 1.0


# --- the parent -----------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    cases: int
    mode: str
    device: str
    batch_size: int
    threads: int
    crashes: list[dict] = field(default_factory=list)  # index, kind, returncode (or "hang")
    wrong_neighbours: list[dict] = field(default_factory=list)  # good images that came back wrong
    # kind -> {decoded, failed, crashed, contained (isolated modes: the child died on it, the worker lived)}
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def run_campaign(*, seed: int, cases: int, mode: str = "checked", device: str = "cpu", batch_size: int = 100,
                 threads: int = 4, hang_seconds: float = 120.0, keep: str | None = None, start: int = 0) -> Report:
    """Run cases start..start+cases in worker children; a child that dies is replaced after its case."""
    report = Report(seed, cases, mode, device, batch_size, threads)
    outcomes: dict[str, Counter] = {}
    bases = base_images()
    started = time.perf_counter()
    next_index, stop = start, start + cases
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    while next_index < stop:
        command = [sys.executable, "-m", "tests.support.decoder_fuzz", "--worker", "--seed", str(seed), "--start",
                   str(next_index), "--stop", str(stop), "--mode", mode, "--device", device,
                   "--batch-size", str(batch_size), "--threads", str(threads)]
        child = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        hung = False
        while True:
            ready, _, _ = select.select([child.stdout], [], [], hang_seconds)
            if not ready:
                hung = True
                child.kill()
                break
            line = child.stdout.readline()
            if not line:
                break
            index, outcome, wrong = line.split()
            kind, _ = make_case(seed, int(index), bases)
            outcomes.setdefault(kind, Counter())[outcome] += 1
            if int(wrong):
                report.wrong_neighbours.append({"index": int(index), "kind": kind, "wrong": int(wrong)})
            next_index = int(index) + 1
        returncode = child.wait()
        if next_index >= stop and not hung:
            break
        if returncode == 0 and not hung:
            raise RuntimeError(f"decoder fuzz worker stopped early at case {next_index} without an error")
        kind, data = make_case(seed, next_index, bases)
        outcomes.setdefault(kind, Counter())["crashed"] += 1
        report.crashes.append({"index": next_index, "kind": kind, "returncode": "hang" if hung else returncode})
        if keep:
            os.makedirs(keep, exist_ok=True)
            with open(os.path.join(keep, f"crash-{seed}-{next_index}-{kind.replace('/', '-')}.bin"), "wb") as out:
                out.write(data)
        next_index += 1
    report.outcomes = {kind: dict(counts) for kind, counts in sorted(outcomes.items())}
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int)
    parser.add_argument("--mode", choices=["checked", "raw", "isolated-checked", "isolated-raw"],
                        default="checked", help="checked: DaliImageDecoder as the reader uses it; raw: without "
                        "the structural check; isolated-*: the same through IsolatedDecoder (a child process)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--keep", help="a directory to save each crashing case in")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    report = run_campaign(seed=args.seed, cases=args.cases, mode=args.mode, device=args.device,
                          batch_size=args.batch_size, threads=args.threads, keep=args.keep, start=args.start)
    for kind, counts in report.outcomes.items():
        print(f"{kind:40s} " + "  ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    contained = sum(counts.get("contained", 0) for counts in report.outcomes.values())
    print(f"{report.cases} cases ({report.mode}, {report.device}) in {report.seconds}s: "
          f"{len(report.crashes)} crashed the decoder, {contained} crashed its child process and were contained, "
          f"{len(report.wrong_neighbours)} corrupted a good neighbour")
    for crash in report.crashes:
        print(f"  crash: case {crash['index']} {crash['kind']} (exit {crash['returncode']})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report), out, indent=1)
    return 1 if report.crashes or report.wrong_neighbours else 0


if __name__ == "__main__":
    sys.exit(main())
