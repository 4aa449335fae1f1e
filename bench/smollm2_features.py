"""Issue 14 lever (third session): SmolLM2-135M-Instruct's own hidden states as the features of the `logistic`
router, alone or blended with the MiniLM classifier; every choice (L2 strength C, blend weight w) on three inner
validation folds of each split's training side, then AIQ on the split's held-out questions with a paired bootstrap
against the MiniLM `logistic` router. CPU only.

    python bench/smollm2_features.py extract --cache CACHE.jsonl --out FEATS.npz     # ~28 min on 2 cores, 2,205 questions
    python bench/smollm2_features.py compare --cache CACHE.jsonl --emb-cache EMB.npz --feats FEATS.npz \
        [--grid 0.001,0.003,0.01:0.5,1.0] [--splits 0 1 2]

extract: mean-pooled last-layer hidden state (and the middle layer's, and the last token's) of the question in
SmolLM2's chat template, truncated at 512 tokens, fp32. compare: features standardised on the training side,
P(correct) = w x P_smollm2 + (1 - w) x P_minilm, the grid's (C, w) pairs and w = 0 (MiniLM alone) scored by
validation AIQ.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def extract(a) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.evaluate import load_prompts

    torch.set_num_threads(2)
    p = smollm2_path()
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()
    prompts, _ = load_prompts(a.cache)
    prompts.sort(key=lambda q: len(q.prompt))
    ids, mean, last, mid = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(prompts), 8):
            chunk = prompts[i : i + 8]
            texts = [tok.apply_chat_template([{"role": "user", "content": q.prompt}], tokenize=False,
                                             add_generation_prompt=True) for q in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=512)
            hs = model(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).float()
            mean.append(((hs[-1] * m).sum(1) / m.sum(1)).numpy())
            mid.append(((hs[len(hs) // 2] * m).sum(1) / m.sum(1)).numpy())
            L = enc["attention_mask"].sum(1) - 1
            last.append(hs[-1][torch.arange(len(chunk)), L].numpy() if tok.padding_side == "right" else hs[-1][:, -1].numpy())
            ids += [q.prompt_id for q in chunk]
    np.savez(a.out, ids=np.array(ids), mean=np.concatenate(mean), last=np.concatenate(last), mid=np.concatenate(mid))
    print(f"wrote {a.out}: {len(ids)} questions")


def compare(a) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from router_quality import _embeddings
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.evaluate import load_prompts, mean_cost_per_query
    from xrouter_lite.pairs import split_prompt_ids

    warnings.filterwarnings("ignore")
    full, _ = load_prompts(a.cache)
    emb = _embeddings(full, a.emb_cache)
    z = np.load(a.feats)
    sm = dict(zip(z["ids"], z[a.layer]))
    models = sorted(full[0].outcomes)
    cs, ws = (part.split(",") for part in a.grid.split(":"))
    grid = [(float(w), float(c)) for c in cs for w in ws] + [(0.0, None)]

    def probs(train, test, kind, C):
        if kind == "minilm":
            Xs, Xt = np.stack([emb[p.prompt_id] for p in train]), np.stack([emb[p.prompt_id] for p in test])
        else:
            S_tr, S_te = np.stack([sm[p.prompt_id] for p in train]), np.stack([sm[p.prompt_id] for p in test])
            sc = StandardScaler().fit(S_tr)
            Xs, Xt = sc.transform(S_tr), sc.transform(S_te)
        out = {}
        for m in models:
            y = np.array([p.outcomes[m].correct for p in train]).astype(int)
            out[m] = LogisticRegression(C=C, max_iter=500).fit(Xs, y).predict_proba(Xt)[:, 1]
        return out

    def aiq_of(P, test, cv, cnt=None):
        outs = [{m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in test]
        envs = [envelope({m: float(P[m][i]) for m in models}, cv) for i in range(len(test))]
        return aiq_of_envelopes(envs, outs, models, cnt)

    def blend(tr, te, w, c, Pm):
        if c is None:
            return Pm
        Ps = probs(tr, te, "smol", c)
        return {m: w * Ps[m] + (1 - w) * Pm[m] for m in models}

    rng = np.random.default_rng(0)
    for seed in a.splits:
        test_ids = split_prompt_ids({p.prompt_id for p in full}, 0.2, seed)
        tq = sorted((p for p in full if p.prompt_id in test_ids), key=lambda p: p.prompt_id)
        side = [p for p in full if p.prompt_id not in test_ids]
        cpq = mean_cost_per_query(side)
        top = max(cpq.values())
        cv = {m: cpq[m] / top for m in models}
        score = {g: [] for g in grid}
        for f in range(3):
            vid = split_prompt_ids({p.prompt_id for p in side}, 0.25, 100 + 10 * seed + f)
            tr = [p for p in side if p.prompt_id not in vid]
            va = [p for p in side if p.prompt_id in vid]
            Pm = probs(tr, va, "minilm", 1.0)
            for w, c in grid:
                score[(w, c)].append(aiq_of(blend(tr, va, w, c, Pm), va, cv))
        w, c = max(grid, key=lambda g: np.mean(score[g]))
        Pm = probs(side, tq, "minilm", 1.0)
        P = blend(side, tq, w, c, Pm)
        a_b, a_m = aiq_of(P, tq, cv), aiq_of(Pm, tq, cv)
        boot = []
        for _ in range(a.bootstrap):
            cnt = np.bincount(rng.integers(0, len(tq), len(tq)), minlength=len(tq))
            boot.append(aiq_of(P, tq, cv, cnt) - aiq_of(Pm, tq, cv, cnt))
        boot.sort()
        lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
        print(f"split {seed}: validation AIQ " + ", ".join(f"w{g[0]}/C{g[1]} {np.mean(v):.4f}" for g, v in score.items()))
        print(f"split {seed}: chosen w={w} C={c}: held-out {a_b:.4f} vs MiniLM logistic {a_m:.4f} "
              f"({a_b - a_m:+.4f} [{lo:+.4f}, {hi:+.4f}])", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--cache", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("--cache", type=Path, required=True)
    c.add_argument("--emb-cache", type=Path, required=True)
    c.add_argument("--feats", type=Path, required=True)
    c.add_argument("--layer", default="mean", choices=["mean", "mid", "last"])
    c.add_argument("--grid", default="0.001,0.003,0.01:0.5,1.0", help="Cs:weights")
    c.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--bootstrap", type=int, default=300)
    a = ap.parse_args()
    extract(a) if a.cmd == "extract" else compare(a)


if __name__ == "__main__":
    main()
