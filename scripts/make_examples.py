#!/usr/bin/env python
"""Build the small data samples shipped in data/examples/ from the full public data sets.

    python scripts/make_examples.py --shared ../shared/data --out data/examples --rows 300 --seed 0

- ``routerbench_sample.csv``: a seeded sample of complete rows (no empty cell) of the three RouterBench CSVs,
  stratified by file (proportional allocation, largest remainder), rows kept in source order, every cell
  unchanged (same header; the unnamed first column is RouterBench's own row index).
- ``gsm8k_sample.jsonl``: the first ``--gsm8k`` lines of GSM8K's test.jsonl, byte for byte, so the
  question ``gsm8k-gsm8k_sample-<i>`` is line ``i`` (0-based) of test.jsonl.

Running it twice with the same arguments produces identical files.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

ROUTERBENCH_FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")


def _complete(row: list[str]) -> bool:
    return all(cell != "" for cell in row[1:])  # the unnamed index column may be anything


def allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Proportional allocation of ``total`` rows over strata of ``sizes`` (largest remainder, ties by name)."""
    n = sum(sizes.values())
    total = min(total, n)
    exact = {k: total * v / n for k, v in sizes.items()}
    alloc = {k: int(x) for k, x in exact.items()}
    rest = total - sum(alloc.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - alloc[k]), k))[:rest]:
        alloc[k] += 1
    return alloc


def sample_routerbench(src: Path, out: Path, rows: int, seed: int) -> dict[str, int]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    header: list[str] | None = None
    complete: dict[str, list[int]] = {}
    for name in ROUTERBENCH_FILES:
        with (src / name).open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            h = next(reader)
            if header is None:
                header = h
            elif h != header:
                raise SystemExit(f"{src / name}: header differs from {ROUTERBENCH_FILES[0]}")
            complete[name] = [i for i, row in enumerate(reader) if _complete(row)]
    alloc = allocate({k: len(v) for k, v in complete.items()}, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fo:
        writer = csv.writer(fo, lineterminator="\n")
        writer.writerow(header)
        for name in ROUTERBENCH_FILES:
            rng = random.Random(f"{seed}:{name}")
            chosen = set(rng.sample(complete[name], alloc[name]))
            with (src / name).open(encoding="utf-8", newline="") as f:
                reader = csv.reader(f)
                next(reader)
                for i, row in enumerate(reader):
                    if i in chosen:
                        writer.writerow(row)
    return alloc


def sample_gsm8k(src: Path, out: Path, n: int) -> int:
    taken = 0
    with src.open("rb") as f, out.open("wb") as fo:
        for line in f:
            if taken >= n:
                break
            fo.write(line)
            taken += 1
    return taken


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"), help="folder holding routerbench/ and gsm8k/")
    ap.add_argument("--out", type=Path, default=Path("data/examples"), help="output folder")
    ap.add_argument("--rows", type=int, default=300, help="RouterBench rows to sample (all three files together)")
    ap.add_argument("--gsm8k", type=int, default=50, help="GSM8K test questions to copy")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = ap.parse_args(argv)
    alloc = sample_routerbench(a.shared / "routerbench", a.out / "routerbench_sample.csv", a.rows, a.seed)
    n = sample_gsm8k(a.shared / "gsm8k" / "test.jsonl", a.out / "gsm8k_sample.jsonl", a.gsm8k)
    print("routerbench_sample.csv:", ", ".join(f"{k} {v}" for k, v in alloc.items()), f"(total {sum(alloc.values())})")
    print(f"gsm8k_sample.jsonl: {n} questions")
    for p in sorted(a.out.glob("*_sample.*")):
        print(f"  {p}: {p.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
