"""Issue 14 lever: a pointwise objective on the router's base model. SmolLM2-135M-Instruct, 4-bit NF4 + LoRA r=16
(the recipe's quantisation and adapter) with a linear head over the mean-pooled last hidden state: one logit per
pool model, binary cross-entropy on "this model answered correctly" (no DPO, no pairs). Two halves:

    # device (GPU): trains on each split's inner-training part, scores the validation part and the held-out questions
    python bench/pointwise_gpu.py train --cache CACHE.jsonl --out DIR [--splits 0 1 2] [--epochs 6] [--lr 2e-4]
    # here (CPU): the epoch and the blend weight with the MiniLM `logistic` router chosen on validation; held-out AIQ
    python bench/pointwise_gpu.py compare --cache CACHE.jsonl --emb-cache EMB.npz --dir DIR [DIR2 ...] [--bootstrap 300]
        [--smol-feats FEATS.npz]   # + a three-way blend with the SmolLM2-feature logistic (weights on validation)

Per split seed s (the pairs stage's split, eval_fraction 0.2), the training side is cut again (`split_prompt_ids`
seed 100 + s, 20%) into inner-training and validation; the held-out questions are never used for a choice. The
head's probabilities after each epoch are written for the validation and held-out questions (DIR/split{s}.npz).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def parts(prompts, s):
    from xrouter_lite.pairs import split_prompt_ids

    ids = {p.prompt_id for p in prompts}
    held = split_prompt_ids(ids, 0.2, s)
    val = split_prompt_ids(ids - held, 0.2, 100 + s)
    key = lambda p: p.prompt_id  # noqa: E731
    return (sorted((p for p in prompts if p.prompt_id not in held and p.prompt_id not in val), key=key),
            sorted((p for p in prompts if p.prompt_id in val), key=key),
            sorted((p for p in prompts if p.prompt_id in held), key=key))


def train(a) -> None:
    import numpy as np
    import torch
    from peft import get_peft_model

    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.evaluate import load_prompts
    from xrouter_lite.train import TrainConfig, load_model, load_tokenizer, lora_config, resolve_precision

    prompts, _ = load_prompts(a.cache)
    models = sorted(prompts[0].outcomes)
    cfg = TrainConfig(model_name_or_path=str(a.model or smollm2_path()), output_dir=str(a.out))
    prec = resolve_precision(cfg)
    tok = load_tokenizer(cfg)
    a.out.mkdir(parents=True, exist_ok=True)
    for s in a.splits:
        torch.manual_seed(s)
        tr, va, te = parts(prompts, s)
        if a.limit:  # a smoke run
            tr, va, te = tr[: a.limit], va[: a.limit], te[: a.limit]
        base = load_model(cfg, prec)
        model = get_peft_model(base, lora_config(cfg))
        hid = base.config.hidden_size
        head = torch.nn.Linear(hid, len(models)).to(model.device, torch.float32)
        rate = np.array([[p.outcomes[m].correct for m in models] for p in tr], dtype=np.float32).mean(0)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor(np.log(rate / (1 - rate + 1e-6) + 1e-6)))
        opt = torch.optim.AdamW([{"params": [q for q in model.parameters() if q.requires_grad], "lr": a.lr},
                                 {"params": head.parameters(), "lr": a.head_lr}], weight_decay=0.0)
        steps = a.epochs * ((len(tr) + a.batch - 1) // a.batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.0, 1 - i / steps))

        def enc(batch):
            texts = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                             add_generation_prompt=True) for p in batch]
            e = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=a.max_len)
            return {k: v.to(model.device) for k, v in e.items()}

        def logits(batch):
            e = enc(batch)
            hs = model(**e, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
            m = e["attention_mask"].unsqueeze(-1).to(hs.dtype)
            pooled = ((hs * m).sum(1) / m.sum(1)).float()
            return head(pooled)

        def predict(qs):
            model.eval()
            out = []
            with torch.no_grad():
                for i in range(0, len(qs), 64):
                    out.append(torch.sigmoid(logits(qs[i : i + 64])).cpu().numpy())
            model.train()
            return np.concatenate(out)

        Yt = torch.tensor([[p.outcomes[m].correct for m in models] for p in tr], dtype=torch.float32)
        rec = {"models": models, "val_ids": [p.prompt_id for p in va], "test_ids": [p.prompt_id for p in te]}
        pv, pt, losses = [], [], []
        t0 = time.time()
        model.train()
        for ep in range(a.epochs):
            g = torch.Generator().manual_seed(1000 * s + ep)
            order = torch.randperm(len(tr), generator=g).tolist()
            tot = 0.0
            for i in range(0, len(order), a.batch):
                idx = order[i : i + a.batch]
                lo = logits([tr[j] for j in idx])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(lo, Yt[idx].to(lo.device))
                loss.backward()
                opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
                tot += float(loss.detach()) * len(idx)
            pv.append(predict(va)), pt.append(predict(te)), losses.append(tot / len(tr))
            print(f"split {s} epoch {ep + 1}: train BCE {losses[-1]:.4f} ({time.time() - t0:.0f} s, peak "
                  f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved)", flush=True)
        np.savez(a.out / f"split{s}.npz", p_val=np.stack(pv), p_test=np.stack(pt), train_bce=np.array(losses))
        (a.out / f"split{s}.json").write_text(json.dumps(rec) + "\n")
        model = base = head = opt = None  # free the GPU memory before the next split
        torch.cuda.empty_cache()


def compare(a) -> None:
    import numpy as np

    from router_quality import _embeddings
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.evaluate import load_prompts, mean_cost_per_query
    from xrouter_lite.simple_routers import correctness_classifier

    warnings.filterwarnings("ignore")
    prompts, _ = load_prompts(a.cache)
    emb = _embeddings(prompts, a.emb_cache)
    models = sorted(prompts[0].outcomes)
    rng = np.random.default_rng(0)
    X = lambda ps: np.stack([emb[p.prompt_id] for p in ps])  # noqa: E731

    def logistic(train, qs):
        return np.stack([correctness_classifier(X(train), [p.outcomes[m].correct for p in train])(X(qs))
                         for m in models], 1)

    if a.smol_feats is not None:
        from sklearn.preprocessing import StandardScaler

        zf = np.load(a.smol_feats)
        feats = dict(zip(zf["ids"], zf["mean"]))

    def smol(train, qs):
        """The `logistic` router on SmolLM2's mean hidden state (standardised, C --smol-C: bench/smollm2_features.py)."""
        S_tr = np.stack([feats[p.prompt_id] for p in train])
        sc = StandardScaler().fit(S_tr)
        Xs, Xq = sc.transform(S_tr), sc.transform(np.stack([feats[p.prompt_id] for p in qs]))
        return np.stack([correctness_classifier(Xs, [p.outcomes[m].correct for p in train], a.smol_C)(Xq)
                         for m in models], 1)

    def envs(P, cvec):
        return [envelope({m: float(P[i, j]) for j, m in enumerate(models)}, cvec) for i in range(len(P))]

    def outs(qs):
        return [{m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in qs]

    def task_rule(train, qs):
        acc = {}
        for p in train:
            d = acc.setdefault(p.dataset, np.zeros((2, len(models))))
            d[0] += [p.outcomes[m].correct for m in models]
            d[1] += 1
        return np.stack([acc[p.dataset][0] / acc[p.dataset][1] for p in qs])

    summary = []
    for s in a.splits:
        tr, va, te = parts(prompts, s)
        side = tr + va
        cpq = mean_cost_per_query(side)
        cvec = {m: cpq[m] / max(cpq.values()) for m in models}
        ov, ot = outs(va), outs(te)
        best = None  # (val AIQ, run, epoch, p_val, p_test): the run (--dir) and epoch chosen on validation
        for d in a.dir:
            z = np.load(d / f"split{s}.npz")
            rec = json.loads((d / f"split{s}.json").read_text())
            assert rec["models"] == models
            assert [p.prompt_id for p in va] == rec["val_ids"] and [p.prompt_id for p in te] == rec["test_ids"]
            val_aiq = [aiq_of_envelopes(envs(P, cvec), ov, models) for P in z["p_val"]]
            print(f"split {s} {d.name}: validation AIQ per epoch {', '.join(f'{v:.3f}' for v in val_aiq)}")
            for ep, v in enumerate(val_aiq):
                if best is None or v > best[0]:
                    best = (v, d.name, ep, z["p_val"][ep], z["p_test"][ep])
        best_val, run, ep, pv, pt = best
        lv = logistic(tr, va)
        ws = [0.0, 0.25, 0.5, 0.75, 1.0]
        wv = [aiq_of_envelopes(envs(w * pv + (1 - w) * lv, cvec), ov, models) for w in ws]
        w = ws[int(np.argmax(wv))]
        arms = {
            "pointwise head": pt,
            "blend with MiniLM logistic (w on validation)": w * pt + (1 - w) * logistic(tr, te),
            "MiniLM logistic (whole training side)": logistic(side, te),
            "per-task rule (task label)": task_rule(side, te),
        }
        if a.smol_feats is not None:  # the three estimators blended, simplex weights (step 0.25) on validation
            sv, st = smol(tr, va), smol(tr, te)
            lt = logistic(tr, te)
            grid = [(i / 4, j / 4, 1 - (i + j) / 4) for i in range(5) for j in range(5 - i)]
            gv = [aiq_of_envelopes(envs(x * pv + y * sv + z * lv, cvec), ov, models) for x, y, z in grid]
            x, y, zz = grid[int(np.argmax(gv))]
            print(f"split {s}: three-way weights (pointwise, SmolLM2 features, MiniLM) {x:g} / {y:g} / {zz:g} chosen "
                  f"on validation (AIQ {max(gv):.3f})")
            arms["three-way blend (weights on validation)"] = x * pt + y * st + zz * lt
        E = {k: envs(P, cvec) for k, P in arms.items()}
        res = {k: aiq_of_envelopes(e, ot, models) for k, e in E.items()}
        print(f"split {s}: {run} epoch {ep + 1} chosen on validation (AIQ {best_val:.3f}); blend weight {w:g} "
              f"(validation AIQ per weight {', '.join(f'{v:.3f}' for v in wv)})")
        boots = {k: [] for k in arms}
        for _ in range(a.bootstrap):
            wt = np.bincount(rng.integers(0, len(te), len(te)), minlength=len(te)).tolist()
            base = {k: aiq_of_envelopes(e, ot, models, wt) for k, e in E.items()}
            for k in arms:
                boots[k].append(base[k] - base["per-task rule (task label)"])
        for k in arms:
            lo, hi = np.percentile(boots[k], [2.5, 97.5])
            print(f"  {k:58s} AIQ {res[k]:.4f}  minus per-task rule {res[k] - res['per-task rule (task label)']:+.4f} "
                  f"[{lo:+.4f}, {hi:+.4f}]")
        summary.append(res)
    for k in summary[0]:
        vals = [r[k] for r in summary]
        print(f"mean {k:58s} {np.mean(vals):.4f} ({', '.join(f'{v:.3f}' for v in vals)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--model", type=Path)
    t.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--head-lr", type=float, default=1e-3)
    t.add_argument("--max-len", type=int, default=512)
    t.add_argument("--limit", type=int, default=0, help="at most N questions per part (a smoke run)")
    c = sub.add_parser("compare")
    c.add_argument("--cache", type=Path, required=True)
    c.add_argument("--emb-cache", type=Path, required=True)
    c.add_argument("--dir", type=Path, nargs="+", required=True, help="one or more train outputs (runs)")
    c.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    c.add_argument("--bootstrap", type=int, default=300)
    c.add_argument("--smol-feats", type=Path, help="SmolLM2 features (bench/smollm2_features.py extract): adds a "
                   "three-way blend of the pointwise head, the SmolLM2-feature logistic and the MiniLM logistic")
    c.add_argument("--smol-C", type=float, default=0.001)
    a = ap.parse_args()
    train(a) if a.cmd == "train" else compare(a)


if __name__ == "__main__":
    main()
