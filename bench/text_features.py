"""Issue 14: does the `logistic` router gain from a question's plain text statistics next to its MiniLM embedding?

    python bench/text_features.py CACHE --emb-cache EMB.npz [--bootstrap 1000]

all-MiniLM-L6-v2 embeddings are normalised: they keep what a question is about, not how long it is. Five statistics
(log characters, log words, log digits, lines / 10, a code marker: ```` ``` ```` or ``def ``), standardised on the
training side and scaled by w, are appended to the embedding; everything else is the `logistic` router (one
L2-penalised logistic regression per model, C 1; argmax P - tau x c; exact curves, AIQ over the single models' range).
First the choice, on INNER folds of each split's training side only (3 folds x 80/20 per split; w in 0.1 / 0.3, the
four statistics without the code marker, the two lengths alone), then the chosen variant on the held-out questions of
the three seeded splits (441 each) with a paired bootstrap against the plain router.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def text_stats(text: str) -> list[float]:
    import math

    return [math.log1p(len(text)), math.log1p(len(text.split())), math.log1p(sum(c.isdigit() for c in text)),
            text.count("\n") / 10, float("```" in text or "def " in text)]


def main() -> None:
    import numpy as np

    from router_quality import label_matrices
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.pairs import split_prompt_ids
    from xrouter_lite.simple_routers import correctness_classifier

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args()
    full, models, ids, Y, Cq, E = label_matrices(a.cache, a.emb_cache)
    S = np.array([text_stats(p.prompt) for p in full])
    variants = {"plain": (None, 0.0), "w0.1": (slice(0, 5), 0.1), "w0.3": (slice(0, 5), 0.3),
                "w0.3 no code marker": (slice(0, 4), 0.3), "w0.3 lengths only": (slice(0, 2), 0.3)}

    def features(rows, name):
        cols, w = variants[name]
        if cols is None:
            return E
        mu, sd = S[rows][:, cols].mean(0), S[rows][:, cols].std(0) + 1e-9  # the training side's statistics only
        return np.hstack([E, w * (S[:, cols] - mu) / sd])

    def envelopes(rows, test, name):
        X = features(rows, name)
        P = np.stack([correctness_classifier(X[rows], Y[rows, j], 1.0)(X[test]) for j in range(len(models))], 1)
        cpq = Cq[rows].mean(0)
        cvec = {m: cpq[j] / cpq.max() for j, m in enumerate(models)}
        return [envelope({m: float(P[i, j]) for j, m in enumerate(models)}, cvec) for i in range(len(test))]

    def outs(test):
        return [{m: (bool(Y[t, j]), Cq[t, j]) for j, m in enumerate(models)} for t in test]

    inner = {k: [] for k in variants}
    splits = {}
    for s in a.seeds:
        held = split_prompt_ids(set(ids), 0.2, s)
        train = [i for i, x in enumerate(ids) if x not in held]
        splits[s] = (train, [i for i, x in enumerate(ids) if x in held])
        rng = np.random.default_rng(100 + s)
        for f in range(3):
            perm = rng.permutation(train)
            n = len(perm) // 5
            tr, te = sorted(perm[n:].tolist()), sorted(perm[:n].tolist())
            for k in variants:
                inner[k].append(aiq_of_envelopes(envelopes(tr, te, k), outs(te), models))
            print(f"inner split {s} fold {f}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in inner.items()), flush=True)
    base = np.array(inner["plain"])
    for k, v in inner.items():
        d = np.array(v) - base
        print(f"inner folds {k}: mean AIQ {np.mean(v):.4f}, minus plain {d.mean():+.4f} ({(d > 0).sum()}/{len(d)} folds above)")
    pick = max((k for k in variants if k != "plain"), key=lambda k: np.mean(inner[k]))
    print(f"chosen on inner folds: {pick}")
    rng = np.random.default_rng(0)
    gains = []
    for s, (train, test) in splits.items():
        o = outs(test)
        e0, e1 = envelopes(train, test, "plain"), envelopes(train, test, pick)
        a0, a1 = aiq_of_envelopes(e0, o, models), aiq_of_envelopes(e1, o, models)
        diffs = []
        for _ in range(a.bootstrap):
            w = np.bincount(rng.integers(0, len(test), len(test)), minlength=len(test)).tolist()
            diffs.append(aiq_of_envelopes(e1, o, models, w) - aiq_of_envelopes(e0, o, models, w))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        gains.append(a1 - a0)
        print(f"held-out split {s}: plain {a0:.4f}, {pick} {a1:.4f}, difference {a1 - a0:+.4f} [{lo:+.4f}, {hi:+.4f}]",
              flush=True)
    print(f"held-out mean difference {np.mean(gains):+.4f}")


if __name__ == "__main__":
    main()
