"""A corpus of broken inputs, made here: each case gives its exact failure record, and the good
samples around it come out intact."""

import bz2
import glob
import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.pvalue import TaggedOutput
from PIL import Image

from beam_curator.records import FailureRecord
from beam_curator.tasks import ImageBatch
from beam_curator.transforms import ImageReaderStage
from tests.support.helpers import (
    Sample,
    add_sample,
    curate,
    encode,
    expected_id,
    make_image,
    reader_fn,
    run_in_bundle,
    task_of,
    write_tar,
)

GOOD_BEFORE = Sample("before", {"jpg": encode(make_image(11)), "txt": b"first"})
GOOD_AFTER = Sample("after", {"jpg": encode(make_image(12)), "txt": b"last"})


def read(paths, **options):
    """Run the reader's DoFn over paths: (ImageObjects, FailureRecords)."""
    paths = [str(path) for path in paths]
    stage = ImageReaderStage(dali_batch_size=4, num_threads=1, **options).with_exception_handling()
    outputs = list(run_in_bundle(reader_fn(stage), [task_of(paths)]))
    images = [obj for out in outputs if isinstance(out, ImageBatch) for obj in out.data]
    failures = [out.value for out in outputs if isinstance(out, TaggedOutput)]
    assert all(isinstance(record, FailureRecord) for record in failures)
    return images, failures


def around(tmp_path, *bad: Sample, **read_options):
    """A tar of GOOD_BEFORE, the bad samples, GOOD_AFTER; checks the good ones and returns the failures."""
    path = write_tar(str(tmp_path / "s.tar"), [GOOD_BEFORE, *bad, GOOD_AFTER])
    images, failures = read([path], **read_options)
    good = [obj for obj in images if obj.key in ("before", "after")]
    assert [(o.key, o.image_bytes, o.caption) for o in good] == [
        ("before", GOOD_BEFORE.members["jpg"], "first"), ("after", GOOD_AFTER.members["jpg"], "last")]
    return path, [obj for obj in images if obj not in good], failures


def record(path, member, key, scope, error_class, message):
    return FailureRecord(source=str(path), member=member, key=key, stage="image_reader", scope=scope,
                         error_class=error_class, message=message)


# --- samples that cannot be decoded ------------------------------------------------------------

