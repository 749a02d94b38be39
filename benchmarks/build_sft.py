"""Benchmark: `confprofile build-sft` on 20,000 users x 10 samples, against merely reading the inputs.

Writes records and samples (about 1.5 KB per sample, six dimensions, 5% malformed) from the
simulated population to temporary files, then times in the same run:
  read:  reading both files line by line with json.loads, nothing else (the ratio's baseline;
         the same with orjson, the decoder build-sft uses, is printed beside it);
  build: build-sft end to end on them with the local engine (vote, calibrate, evidence, prompts,
         parquet, calibration, report and figure), in a fresh subprocess that also reports its
         peak resident memory (ru_maxrss, interpreter and imports included).
The two alternate, --repeats times each, and each is the best of its runs, so both see the same
mix of machine load. The last line is `RESULT build_sft ratio=<build/read> peak_mb=<peak>`
(targets: ratio <= 4, peak < 2 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from verl_confprofile.taxonomy import Taxonomy

from _common import population, read_json_lines, size_parser, user_ids, write_samples  # this script's folder is on sys.path

# Runs in the subprocess: time build-sft in process, then report wall time and peak RSS as JSON.
CHILD = """
import json, resource, sys, time
from verl_confprofile.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
print(json.dumps({"code": code, "seconds": seconds, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_inputs(directory: str, users: int, samples: int) -> tuple[str, str, int]:
    simulated = population(Taxonomy.load())
    ids = user_ids(users)
    records, sample_file = os.path.join(directory, "records.jsonl"), os.path.join(directory, "samples.jsonl")
    with open(records, "w", encoding="utf-8") as fh:
        for user_id in ids:
            fh.write(json.dumps(simulated.record(user_id), ensure_ascii=False) + "\n")
    return records, sample_file, write_samples(sample_file, simulated, ids, samples)


def build(records: str, samples: str, out: str) -> dict:
    argv = ["build-sft", "--records", records, "--samples", samples, "--out", out]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"build-sft failed:\n{done.stderr}")
    return result


def main() -> None:
    args = size_parser(__doc__).parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        records, samples, text_chars = write_inputs(tmp, args.users, args.samples)
        read_s, fast_s, runs = [], [], []
        for _ in range(args.repeats):
            for fast, times in ((False, read_s), (True, fast_s)):
                start = time.perf_counter()
                read_json_lines(records, samples, fast=fast)
                times.append(time.perf_counter() - start)
            runs.append(build(records, samples, os.path.join(tmp, "sft")))
        with open(os.path.join(tmp, "sft", "report.json"), encoding="utf-8") as fh:
            counts = json.load(fh)["counts"]
    n = args.users * args.samples
    read, fast, best = min(read_s), min(fast_s), min(r["seconds"] for r in runs)
    peak_mb = max(r["peak_kb"] for r in runs) / 1024
    print(f"inputs: {args.users} users x {args.samples} samples, mean text {text_chars / n:.0f} chars")
    print(f"read (json.loads of both files): {read:.2f} s")
    print(f"(read with orjson:               {fast:.2f} s; build/orjson read {best / fast:.2f})")
    print(f"build-sft end to end:            {best:.2f} s ({n / best:,.0f} samples/s), {counts['train_rows']} rows")
    print(f"peak memory of build-sft:        {peak_mb:.0f} MB")
    print(f"RESULT build_sft ratio={best / read:.2f} peak_mb={peak_mb:.0f}")


if __name__ == "__main__":
    main()
