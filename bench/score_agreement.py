"""Do two evaluations of one adapter (say GPU and CPU, or 4-bit and unquantised) score and decide alike?

    python bench/score_agreement.py REFERENCE_DECISIONS OTHER_DECISIONS [--taus 0 3 5 10 100 1000]

Both files are evaluation ``decisions.jsonl`` (or ``.jsonl.gz``) in ``score`` mode. For the questions of OTHER (all
of them must be in REFERENCE) it prints the candidate-score differences OTHER - REFERENCE (median and max of their
absolute value; the median and max of their spread within a question, which is what can change a decision: a
constant shift cannot), and for each tau how many decisions agree, re-deciding both from the logged scores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.router import decide  # noqa: E402

DEFAULT_TAUS = [0, 3, 5, 7, 10, 15, 20, 50, 100, 200, 300, 500, 1000, 3000]


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("--taus", type=float, nargs="*", default=DEFAULT_TAUS)
    a = ap.parse_args()

    ref = {d["prompt_id"]: d for d in read(a.reference)}
    other = read(a.other)
    missing = [d["prompt_id"] for d in other if d["prompt_id"] not in ref]
    if missing:
        raise SystemExit(f"{a.other}: {len(missing)} question(s) not in {a.reference}, e.g. {missing[0]!r}")
    agree = dict.fromkeys(a.taus, 0)
    absdiff, spread = [], []
    for d in other:
        r = ref[d["prompt_id"]]
        diffs = [d["base_scores"][m] - r["base_scores"][m] for m in d["base_scores"]]
        absdiff += [abs(x) for x in diffs]
        spread.append(max(diffs) - min(diffs))
        for t in a.taus:
            agree[t] += decide(d["base_scores"], d["costs"], t)[0] == decide(r["base_scores"], r["costs"], t)[0]
    n = len(other)
    print(f"{a.other} against {a.reference}: {n} questions")
    print(f"score difference |d|: median {statistics.median(absdiff):.2f}, max {max(absdiff):.2f} nats; "
          f"spread within a question: median {statistics.median(spread):.2f}, max {max(spread):.2f} nats")
    print("decisions agreeing per tau: " + ", ".join(f"{t:g}: {agree[t]}/{n}" for t in a.taus))
    total = sum(agree.values())
    print(f"all (question, tau) cases: {total}/{n * len(a.taus)} ({total / (n * len(a.taus)):.0%})")


if __name__ == "__main__":
    main()
