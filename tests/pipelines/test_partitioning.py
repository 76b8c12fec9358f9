import os

import pytest

from beam_curator.tasks import PartitionInfo
from beam_curator.transforms import FilePartitioningStage
from beam_curator.transforms.io.partitioning import list_input_files
from tests.support.helpers import collect_to, read_collected, run_pipeline


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def test_directory_glob_and_list_give_sorted_files(tmp_path):
    root = tmp_path / "data"
    files = [_touch(str(root / name)) for name in ["b.tar", "a.tar", "sub/c.TAR", "notes.txt"]]
    expected = sorted([files[1], files[0], files[2]])
    assert list_input_files(str(root), [".tar"]) == expected
    assert list_input_files(str(root / "*.tar"), [".tar"]) == sorted(files[:2])
    assert list_input_files([files[0], files[1], files[0]], [".tar"]) == sorted(files[:2])


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no input file matches '.*nothing-\*\.tar'"):
        list_input_files(str(tmp_path / "nothing-*.tar"), [".tar"])
    with pytest.raises(ValueError, match="file_paths is empty"):
        list_input_files([], [".tar"])


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_files_per_partition_is_validated(bad):
    with pytest.raises(ValueError, match="files_per_partition must be a positive integer"):
        FilePartitioningStage("x", files_per_partition=bad)


def test_file_extensions_is_validated():
    with pytest.raises(ValueError, match="file_extensions must be a non-empty list"):
        FilePartitioningStage("x", file_extensions=".tar")


def test_partitions_carry_metadata(tmp_path):
    root = tmp_path / "my_dataset"
    files = sorted(_touch(str(root / f"s{i}.tar")) for i in range(5))
    _touch(str(root / "extra.tar.gz"))
    stage = FilePartitioningStage(str(root), files_per_partition=2, file_extensions=[".tar", ".tar.gz"])
    tasks = stage.partitions()
    assert [task.data for task in tasks] == [
        [str(root / "extra.tar.gz"), files[0]], files[1:3], files[3:5]
    ]
    assert {task.dataset_name for task in tasks} == {"my_dataset"}
    assert [task.task_id for task in tasks] == ["file_partitioning_000000", "file_partitioning_000001", "file_partitioning_000002"]
    assert tasks[1].partition == PartitionInfo(index=1, source_files=tuple(files[1:3]), metadata_files=(None, None))
    assert tasks[1]._metadata == {}


def test_stage_emits_the_partitions_in_a_pipeline(tmp_path):
    root = tmp_path / "in"
    for i in range(3):
        _touch(str(root / f"s{i}.tar"))
    stage = FilePartitioningStage(str(root))
    run_pipeline(lambda p: collect_to(p | stage, str(tmp_path / "out")))
    got = sorted(read_collected(str(tmp_path / "out")), key=lambda task: task.task_id)
    assert [task.data for task in got] == [[str(root / f"s{i}.tar")] for i in range(3)]
    assert dict(stage.display_data())["files_per_partition"] == 1
