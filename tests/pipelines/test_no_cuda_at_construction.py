"""Building the job touches no GPU: a Flex Template launcher has none."""

import subprocess
import sys

from tests.support.helpers import build_dataset

PROBE = r"""
import ctypes, os, sys
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CUDA unavailable, as on a template launcher
loaded = []
real_init = ctypes.CDLL.__init__

def spy(self, name, *args, **kwargs):
    loaded.append(str(name))
    return real_init(self, name, *args, **kwargs)

ctypes.CDLL.__init__ = spy
from beam_curator import cli
from beam_curator.jobs.curate import build_pipeline

args, beam_args = cli.parse_command(
    ["curate", sys.argv[1], "--output", sys.argv[2], "--num-gpus-per-worker", "1", "--runner=FnApiRunner"])
pipeline, shards, _ = build_pipeline(args, beam_args)
proto = pipeline.to_runner_api()  # what a launcher submits: DoFns pickled, stages expanded
assert shards == 2 and len(proto.components.transforms) > 10
cuda = [name for name in loaded if any(word in name.lower() for word in ("cuda", "nvjpeg", "dali", "nvml"))]
dali = sorted(name for name in sys.modules if name.startswith("nvidia"))
print("cuda libraries loaded:", cuda)
print("nvidia modules imported:", dali)
sys.exit(1 if cuda or dali else 0)
"""


def test_building_the_pipeline_makes_no_cuda_call(tmp_path):
    dataset = build_dataset(tmp_path / "in", shards=2, per_shard=2)
    done = subprocess.run([sys.executable, "-c", PROBE, dataset.directory, str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "cuda libraries loaded: []" in done.stdout and "nvidia modules imported: []" in done.stdout
