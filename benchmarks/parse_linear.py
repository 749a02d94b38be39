"""Benchmark: parsing stays linear on adversarial outputs (a size sweep of the worst cases).

For each adversarial family (a tag or a score holding a run of spaces, repeated open tags,
repeated think sections, a long canonical answer), times ``parse_profile`` and the tag
normalisation at n and 16 n characters and prints the cost ratio. Linear work gives about 16;
quadratic work about 256 (the quadratic label fold this replaces took 19 s for one tag of
32,000 spaces). The baseline is the same run's n-sized input, so the ratio does not depend on
the machine. The last line is `RESULT parse_linear ratio=<worst ratio / 16>` (target <= 2).
The test suite guards the same property without timing (tests/test_linear_parsing.py).
"""

from __future__ import annotations

import argparse
import time

from verl_confprofile.profile_format import parse_profile
from verl_confprofile.taxonomy import Taxonomy, normalize_label

FAMILIES = {
    "tag of spaces": lambda n: "<age><tag>18" + " " * n + "-23</tag><score>3</score></age>",
    "tag of spaced dashes": lambda n: "<gender><tag>" + " - " * (n // 3) + "</tag><score>4</score></gender>",
    "score of spaces": lambda n: "<age><tag>50+</tag><score>very" + " " * n + "high</score></age>",
    "repeated open tags": lambda n: "<age>" * (n // 5) + "<tag>50+</tag><score>3</score></age>",
    "think sections": lambda n: "<think>x</think>" * (n // 32) + "<think>" * (n // 14),
    "canonical answers": lambda n: "<age><evidence>e</evidence><tag>50+</tag><score>3</score></age>" * (n // 64),
}


def best_time(fn, arg, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200_000, help="n, the characters of the small input")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    taxonomy = Taxonomy.load()
    worst = 0.0
    cases = [(f"parse_profile: {name}", lambda t: parse_profile(t, taxonomy), make) for name, make in FAMILIES.items()]
    cases.append(("normalize_label: spaces", normalize_label, lambda n: "a" + " " * n + "-b"))
    for name, fn, make in cases:
        small, large = make(args.size), make(16 * args.size)
        t_small, t_large = best_time(fn, small, args.repeats), best_time(fn, large, args.repeats)
        ratio = t_large / t_small
        worst = max(worst, ratio)
        print(f"{name:40s} {len(small):>9d} chars {1e3 * t_small:8.2f} ms   x16 size: {1e3 * t_large:9.2f} ms   ratio {ratio:6.1f}")
    print(f"RESULT parse_linear ratio={worst / 16:.2f} (worst cost ratio {worst:.1f} for 16x the input; linear = 16)")


if __name__ == "__main__":
    main()
