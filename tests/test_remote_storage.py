"""Inputs and outputs on s3://, end to end, against moto's S3 server started on loopback."""

import io
import json
import sys
import tarfile

import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from tests.helpers import curate, loopback_server, make_samples, write_tar

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
