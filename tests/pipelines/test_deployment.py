"""The Dockerfile, metadata.json (Flex Template) and the CLI agree with each other and with setup.py."""

import json
import os
import re

import pytest

from beam_curator import cli
from beam_curator.flex_template import template_parameters, to_cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def _read(name):
    with open(os.path.join(ROOT, name)) as handle:
        return handle.read()


def _pin(package):
    (version,) = re.findall(rf'"{re.escape(package)}(?:\[[a-z,]+\])?==([0-9.]+)"', _read("setup.py"))
    return version


def _arg(name):
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", _read("Dockerfile"), re.MULTILINE)
    return value


def test_dockerfile_versions_agree_with_setup_py():
    assert _arg("BEAM_VERSION") == _pin("apache-beam")
    assert _arg("DALI_VERSION") == _pin("nvidia-dali-cuda120")
    # CUDA 12 on both sides of the pair, the CUDA libraries as wheels (docs/DEPLOYMENT.md, CUDA pairs)
    assert '"onnxruntime-gpu[cuda,cudnn]>=1.22,<1.27"' in _read("setup.py")
    assert _arg("PYTHON_VERSION") == "3.11"
    dockerfile = _read("Dockerfile")
    assert re.search(r"^FROM nvidia/cuda:12\.[0-9.]+-base-\S+$", dockerfile, re.MULTILINE)  # CUDA 12, libraries from pip
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile
    assert 'pip install ".[gpu]"' in dockerfile  # onnxruntime-gpu for the model stages
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/beam_curator/beam_curator/flex_template.py" in dockerfile
    assert os.path.exists(os.path.join(ROOT, "beam_curator", "flex_template.py"))


def test_metadata_json_is_made_from_the_options_table():
    from beam_curator.jobs.options import flex_template_metadata

    assert json.loads(_read("metadata.json")) == flex_template_metadata(), (
        "metadata.json differs from the options table: python -m beam_curator.jobs.options --metadata > metadata.json")
    for parameter in flex_template_metadata()["parameters"]:
        option = template_parameters()[parameter["name"]]
        examples = (["true", "false"] if option.kind in ("flag", "bool") else [str(option.default)]
                    if option.default not in (None, "") else ["my_filters:drop_small,m.sub:make"]
                    if option.name == "stage" else ["0.5", "-1e-3", "5"] if option.kind == "float"
                    else ["5"] if option.kind == "int" else ["gs://b/x"])
        for example in examples:  # the regexes accept the CLI's own defaults
            assert any(re.match(regex, example) for regex in parameter["regexes"]), (parameter["name"], example)


def test_template_parameters_become_the_cli_command():
    args = to_cli_args([
        "--inputs=gs://b/a/,gs://b/c/*.tar", "--output=gs://b/out", "--images_per_tar=500",
        "--num_gpus_per_worker=1", "--remove_image_data=true", "--deterministic_name=false",
        "--overwrite=false", "--write_index=true", "--runner=DataflowRunner", "--project=p",
    ])
    assert args == [
        "curate", "gs://b/a/", "gs://b/c/*.tar", "--output", "gs://b/out", "--num-gpus-per-worker", "1",
        "--images-per-tar", "500", "--no-deterministic-name", "--remove-image-data", "--write-index",
        "--runner=DataflowRunner", "--project=p",
    ]
    parsed, beam_args = cli.parse_command(args)
    assert parsed.remove_image_data and not parsed.deterministic_name and parsed.images_per_tar == 500
    assert beam_args == ["--runner=DataflowRunner", "--project=p"]


def test_template_stages_become_repeated_stage_options():
    args = to_cli_args(["--inputs=gs://b/a/", "--output=gs://b/out", "--stage=my_filters:min_brightness, m:wide",
                        "--writer_mode=keyed"])
    parsed, _ = cli.parse_command(args)
    assert parsed.stage == ["my_filters:min_brightness", "m:wide"] and parsed.writer_mode == "keyed"


@pytest.mark.parametrize("argv, message", [
    (["--output=o"], "inputs and output are required"),
    (["--inputs=i", "--output=o", "--overwrite=maybe"], "overwrite must be true or false"),
])
def test_bad_template_parameters(argv, message):
    with pytest.raises(SystemExit, match=message):
        to_cli_args(argv)


def test_template_main_submits_without_waiting(tmp_path, make_dataset, capsys):
    from beam_curator import flex_template

    dataset = make_dataset(shards=1, per_shard=2)
    out = tmp_path / "out"
    assert flex_template.main([f"--inputs={dataset.directory}", f"--output={out}", "--runner=FnApiRunner"]) == 0
    assert "submitted" in capsys.readouterr().out
