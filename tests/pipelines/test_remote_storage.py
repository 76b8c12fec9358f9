"""Inputs and outputs on s3://, end to end, against moto's S3 server started on loopback."""

import io
import json
import sys
import tarfile

import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from tests.support.helpers import curate, loopback_server, make_samples, write_tar

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto accepts any


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server, started on loopback."""
    command = lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log = str(tmp_path_factory.mktemp("moto") / "log.txt")
    with loopback_server(command, log, "moto's S3 server") as port:
        yield f"http://127.0.0.1:{port}"


def _client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _upload_dataset(endpoint, tmp_path, bucket):
    s3 = _client(endpoint)
    s3.create_bucket(Bucket=bucket)
    samples = {}
    for shard in range(2):
        shard_samples = make_samples(shard, 5)
        path = write_tar(str(tmp_path / f"shard-{shard}.tar"), shard_samples)
        s3.upload_file(path, bucket, f"input/shard-{shard}.tar")
        samples.update({s.key: s for s in shard_samples})
    return s3, samples


def _check_output(s3, bucket, samples):
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="output/")["Contents"])
    assert not [k for k in keys if ".beam_curator-temp-" in k], "temporary objects were left behind"
    tars = [k for k in keys if k.endswith(".tar")]
    assert [k[:-4] for k in tars] == [k[:-8] for k in keys if k.endswith(".parquet")]
    seen = {}
    for key in tars:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            for member in archive.getmembers():
                seen[member.name] = archive.extractfile(member).read()
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key[:-4] + ".parquet")["Body"].read()))
        assert all(row["caption"] == samples[row["key"]].caption for row in table.to_pylist())
    assert seen == {f"{s.key}.{ext}": data for s in samples.values() for ext, data in s.members.items()}
    return keys


def test_cli_round_trip_with_credentials_in_options(s3_endpoint, tmp_path, capsys, monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    s3, samples = _upload_dataset(s3_endpoint, tmp_path, "options-bucket")
    code = cli.main([
        "curate", "s3://options-bucket/input", "--output", "s3://options-bucket/output", "--images-per-tar", "3",
        "--no-progress", f"--s3_endpoint_url={s3_endpoint}", "--s3_region_name=us-east-1",
        "--s3_access_key_id=testing", "--s3_secret_access_key=testing",
    ])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "reconciliation: 10 read = 10 written + 0 failed + 0 filtered: ok"
    keys = _check_output(s3, "options-bucket", samples)
    stats = json.loads(s3.get_object(Bucket="options-bucket", Key="output/_stats.json")["Body"].read())
    assert stats["images_written"] == 10 and len([k for k in keys if k.endswith(".tar")]) == 4


def test_library_round_trip_with_credentials_from_the_environment(s3_endpoint, tmp_path, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    s3, samples = _upload_dataset(s3_endpoint, tmp_path, "env-bucket")
    curate("s3://env-bucket/input/*.tar", "s3://env-bucket/output", writer={"images_per_tar": 10},
           extra_options=[f"--s3_endpoint_url={s3_endpoint}", "--s3_region_name=us-east-1"])
    _check_output(s3, "env-bucket", samples)


def test_model_dir_on_s3_is_copied_once_and_checked(s3_endpoint, tmp_path, monkeypatch, exported_models, capsys):
    """MODEL_DIR on s3://: each file copied into the local cache, checked against the manifest; a
    cached copy that still matches is reused, one that does not is copied again."""
    import glob
    import os

    from beam_curator.models.model_dir import CACHE_ENV

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    s3 = _client(s3_endpoint)
    s3.create_bucket(Bucket="models")
    for name in os.listdir(exported_models.model_dir):
        s3.upload_file(os.path.join(exported_models.model_dir, name), "models", f"clip/{name}")
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_tar(str(inputs / "a.tar"), make_samples(0, 6))
    options = [f"--s3_endpoint_url={s3_endpoint}", "--s3_region_name=us-east-1", "--no-progress"]

    def run(output):
        code = cli.main(["curate", str(inputs), "--output", str(tmp_path / output), "--model-dir", "s3://models/clip",
                         "--scores", "aesthetic,nsfw,clip", "--embed", *options])
        assert code == 0, capsys.readouterr().err
        return pq.read_table(glob.glob(str(tmp_path / output / "*.parquet"))).to_pylist()

    first = run("first")
    copied = sorted(os.path.basename(path) for path in glob.glob(str(cache / "*" / "*")))
    assert copied == ["aesthetic_head.onnx", "image_encoder.onnx", "nsfw_head.onnx", "text_encoder.onnx",
                      "tokenizer.json"]
    (damaged,) = glob.glob(str(cache / "*" / "nsfw_head.onnx"))
    with open(damaged, "r+b") as handle:  # a cached copy gone bad is not used: copied again
        handle.write(b"\0\0\0\0")
    second = run("second")
    assert [row["nsfw_score"] for row in second] == [row["nsfw_score"] for row in first]
    assert all(row["embedding"] and row["clip_score"] is not None for row in first)


def test_resume_on_s3_redoes_the_partition_without_a_manifest(s3_endpoint, tmp_path, capsys, monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    s3, _ = _upload_dataset(s3_endpoint, tmp_path, "resume-bucket")
    args = ["curate", "s3://resume-bucket/input", "--output", "s3://resume-bucket/output", "--images-per-tar", "3",
            "--no-progress", "--no-report", f"--s3_endpoint_url={s3_endpoint}", "--s3_region_name=us-east-1",
            "--s3_access_key_id=testing", "--s3_secret_access_key=testing"]
    assert cli.main(args) == 0

    def objects():
        listed = s3.list_objects_v2(Bucket="resume-bucket", Prefix="output/")["Contents"]
        return {o["Key"]: s3.get_object(Bucket="resume-bucket", Key=o["Key"])["Body"].read() for o in listed
                if o["Key"] != "output/_stats.json"}

    finished = objects()
    manifests = sorted(key for key in finished if key.startswith("output/_partitions/"))
    assert len(manifests) == 2
    # As a kill between the renames of a partition and its manifest leaves it, plus a half-written file.
    lost = json.loads(finished[manifests[0]])
    s3.delete_object(Bucket="resume-bucket", Key=manifests[0])
    s3.delete_object(Bucket="resume-bucket", Key=f"output/{lost['files'][-1]['name']}")
    s3.put_object(Bucket="resume-bucket", Key="output/_partitions/.x.json.tmp-0123", Body=b"partial")
    capsys.readouterr()
    assert cli.main([*args, "--resume"]) == 0
    assert "resumed: 1 partition(s)" in capsys.readouterr().out
    assert objects() == finished
