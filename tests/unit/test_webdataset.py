import io
import os
import tarfile

import pytest

from beam_curator.formats.webdataset import TarShardWriter, _ustar_header, iter_samples, safe_key, split_member_name
from tests.support.helpers import Sample, write_tar


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jpg", ("a", "jpg")),
        ("a.b.jpg", ("a", "b.jpg")),
        ("dir/x.y/a.txt", ("dir/x.y/a", "txt")),
        ("noext", ("noext", "")),
    ],
)
def test_split_member_name(name, expected):
    assert split_member_name(name) == expected


def test_iter_samples_groups_adjacent_members(tmp_path):
    path = write_tar(
        str(tmp_path / "s.tar"),
        [Sample("a", {"jpg": b"1", "txt": b"cap"}), Sample("b", {"png": b"2"}), Sample("a", {"jpg": b"3"})],
    )
    with open(path, "rb") as handle:
        samples = list(iter_samples(handle))
    assert [(s.key, s.members) for s in samples] == [
        ("a", {"jpg": b"1", "txt": b"cap"}),
        ("b", {"png": b"2"}),
        ("a", {"jpg": b"3"}),
    ]
    assert samples[0].member_names == {"jpg": "a.jpg", "txt": "a.txt"}


def test_image_extension_is_case_insensitive_and_prefers_jpeg():
    from beam_curator.formats.webdataset import RawSample

    assert RawSample("k", {"txt": b"", "JPG": b""}).image_extension() == "JPG"
    assert RawSample("k", {"png": b"", "jpeg": b""}).image_extension() == "jpeg"
    assert RawSample("k", {"txt": b""}).image_extension() is None
    assert RawSample("k", {"txt": b"", "v2.JPEG": b""}).image_extension() == "v2.JPEG"
    assert RawSample("k", {"v2.jpg": b"", "jpg": b""}).image_extension() == "jpg"


def test_safe_key_keeps_safe_keys_and_maps_others_uniquely():
    assert safe_key("dir/abc_1-2") == "dir/abc_1-2"
    mapped = {safe_key(k) for k in ["a b", "a.b", "a_b", "x" * 200]}
    assert len(mapped) == 4
    for key in mapped:
        assert all(c.isalnum() or c in "_/-" for c in key) and len(key) <= 84


def test_tar_writer_is_deterministic_ustar(tmp_path):
    def build():
        buffer = io.BytesIO()
        writer = TarShardWriter(buffer)
        writer.write_sample("k1", [("jpg", b"abc"), ("txt", b"caption")])
        writer.write_sample("k2", [("png", b"")])
        writer.close()
        return buffer.getvalue()

    first, second = build(), build()
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["k1.jpg", "k1.txt", "k2.png"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in members)
    assert first[257:262] == b"ustar"


def test_tar_writer_output_equals_tarfiles_own(tmp_path):
    # The writer writes headers and data itself; the bytes must be what tarfile writes.
    members = [("k1", "jpg", b"a" * 700), ("k1", "txt", b"caption"), ("k2", "png", b""), ("d/k3", "json", b"x" * 512)]
    ours = io.BytesIO()
    writer = TarShardWriter(ours)
    writer.write_sample("k1", [("jpg", members[0][2]), ("txt", members[1][2])])
    writer.write_sample("k2", [("png", b"")])
    writer.write_sample("d/k3", [("json", members[3][2])])
    writer.close()
    theirs = io.BytesIO()
    for key, extension, payload in members:  # tarfile's layout: header, data, zeros to a block
        theirs.write(_tarfiles_header(f"{key}.{extension}", len(payload)) + payload + bytes(-len(payload) % 512))
    theirs.write(bytes(1024))  # the end: two zero blocks, then zeros to tarfile's 10 KiB record
    theirs.write(bytes(-theirs.tell() % tarfile.RECORDSIZE))
    assert ours.getvalue() == theirs.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as archive:
        assert [(m.name, archive.extractfile(m).read()) for m in archive] == [
            (f"{key}.{extension}", payload) for key, extension, payload in members]
    assert len(ours.getvalue()) % tarfile.RECORDSIZE == 0


def _tarfiles_header(name: str, size: int) -> bytes:
    """tarfile's USTAR header for our member; Pythons before 3.11.7 also filled the device-number
    fields of regular files, which ours (like newer tarfiles) leaves empty."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
    header[329:345] = bytes(16)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.mark.parametrize("name", ["a.jpg", "d/" + "k" * 94 + ".jpg", "x" * 96 + ".txt"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 123_456])
def test_headers_equal_tarfiles_for_any_name_and_size(name, size):
    assert _ustar_header(name, size) == _tarfiles_header(name, size)
    parsed = tarfile.TarInfo.frombuf(_ustar_header(name, size), "utf-8", "strict")
    assert (parsed.name, parsed.size, parsed.mode, parsed.mtime, parsed.type) == (name, size, 0o644, 0, tarfile.REGTYPE)


def test_tar_writer_rejects_long_names_and_bad_extensions():
    writer = TarShardWriter(io.BytesIO())
    with pytest.raises(ValueError, match="over 100 bytes"):
        writer.write_sample("k" * 100, [("jpg", b"")])
    with pytest.raises(ValueError, match="not a safe member suffix"):
        writer.write_sample("k", [("j/pg", b"")])


def test_index_matches_dalis_wds2idx(tmp_path):
    import shutil
    import subprocess
    import sys

    path = tmp_path / "s.tar"
    with open(path, "wb") as handle:
        writer = TarShardWriter(handle)
        writer.write_sample("a", [("jpg", b"x" * 700), ("txt", b"")])
        writer.write_sample("dir/b", [("v2.png", b"y" * 512), ("json", b"{}")])
        writer.close()
    tool = shutil.which("wds2idx", path=os.path.dirname(sys.executable))
    subprocess.run([tool, str(path), str(tmp_path / "dali.idx")], check=True, capture_output=True)
    assert writer.index_text() == (tmp_path / "dali.idx").read_text()
    assert writer.index_text().splitlines()[0] == "v1.2 2"
