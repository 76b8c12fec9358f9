from setuptools import setup

setup(
    name="beam-curator",
    version="0.1.0",
    description="Image-dataset curation on Apache Beam: WebDataset shards, NVIDIA DALI decoding, tar + parquet output",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # transforms/ (the Beam layer) is installed as the subpackage beam_curator.transforms.
    packages=["beam_curator", "beam_curator.transforms"],
    package_dir={"beam_curator": "beam_curator", "beam_curator.transforms": "transforms"},
    install_requires=[
        "apache-beam[aws]==2.77.0",
        "numpy>=1.26,<3",
        "pandas>=2.1,<4",
        "pyarrow>=14,<26",
        "nvidia-dali-cuda120==2.4.0",
        "pillow>=10,<13",
        "tqdm>=4.60,<5",
    ],
    extras_require={
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
        ],
        "bench": ["scikit-image>=0.22,<1"],
    },
    entry_points={"console_scripts": ["beam-curator=beam_curator.cli:console_main"]},
)
