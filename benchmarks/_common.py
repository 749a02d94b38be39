"""What the data benchmarks share: their size options and the simulated inputs they time.

Not a benchmark itself (``make bench`` runs the scripts whose names do not start with ``_``).
"""

from __future__ import annotations

import argparse
import json

import orjson

from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.taxonomy import Taxonomy


def size_parser(description: str) -> argparse.ArgumentParser:
    """A parser with --users, --samples (per user) and --repeats: 20,000 x 10, best of 3 by default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def population(taxonomy: Taxonomy) -> SimulatedPopulation:
    """The simulated population of every data benchmark: seed 0, 5% malformed samples."""
    return SimulatedPopulation(taxonomy, seed=0, malformed_rate=0.05)


def user_ids(count: int) -> list[str]:
    return [f"user{i:06d}" for i in range(count)]


def write_samples(path: str, population: SimulatedPopulation, users: list[str], num_samples: int) -> int:
    """Write ``num_samples`` samples of every user to ``path`` (JSONL); return the characters of text written."""
    text_chars = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in population.samples(users, num_samples):
            text_chars += len(rec["text"])
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return text_chars


def read_json_lines(*paths: str, fast: bool = False) -> int:
    """Merely read JSONL files, every line decoded: the baseline reads text lines with the
    standard library's json.loads; ``fast`` reads byte lines with orjson, which the package
    uses, to show beside it. Returns the number of keys read."""
    n = 0
    for path in paths:
        with open(path, "rb") if fast else open(path, encoding="utf-8") as fh:
            loads = orjson.loads if fast else json.loads
            for line in fh:
                n += len(loads(line))
    return n
