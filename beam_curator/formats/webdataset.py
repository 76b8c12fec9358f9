"""WebDataset tar shards: splitting member names into samples, streaming samples out of a tar, and
writing tars that every WebDataset reader (the webdataset library, DALI, Hugging Face) reads back.

The WebDataset key of a member is its path up to the first `.` of its basename; what follows is the
extension. Members of one sample are adjacent in the tar.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "IMAGE_EXTENSIONS",
    "MAX_MEMBER_NAME_BYTES",
    "RawSample",
    "SkippedMember",
    "TarShardWriter",
    "iter_samples",
    "safe_key",
    "split_member_name",
]

# Image extensions in order of preference when a sample holds several; matched case-insensitively.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024

# USTAR keeps a 100-byte name field; longer names need PAX or GNU records, which DALI misreads.
MAX_MEMBER_NAME_BYTES = 100
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_/-]+$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_/-]")
_SAFE_EXTENSION = re.compile(r"^[A-Za-z0-9_.-]+$")


def split_member_name(name: str) -> tuple[str, str]:
    """Split a tar member name into (key, extension): `dir/a.b.jpg` -> (`dir/a`, `b.jpg`)."""
    directory, _, basename = name.rpartition("/")
    stem, dot, extension = basename.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension if dot else ""


@dataclass
class RawSample:
    """The members of one WebDataset sample, as raw bytes keyed by extension."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    member_names: dict[str, str] = field(default_factory=dict)  # extension -> full member name
    oversized: dict[str, int] = field(default_factory=dict)  # extension -> size of a member not read

    def image_extension(self) -> str | None:
        """The extension of the member holding the image, or None when the sample has none.

        Matched on the last part of the extension, case-insensitively (`JPG`, `v2.jpeg`), in
        IMAGE_EXTENSIONS order; exact extensions win over multi-part ones.
        """
        by_last_part: dict[str, list[str]] = {}
        for extension in [*self.members, *self.oversized]:
            by_last_part.setdefault(extension.rpartition(".")[2].lower(), []).append(extension)
        for candidate in IMAGE_EXTENSIONS:
            if candidate in by_last_part:
                return min(by_last_part[candidate], key=lambda extension: ("." in extension, extension))
        return None


@dataclass(frozen=True)
class SkippedMember:
    """A tar entry that is neither a regular file nor a directory (a link, a device, a FIFO)."""

    name: str
    reason: str


def iter_samples(fileobj: BinaryIO, *, max_member_bytes: int | None = None) -> Iterator[RawSample | SkippedMember]:
    """Stream the samples of a tar (plain or compressed) read from `fileobj`, in tar order.

    Only regular files are read: directories are passed over; links, devices and FIFOs are never
    followed and come out as SkippedMember. A member over `max_member_bytes` is not read; its size is
    in the sample's `oversized`. Members of one key that are not adjacent come out as separate
    samples. Memory holds one sample's members at a time. A damaged tar raises tarfile.ReadError (or
    the decompressor's error) after the samples before the damage.
    """
    current: RawSample | None = None
    # A seekable file is read with tarfile's random-access reader, a third cheaper per member than its
    # stream reader (which re-joins 10 KB chunks); both stop with ReadError on damage.
    mode = "r:*" if _seekable(fileobj) else "r|*"
    with tarfile.open(fileobj=fileobj, mode=mode) as archive:  # type: ignore[call-overload]
        while (info := archive.next()) is not None:
            archive.members.clear()  # tarfile keeps every header it has read: memory stays flat
            if info.isdir():
                continue
            if not info.isreg():
                kind = "symlink" if info.issym() else "hardlink" if info.islnk() else "special file"
                yield SkippedMember(info.name, f"{kind} entries are never followed")
                continue
            key, extension = split_member_name(info.name)
            if current is not None and (
                key != current.key or extension in current.members or extension in current.oversized
            ):
                yield current
                current = None
            if current is None:
                current = RawSample(key=key)
            current.member_names[extension] = info.name
            if max_member_bytes is not None and info.size > max_member_bytes:
                current.oversized[extension] = info.size  # the stream skips its data unread
                continue
            extracted = archive.extractfile(info)
            current.members[extension] = extracted.read() if extracted is not None else b""
    if current is not None:
        yield current


def _seekable(fileobj: BinaryIO) -> bool:
    """True for a file with cheap random access. Beam's CompressedFile (a `.gz`/`.bz2` shard) has
    `seekable` as a property, and seeks by decompressing again: it is read as a stream."""
    seekable = getattr(fileobj, "seekable", None)
    if not callable(seekable):
        return False
    try:
        return bool(seekable())
    except (OSError, ValueError):
        return False


