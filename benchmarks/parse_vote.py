"""Benchmark: parse + vote + calibrate 20,000 users x 10 samples, against json.loads alone.

Builds realistic samples (about 1.5 KB, six dimensions, 5% malformed) with the simulated teacher,
writes them to a JSONL file, then times in the same run:
  floor: reading the file and json.loads of every line (the ratio's baseline; the same with
         orjson, the decoder the package uses, is printed beside it);
  path:  what `confprofile vote` does: read + parse every sample, vote every user (Eq. 3-5),
         fit the equal-frequency calibrator and give every dimension its level.
Prints samples per second and path/floor; the last line is `RESULT parse_vote ratio=...`.
"""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial

from verl_confprofile.aggregate import read_samples
from verl_confprofile.calibration import Calibrator
from verl_confprofile.gc_pause import cyclic_gc_paused
from verl_confprofile.taxonomy import Taxonomy

from _common import population, read_json_lines, size_parser, user_ids, write_samples  # this script's folder is on sys.path


@cyclic_gc_paused()  # as the commands that run this path (vote, build-sft, build-rl) do
def run_path(path: str, taxonomy: Taxonomy) -> int:
    users = read_samples(path, taxonomy)
    votes = {u: t.votes(taxonomy) for u, t in users.items()}
    calibrator = Calibrator().fit(
        {d.key: [(v[d.key].score, users[u].num_samples) for u, v in votes.items()] for d in taxonomy}
    )
    levels = 0
    for u, v in votes.items():
        m = users[u].num_samples
        levels += sum(calibrator.transform(k, x.score, m) for k, x in v.items())
    return levels


def best_of(repeats: int, fn, *args) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = size_parser(__doc__).parse_args()

    taxonomy = Taxonomy.load()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "samples.jsonl")
        size = write_samples(path, population(taxonomy), user_ids(args.users), args.samples)
        n = args.users * args.samples
        floor = best_of(args.repeats, read_json_lines, path)
        fast_floor = best_of(args.repeats, partial(read_json_lines, fast=True), path)
        full = best_of(args.repeats, run_path, path, taxonomy)
    ratio = full / floor
    print(f"samples: {n} ({args.users} users x {args.samples}), mean text {size / n:.0f} chars")
    print(f"json.loads floor: {floor:.2f} s ({n / floor:,.0f} samples/s)")
    print(f"(orjson floor:    {fast_floor:.2f} s; path/orjson floor {full / fast_floor:.2f})")
    print(f"parse+vote+calibrate: {full:.2f} s ({n / full:,.0f} samples/s)")
    print(f"RESULT parse_vote ratio={ratio:.2f} samples_per_s={n / full:.0f} target<=3")


if __name__ == "__main__":
    main()
