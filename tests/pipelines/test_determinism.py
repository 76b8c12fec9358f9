"""The same input and options give byte-identical output on every runner set-up."""

import sys

import pytest

from tests.support.helpers import curate, loopback_server
from tests.support.output import digests

RUNNERS = {
    "fnapi-1-worker": ["--runner=FnApiRunner"],
    "direct-2-processes": ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


@pytest.fixture(scope="module")
def job_endpoint(tmp_path_factory):
    """Beam's local job service, started on loopback for the PortableRunner."""
    command = lambda port: [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(port)]
    log = str(tmp_path_factory.mktemp("job-service") / "log.txt")
    with loopback_server(command, log, "Beam's local job service") as port:
        yield f"localhost:{port}"


def _digests(out):
    return digests(out, run_files=False)


def test_output_is_byte_identical_across_runners(tmp_path, make_dataset, job_endpoint):
    dataset = make_dataset(shards=5, per_shard=9)
    runners = {
        **RUNNERS,
        "portable-loopback": ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}", "--environment_type=LOOPBACK"],
    }
    digests = {}
    for name, options in runners.items():
        out = str(tmp_path / name)
        curate(dataset.directory, out, files_per_partition=2, reader={"dali_batch_size": 4},
               writer={"images_per_tar": 4, "write_index": True}, extra_options=options)
        digests[name] = _digests(out)
    reference = digests["fnapi-1-worker"]
    # 3 partitions of 18, 18 and 9 images: tars of 4, 4, 4, 4, 2 / 4, 4, 4, 4, 2 / 4, 4, 1 (tar, parquet,
    # index each), and a manifest per partition.
    assert len(reference) == 13 * 3 + 3 and len([name for name in reference if name.startswith("_partitions/")]) == 3
    for name, got in digests.items():
        assert got == reference, f"{name} differs from the FnApiRunner's output"
