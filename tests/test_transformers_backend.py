"""``synthesize --backend transformers``: Hugging Face ``generate``, batched, with the other backends' rules.

A tiny random Qwen3-architecture model (built here, with the real Qwen tokenizer) samples a few
users. What is checked: sample i of a user is drawn with seed S + i whatever else shares its
batch (so a resumed run draws exactly what is missing, and the same), the token limit and
``finish_reason``, greedy decoding at temperature 0, and the sampling record resume compares.
"""

from __future__ import annotations

import json

import pytest

from verl_confprofile.cli import main
from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.taxonomy import Taxonomy

USERS, SAMPLES, TOKENS = 3, 2, 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qwen_tokenizer_dir) -> str:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("tiny_model")
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen3ForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    population = SimulatedPopulation(Taxonomy.load(), seed=1)
    # users of different prompt lengths, so a batch is left-padded
    path.write_text("".join(json.dumps(population.record(f"u{i}")) + "\n" for i in range(USERS)))
    return str(path)


def sample(records: str, model: str, out, *extra: str) -> dict[tuple[str, int], dict]:
    argv = ["synthesize", "--records", records, "--out", str(out), "--backend", "transformers", "--model", model,
            "--num-samples", str(SAMPLES), "--max-tokens", str(TOKENS), "--device", "cpu", *extra]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {(s["user_id"], s["sample_idx"]): s for s in lines}


def test_a_draw_depends_on_its_seed_not_on_its_batch(tmp_path, tiny, records):
    alone = sample(records, tiny, tmp_path / "alone.jsonl", "--seed", "7", "--batch-size", "1")
    together = sample(records, tiny, tmp_path / "together.jsonl", "--seed", "7", "--batch-size", "16")
    assert len(alone) == USERS * SAMPLES
    assert {k: s["text"] for k, s in alone.items()} == {k: s["text"] for k, s in together.items()}
    other = sample(records, tiny, tmp_path / "other.jsonl", "--seed", "8", "--batch-size", "16")
    assert {k: s["text"] for k, s in other.items()} != {k: s["text"] for k, s in alone.items()}
    # sample i of every user is drawn with seed S + i: seed 8's sample 0 is seed 7's sample 1
    assert [other[(f"u{i}", 0)]["text"] for i in range(USERS)] == [alone[(f"u{i}", 1)]["text"] for i in range(USERS)]
    first = alone[("u0", 0)]
    assert first["model"] == tiny
    assert first["sampling"] == {"backend": "transformers", "seed": 7, "temperature": None, "max_tokens": TOKENS}
    # a random model never ends its turn within 6 tokens: every sample is cut at the limit
    assert {s["finish_reason"] for s in alone.values()} == {"length"}


def test_a_resumed_run_draws_only_the_missing_samples_and_the_same_ones(tmp_path, tiny, records, capsys):
    out = tmp_path / "s.jsonl"
    full = sample(records, tiny, out, "--seed", "3")
    kept = [line for line in out.read_text().splitlines() if json.loads(line)["sample_idx"] == 0]
    out.write_text("".join(line + "\n" for line in kept))
    capsys.readouterr()
    resumed = sample(records, tiny, out, "--seed", "3", "--batch-size", "2")
    assert f"{USERS} already in {out}, {USERS} to draw" in capsys.readouterr().out
    assert {k: s["text"] for k, s in resumed.items()} == {k: s["text"] for k, s in full.items()}


def test_temperature_zero_is_greedy(tmp_path, tiny, records):
    greedy = sample(records, tiny, tmp_path / "g.jsonl", "--temperature", "0")
    assert all(greedy[(f"u{i}", 0)]["text"] == greedy[(f"u{i}", 1)]["text"] for i in range(USERS))
