"""transforms/ installs as beam_curator.transforms, in editable installs and in wheels."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def test_installed_package_maps_transforms():
    import beam_curator.transforms as transforms

    assert os.path.samefile(os.path.dirname(transforms.__file__), os.path.join(ROOT, "transforms"))
    import beam_curator

    assert beam_curator.ImageReaderStage is transforms.ImageReaderStage


def test_wheel_holds_transforms_as_a_subpackage(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), ROOT],
        check=True,
    )
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "beam_curator/transforms/io/image_reader.py" in names
    assert "beam_curator/cli.py" in names
    assert not any(name.startswith(("transforms/", "tests/")) for name in names)
    entry_points = [name for name in names if name.endswith("entry_points.txt")]
    assert "beam-curator = beam_curator.cli:console_main" in zipfile.ZipFile(tmp_path / wheel).read(entry_points[0]).decode()