def test_truncated_jpeg(tmp_path):
    data = encode(make_image(1, 200, 150))
    path, images, (failure,) = around(tmp_path, Sample("cut", {"jpg": data[: len(data) // 2]}))
    assert images == []
    assert failure == record(path, "cut.jpg", "cut", "sample", "ImageDecodeError", failure.message)
    assert "Pillow: OSError: image file is truncated" in failure.message


def test_corrupt_bytes(tmp_path):
    _path, _images, (failure,) = around(tmp_path, Sample("junk", {"png": os.urandom(3000)}))
    assert (failure.member, failure.scope, failure.error_class) == ("junk.png", "sample", "ImageDecodeError")
    assert "Pillow: UnidentifiedImageError: cannot identify image file" in failure.message


def test_zero_bytes(tmp_path):
    path, _, failures = around(tmp_path, Sample("empty", {"jpg": b"", "txt": b"caption"}))
    assert failures == [record(path, "empty.jpg", "empty", "sample", "EmptyImage", "the image member is empty")]


def test_unknown_format(tmp_path):
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
    _path, _, (failure,) = around(tmp_path, Sample("doc", {"jpg": pdf}))
    assert (failure.member, failure.error_class) == ("doc.jpg", "ImageDecodeError")


def _lying_jpeg(width, height):
    """A small real JPEG whose SOF header claims width x height."""
    data = bytearray(encode(make_image(3, 16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_lying_header_fails_before_allocation(tmp_path):
    _path, _, failures = around(tmp_path, Sample("bomb", {"jpg": _lying_jpeg(30000, 30000)}))
    assert [(f.member, f.error_class) for f in failures] == [("bomb.jpg", "ImageTooLarge")]
    assert "900000000 pixels" in failures[0].message and "max_image_pixels=89478485" in failures[0].message


def test_max_image_pixels(tmp_path):
    big = Sample("big", {"png": encode(make_image(4, 100, 80), "PNG")})
    path, _, failures = around(tmp_path, big, max_image_pixels=7000)  # the good ones have 6144
    assert failures == [record(path, "big.png", "big", "sample", "ImageTooLarge",
                               "100x80 = 8000 pixels is over max_image_pixels=7000")]


def test_max_member_bytes_for_image_and_companion(tmp_path):
    large_image = Sample("large", {"jpg": encode(make_image(5, 200, 200), "BMP")})
    long_caption = Sample("chatty", {"jpg": encode(make_image(6, 8, 8)), "txt": b"x" * 5000})
    size = len(large_image.members["jpg"])
    path, images, failures = around(tmp_path, large_image, long_caption, max_member_bytes=4096)
    assert failures == [
        record(path, "large.jpg", "large", "sample", "MemberTooLarge", f"{size} bytes is over max_member_bytes=4096"),
        record(path, "chatty.txt", "chatty", "companion", "MemberTooLarge", "5000 bytes is over max_member_bytes=4096"),
    ]
    assert [(obj.key, obj.companions) for obj in images] == [("chatty", {})]


# --- shard-level damage ------------------------------------------------------------------------

def test_missing_shard(tmp_path):
    good = write_tar(str(tmp_path / "good.tar"), [GOOD_BEFORE])
    images, (failure,) = read([tmp_path / "missing.tar", good])
    assert [obj.key for obj in images] == ["before"]
    assert (failure.source, failure.member, failure.scope) == (str(tmp_path / "missing.tar"), "", "shard")
    assert "(after 0 sample(s) read)" in failure.message


def test_not_a_tar(tmp_path):
    path = tmp_path / "noise.tar"
    path.write_bytes(os.urandom(5000))
    images, (failure,) = read([path])
    assert images == [] and (failure.scope, failure.error_class) == ("shard", "ReadError")


def _damaged(tmp_path, name, samples, cut, compress=False):
    data = Path(write_tar(str(tmp_path / "intact.tar"), samples)).read_bytes()
    path = tmp_path / name
    path.write_bytes(cut(gzip.compress(data, mtime=0) if compress else data))
    return path


def test_truncated_tar_keeps_the_samples_before_the_damage(tmp_path):
    samples = [Sample(f"k{i}", {"jpg": encode(make_image(20 + i)), "txt": b"c"}) for i in range(6)]
    path = _damaged(tmp_path, "cut.tar", samples, lambda data: data[: len(data) * 2 // 3])
    images, (failure,) = read([path])
    assert [obj.key for obj in images] == [s.key for s in samples[: len(images)]] and 2 <= len(images) < 6
    assert all(obj.image_bytes == samples[i].members["jpg"] for i, obj in enumerate(images))
    assert (failure.scope, failure.error_class) == ("shard", "ReadError")
    assert failure.message.startswith("unexpected end of data")


def test_corrupt_tar_gz(tmp_path):
    samples = [Sample(f"k{i}", {"jpg": encode(make_image(30 + i), "BMP")}) for i in range(6)]

    def corrupt(data):
        middle = len(data) * 2 // 3
        return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]

    path = _damaged(tmp_path, "bad.tar.gz", samples, corrupt, compress=True)
    images, (failure,) = read([path])
    # Beam decompresses in large chunks: here the damage is inside the first, so nothing precedes it
    assert [obj.key for obj in images] == [s.key for s in samples[: len(images)]] and len(images) < 6
    assert failure.scope == "shard" and failure.source == str(path)
    assert failure.error_class in ("error", "BadGzipFile", "EOFError"), failure  # zlib's, not ours


@pytest.mark.parametrize("suffix, compress", [(".tar.gz", gzip.compress), (".tgz", gzip.compress),
                                              (".tar.bz2", bz2.compress)])
def test_compressed_shards_are_read_whole(tmp_path, suffix, compress):
    samples = [Sample(f"k{i}", {"jpg": encode(make_image(70 + i)), "txt": f"c{i}".encode()}) for i in range(5)]
    path = _damaged(tmp_path, f"shard{suffix}", samples, compress)
    images, failures = read([path])
    assert failures == []
    assert [(obj.key, obj.image_bytes, obj.caption) for obj in images] == [
        (s.key, s.members["jpg"], s.caption) for s in samples]


# --- formats -------------------------------------------------------------------------------------

def _image(mode_or_pixels, fmt, **options):
    pixels = make_image(40, 48, 32)
    image = Image.fromarray(pixels)
    image = image.convert(mode_or_pixels) if isinstance(mode_or_pixels, str) else mode_or_pixels
    return encode_image(image, fmt, **options)


def encode_image(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _exif_rotated():
    image = Image.fromarray(make_image(41, 48, 32))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode_image(image, "JPEG", exif=exif.tobytes())


FORMATS = {
    "baseline.jpg": lambda: _image("RGB", "JPEG"),
    "progressive.JPG": lambda: _image("RGB", "JPEG", progressive=True),
    "cmyk.jpeg": lambda: _image("CMYK", "JPEG"),
    "gray.jpg": lambda: _image("L", "JPEG"),
    "rgba.png": lambda: _image("RGBA", "PNG"),
    "deep.png": lambda: encode_image(Image.fromarray(make_image(42, 48, 32)[..., 0].astype(np.uint16) * 257), "PNG"),
    "palette.PNG": lambda: _image("P", "PNG"),
    "photo.webp": lambda: _image("RGB", "WEBP"),
    "photo.bmp": lambda: _image("RGB", "BMP"),
    "photo.tiff": lambda: _image("RGB", "TIFF"),
    "anim.gif": lambda: encode_image(Image.fromarray(make_image(43, 48, 32)), "GIF", save_all=True,
                                     append_images=[Image.fromarray(make_image(44, 48, 32))]),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_decodes_to_rgb(tmp_path, name):
    key, extension = name.split(".")
    _path, images, failures = around(tmp_path, Sample(key, {extension: FORMATS[name]()}))
    assert failures == []
    (obj,) = images
    assert obj.image_data.dtype == np.uint8 and obj.image_data.shape == (32, 48, 3)
    assert obj.image_format == extension


def test_exif_orientation_is_applied(tmp_path):
    _path, (obj,), _ = around(tmp_path, Sample("turned", {"jpg": _exif_rotated()}))
    assert obj.image_data.shape == (48, 32, 3)  # stored 48 wide, displayed 32 wide


def test_gif_gives_its_first_frame(tmp_path):
    _path, (obj,), _ = around(tmp_path, Sample("anim", {"gif": FORMATS["anim.gif"]()}))
    first = np.asarray(Image.open(io.BytesIO(FORMATS["anim.gif"]())).convert("RGB"))
    np.testing.assert_array_equal(obj.image_data, first)


# --- safety ------------------------------------------------------------------------------------

def test_dangerous_names_are_read_as_data_and_mapped(tmp_path):
    jpg = encode(make_image(50))
    (tmp_path / "in").mkdir()
    write_tar(str(tmp_path / "in" / "s.tar"),
              [Sample("../../escape", {"jpg": jpg}), Sample("/abs/olute", {"jpg": jpg, "txt": b"abs"})])
    out = tmp_path / "deep" / "out"
    curate(str(tmp_path / "in"), str(out))
    rows = pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()
    assert [row["original_key"] for row in rows] == ["../../escape", "/abs/olute"]
    for row in rows:
        assert not row["key"].startswith("/") and ".." not in row["key"]
    assert sorted(os.listdir(tmp_path)) == ["deep", "in"] and os.listdir(tmp_path / "deep") == ["out"]


def test_links_and_devices_are_never_followed(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(encode(make_image(51)))
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        add_sample(archive, GOOD_BEFORE)
        for name, kind, target in [("sym.jpg", tarfile.SYMTYPE, str(tmp_path / "secret.jpg")),
                                   ("hard.jpg", tarfile.LNKTYPE, "before.jpg"),
                                   ("dev.jpg", tarfile.CHRTYPE, ""), ("fifo.jpg", tarfile.FIFOTYPE, "")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
        add_sample(archive, GOOD_AFTER)
    images, failures = read([path])
    assert [obj.key for obj in images] == ["before", "after"]
    assert [(f.member, f.scope, f.error_class, f.message) for f in failures] == [
        ("sym.jpg", "member", "UnsupportedMember", "symlink entries are never followed"),
        ("hard.jpg", "member", "UnsupportedMember", "hardlink entries are never followed"),
        ("dev.jpg", "member", "UnsupportedMember", "special file entries are never followed"),
        ("fifo.jpg", "member", "UnsupportedMember", "special file entries are never followed"),
    ]


class _Boom:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/beam_curator_was_unpickled",))


def test_companions_are_bytes_never_unpickled(tmp_path):
    payload = pickle.dumps(_Boom())
    _path, (obj,), failures = around(tmp_path, Sample("pk", {"jpg": encode(make_image(52)), "pyd": payload,
                                                             "pickle": payload}))
    assert failures == [] and obj.companions == {"pyd": payload, "pickle": payload}
    assert not os.path.exists("/tmp/beam_curator_was_unpickled")


def test_invalid_utf8_caption_fails_the_companion_not_the_image(tmp_path):
    _path, (obj,), (failure,) = around(tmp_path, Sample("latin", {"jpg": encode(make_image(53)), "txt": b"caf\xe9",
                                                                  "json": b"{}"}))
    assert obj.caption is None and obj.companions == {"json": b"{}"}
    assert (failure.member, failure.scope, failure.error_class) == ("latin.txt", "companion", "UnicodeDecodeError")


def test_invalid_json_fails_the_companion_not_the_image(tmp_path):
    _path, (obj,), (failure,) = around(tmp_path, Sample("js", {"jpg": encode(make_image(54)), "json": b"{oops",
                                                              "txt": b"fine"}))
    assert obj.caption == "fine" and "json" not in obj.companions
    assert (failure.member, failure.scope, failure.error_class) == ("js.json", "companion", "JSONDecodeError")


# --- tar edge cases ----------------------------------------------------------------------------

def test_keys_with_dots_in_directories(tmp_path):
    _path, (obj,), failures = around(tmp_path, Sample("v1.2/img", {"jpg": encode(make_image(55))}))
    assert failures == [] and obj.key == "v1.2/img"  # the dot is in a directory, not in the basename


def test_duplicate_keys_in_one_tar(tmp_path):
    first, second = Sample("dup", {"jpg": encode(make_image(56))}), Sample("dup", {"jpg": encode(make_image(57))})
    path, images, failures = around(tmp_path, first, second)
    assert failures == [] and [obj.image_id for obj in images] == [
        expected_id(path, "dup", first.members["jpg"]), expected_id(path, "dup", second.members["jpg"], 1)]
    assert [obj.image_bytes for obj in images] == [first.members["jpg"], second.members["jpg"]]


def test_sample_without_image(tmp_path):
    path, _, failures = around(tmp_path, Sample("textonly", {"txt": b"no picture", "json": b"{}"}))
    assert failures == [record(path, "textonly.json", "textonly", "sample", "NoImageMember",
                               "no image member among ['textonly.json', 'textonly.txt']")]


def test_members_that_are_not_adjacent(tmp_path):
    path = tmp_path / "split.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        add_sample(archive, Sample("a", {"jpg": encode(make_image(58))}))
        add_sample(archive, GOOD_BEFORE)
        add_sample(archive, Sample("a", {"txt": b"late caption"}))
    images, failures = read([path])
    assert [obj.key for obj in images] == ["a", "before"]
    assert failures == [record(path, "a.txt", "a", "sample", "NonAdjacentMembers",
                               "members ['a.txt'] are not adjacent to the earlier members of key 'a'")]


def test_directories_and_long_names(tmp_path):
    long_key = "d" * 60 + "/" + "e" * 80
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"long-{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as archive:
            directory = tarfile.TarInfo("d" * 60)
            directory.type = tarfile.DIRTYPE
            archive.addfile(directory)
            add_sample(archive, Sample(long_key, {"jpg": encode(make_image(59)), "txt": "ünï".encode()}))
        images, failures = read([path])
        assert failures == [] and [(obj.key, obj.caption) for obj in images] == [(long_key, "ünï")]


def test_empty_tar(tmp_path):
    path = tmp_path / "empty.tar"
    with tarfile.open(path, "w"):
        pass
    assert read([path]) == ([], [])


# --- end to end: the CLI writes the failures and reconciles ------------------------------------

def test_cli_writes_failures_and_reconciles(tmp_path, capsys):
    import json

    from beam_curator import cli

    source = tmp_path / "in"
    source.mkdir()
    write_tar(str(source / "a.tar"), [GOOD_BEFORE, Sample("junk", {"jpg": b"\xff\xd8broken"}),
                                      Sample("lonely", {"txt": b"no image"}), GOOD_AFTER,
                                      Sample("badcap", {"png": encode(make_image(60), "PNG"), "txt": b"\xff"})])
    (source / "b.tar").write_bytes(b"this is not a tar at all" * 40)
    out = tmp_path / "out"
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "reconciliation: 5 read = 3 written + 2 failed + 0 filtered: ok"
    stats = json.loads((out / "_stats.json").read_text())
    assert (stats["shards_failed"], stats["companions_failed"], stats["images_failed"]) == (1, 1, 2)
    failures = pq.read_table(str(out / "_failures")).to_pylist()
    assert sorted((f["source"].rsplit("/", 1)[1], f["member"], f["scope"]) for f in failures) == [
        ("a.tar", "badcap.txt", "companion"), ("a.tar", "junk.jpg", "sample"), ("a.tar", "lonely.txt", "sample"),
        ("b.tar", "", "shard"),
    ]
    rows = pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()
    assert sorted(row["key"] for row in rows) == ["after", "badcap", "before"]
    # A second run into the same directory stops; with --overwrite it replaces the failure files too.
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress"]) == 2
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress", "--overwrite"]) == 0
    assert len(os.listdir(out / "_failures")) == 2


def test_peak_memory_with_a_jpeg_claiming_30000x30000(tmp_path):
    """Peak RSS of a whole CLI run over a shard holding the bomb stays under 500 MB."""
    import subprocess
    import sys

    source = tmp_path / "in"
    source.mkdir()
    write_tar(str(source / "bomb.tar"), [GOOD_BEFORE, Sample("bomb", {"jpg": _lying_jpeg(30000, 30000)}), GOOD_AFTER])
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would start at the RSS of this pytest
    # process when the child was forked (hundreds of MB once torch is imported by the model tests).
    script = (
        "import sys\n"
        "from beam_curator import cli\n"
        "code = cli.main(sys.argv[1:])\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print('peak_kb', status['VmHWM'].split()[0])\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "curate", str(source), "--output", str(tmp_path / "out"),
                           "--no-progress"], capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "reconciliation: 3 read = 2 written + 1 failed + 0 filtered: ok"
    peak_mb = int(lines[-1].split()[1]) / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"


def test_corrupt_bz2_is_damage(tmp_path):
    samples = [Sample(f"k{i}", {"jpg": encode(make_image(80 + i))}) for i in range(4)]
    path = _damaged(tmp_path, "bad.tar.bz2", samples,
                    lambda data: bz2.compress(data)[:100] + bytes(200) + bz2.compress(data)[300:])
    _images, (failure,) = read([path])
    assert failure.scope == "shard" and failure.source == str(path)


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"), TimeoutError("read"),
                                   TypeError("a bug in the reader")])
def test_errors_that_are_not_damage_fail_the_bundle_for_a_retry(tmp_path, monkeypatch, error):
    from beam_curator.transforms.io import image_reader

    path = write_tar(str(tmp_path / "s.tar"), [GOOD_BEFORE, GOOD_AFTER])

    def broken(stream, **options):
        yield from []
        raise error

    monkeypatch.setattr(image_reader, "iter_samples", broken)
    with pytest.raises(type(error)):  # not a "shard damaged" record: Beam retries, then fails loudly
        read([path])


def test_what_counts_as_damage():
    import tarfile
    import zlib

    from beam_curator.transforms.io.image_reader import is_shard_damage

    damaged = [tarfile.ReadError("bad"), EOFError(), zlib.error("x"), FileNotFoundError(2, "gone"),
               OSError("Invalid data stream")]
    transient = [ConnectionResetError(104, "reset"), TimeoutError(), PermissionError(13, "denied"), ValueError()]
    assert all(is_shard_damage(e) for e in damaged) and not any(is_shard_damage(e) for e in transient)


def test_failure_threshold_fails_the_job_above_it(tmp_path):
    from beam_curator.transforms import FilePartitioningStage
    from beam_curator.transforms.io.image_reader import FailureThresholdExceeded
    from tests.support.helpers import run_pipeline

    source = tmp_path / "in"
    source.mkdir()
    bad = [Sample(f"bad{i}", {"jpg": b"\xff\xd8\xff\xe0" + bytes(100)}) for i in range(2)]
    write_tar(str(source / "a.tar"), [GOOD_BEFORE, *bad, GOOD_AFTER])  # 2 of 4 samples fail

    def build(threshold):
        def pipeline_of(pipeline):
            reader = ImageReaderStage(dali_batch_size=4, num_threads=1).with_exception_handling(threshold=threshold)
            pipeline | FilePartitioningStage(str(source)) | reader
        return pipeline_of

    run_pipeline(build(0.5))  # exactly at the threshold: fine
    with pytest.raises(Exception, match="2 of 4 samples failed") as raised:
        run_pipeline(build(0.4))
    assert "FailureThresholdExceeded" in repr(raised.value) or isinstance(raised.value, FailureThresholdExceeded)
    with pytest.raises(ValueError, match="threshold"):
        ImageReaderStage().with_exception_handling(threshold=1.5)


def test_pillow_decodes_are_counted(tmp_path):
    from beam_curator import cli

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    gif = Sample("gif", {"gif": encode(make_image(90), "GIF")})
    write_tar(str(source / "a.tar"), [GOOD_BEFORE, gif, GOOD_AFTER])
    assert cli.main(["curate", str(source), "--output", str(out), "--no-progress"]) == 0
    import json

    stats = json.loads((out / "_stats.json").read_text())
    assert stats["images_decoded_by_pillow"] == 1 and stats["images_written"] == 3
