from pathlib import Path

from setuptools import setup

TOKENIZERS = ["tokenizers>=0.20,<1"]
MODELS = ["onnxruntime>=1.20,<2", *TOKENIZERS]
EXPORT = ["torch>=2.4", "transformers>=4.45,<6", "safetensors>=0.4,<1", "onnx>=1.16,<2", *TOKENIZERS]

setup(
    name="beam-curator",
    version="0.1.0",
    description="Image-dataset curation on Apache Beam: WebDataset shards, NVIDIA DALI decoding, tar + parquet output",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # transforms/ (the Beam layer) is installed as the subpackage beam_curator.transforms.
    packages=["beam_curator", *(f"beam_curator.{name}" for name in ("formats", "output", "models", "dedup", "report",
                                                                       "jobs")),
              "beam_curator.transforms", "beam_curator.transforms.io", "beam_curator.transforms.stages"],
    package_dir={"beam_curator": "beam_curator", "beam_curator.transforms": "transforms"},
    package_data={"beam_curator.report": ["templates/*.html"]},
    install_requires=[
        "apache-beam[aws]==2.77.0",
        "numpy>=1.26,<3",
        "pandas>=2.1,<4",
        "pyarrow>=14,<26",
        "nvidia-dali-cuda120==2.4.0",
        "pillow>=10,<13",
        "tqdm>=4.60,<5",
        "jinja2>=3,<4",  # the run report
    ],
    extras_require={
        # The model stages (--model-dir): ONNX Runtime on the CPU. GPU workers install [gpu] instead:
        # onnxruntime-gpu is the same module with the CUDA provider. 1.22-1.26 are built for CUDA 12, as
        # nvidia-dali-cuda120 is, and their cuda/cudnn extras bring CUDA 12 and cuDNN 9 as wheels, so the
        # pair needs only a driver (CUDA 12 or 13 era), not the host's CUDA libraries. 1.27 and later are
        # CUDA 13 builds: docs/DEPLOYMENT.md ("CUDA pairs") says when and how to use them.
        "models": MODELS,
        "gpu": ["onnxruntime-gpu[cuda,cudnn]>=1.22,<1.27", *TOKENIZERS],
        # export-models only: torch and transformers read the checkpoints and write ONNX.
        "export": EXPORT,
        "test": [
            "pytest>=8,<10",
            "webdataset==1.0.2",
            "datasets>=4,<6",
            "duckdb>=1,<3",
            "hypothesis>=6,<7",
            "moto[server]>=5,<6",
            "setuptools>=65",
            "wheel",
            "ruff>=0.15,<1",
            "mypy>=1.10,<3",
            "ImageHash>=4.3,<5",  # the perceptual hash's oracle
            # The CPU build this project's CI machines hold locally; any torch >= 2.4 works for the tests.
            "torch==2.13.0",
            *MODELS,
            *EXPORT,
        ],
        "bench": ["scikit-image>=0.22,<1"],
    },
    entry_points={"console_scripts": ["beam-curator=beam_curator.cli:console_main"]},
)