def safe_key(key: str) -> str:
    """A key every WebDataset reader parses back unchanged.

    Relative keys of `[A-Za-z0-9_/-]` short enough for a USTAR name are kept as they are; anything
    else (dots, so `..`; spaces; absolute paths; empty path parts; long names) is mapped to its safe
    characters plus a short hash of the original, so distinct keys stay distinct.
    """
    if (
        _SAFE_KEY.match(key)
        and not key.startswith("/")
        and not key.endswith("/")
        and "//" not in key
        and len(key.encode()) <= MAX_MEMBER_NAME_BYTES - 16
    ):
        return key
    digest = hashlib.sha1(key.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]
    cleaned = re.sub("/+", "/", _UNSAFE_CHARS.sub("_", key)).strip("/")[:48].rstrip("/")
    return f"{cleaned}_{digest}" if cleaned else digest


# The fixed fields of every header this writer makes, as tarfile (3.11.7 on) writes them for a USTAR
# regular file with mode 0644, uid/gid 0, mtime 0, empty owner names and no device numbers (tests
# compare the bytes with tarfile's). Written here, the bytes no longer depend on the Python version.
_HEADER_TEMPLATE = bytearray(tarfile.BLOCKSIZE)
for _offset, _field in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (136, b"00000000000\0"),
                        (148, b"        "), (156, tarfile.REGTYPE), (257, tarfile.POSIX_MAGIC)):
    _HEADER_TEMPLATE[_offset : _offset + len(_field)] = _field
_MAX_USTAR_SIZE = 8**11 - 1  # eleven octal digits
# The checksum counts its own field as spaces; the template's part of it is the same for every header.
_TEMPLATE_SUM = sum(_HEADER_TEMPLATE)


def _ustar_header(name: str, size: int) -> bytes:
    if size > _MAX_USTAR_SIZE:
        raise ValueError(f"member {name!r} is {size} bytes, over the USTAR limit of {_MAX_USTAR_SIZE}")
    header = bytearray(_HEADER_TEMPLATE)
    encoded = name.encode()
    size_field = b"%011o\0" % size
    header[: len(encoded)] = encoded
    header[124:136] = size_field
    # The name and size fields are all that differ from the template (whose size field is zeros):
    # summing them instead of the whole block makes a header ~3x cheaper.
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(encoded) + sum(size_field))
    return bytes(header)


class TarShardWriter:
    """Write WebDataset samples into a deterministic USTAR tar.

    Every header has mtime 0, uid/gid 0, empty owner names and mode 0644, so the same samples give a
    byte-identical tar. Members of a sample are written in the order given, adjacent. The writer also
    keeps DALI's index of the tar (the `wds2idx` v1.2 format), for `index_text()`.
    """

    def __init__(self, fileobj: BinaryIO):
        # Headers and data go straight to fileobj: tarfile's own stream writer re-copies its buffer for
        # every 10 KB it writes, and builds each header field by field (together as long as decoding).
        self._fileobj = fileobj
        self.num_samples = 0
        self._offset = 0  # where the next member's header starts
        self._index_lines: list[str] = []

    def write_sample(self, key: str, members: list[tuple[str, bytes]]) -> list[str]:
        """Write one sample; `members` is [(extension, bytes)]. Returns the member names written."""
        names = []
        entries = []
        for extension, payload in members:
            if not _SAFE_EXTENSION.match(extension):
                raise ValueError(f"extension {extension!r} of sample {key!r} is not a safe member suffix")
            name = f"{key}.{extension}"
            if len(name.encode()) > MAX_MEMBER_NAME_BYTES:
                raise ValueError(f"member name {name!r} is over {MAX_MEMBER_NAME_BYTES} bytes; map the key first")
            # One 512-byte USTAR header, then the data padded to 512-byte blocks.
            padding = -len(payload) % tarfile.BLOCKSIZE
            self._fileobj.write(_ustar_header(name, len(payload)))
            self._fileobj.write(payload)
            if padding:
                self._fileobj.write(tarfile.NUL * padding)
            names.append(name)
            entries.append(f"{extension} {self._offset + tarfile.BLOCKSIZE} {len(payload)} {name}")
            self._offset += tarfile.BLOCKSIZE + len(payload) + padding
        self._index_lines.append(" ".join(entries))
        self.num_samples += 1
        return names

    def index_text(self) -> str:
        """DALI's index of the samples written so far: `v1.2 N`, then per sample
        `ext data_offset size member_name` for each member."""
        return "".join(f"{line}\n" for line in [f"v1.2 {self.num_samples}", *self._index_lines])

    def close(self) -> None:
        """End the archive as tarfile does: two zero blocks, then zeros up to a 10 KiB record."""
        end = self._offset + 2 * tarfile.BLOCKSIZE
        self._fileobj.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
