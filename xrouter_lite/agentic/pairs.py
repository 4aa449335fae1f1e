"""``xrouter-lite pairs --agentic``: DPO pairs at each decision state of the exact-value trajectories, mixed with
the one-shot pairs of ``xrouter_lite.pairs`` (same split, same seed; the one-shot rows are written unchanged).

At each state the table policy (``values.InfoValues``, fitted on the training side only) reaches on a training
question, the chosen action is the state's best action and the rejected ones are legal actions whose exact value is
lower by more than ``margin`` (the worst-valued first, then a seeded sample, at most ``max_pairs_per_state``)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ..pairs import EVAL_FILE, TRAIN_FILE, PairsConfig, run_pairs, split_prompt_ids
from ..pool import Pool
from ..reward import RewardConfig
from ..prompting import agentic_dpo_example, is_select_key, action_models
from .replay import replay
from .state import AgenticConfig, load_questions
from .values import InfoValues

AGENTIC_REPORT = "agentic_pairs_report.json"


def default_offered(pool: Pool, questions, cfg: AgenticConfig) -> list[str]:
    """The models the agentic router is offered: the pool minus models the training side shows dominated (another
    model at most as costly and at least as accurate on every dataset)."""
    ids = list(pool.ids)
    ds = sorted({q.dataset for q in questions})
    acc = {(m, d): 0.0 for m in ids for d in ds}
    cost = {m: 0.0 for m in ids}
    cnt = {d: 0 for d in ds}
    for q in questions:
        cnt[q.dataset] += 1
        for m in ids:
            acc[(m, q.dataset)] += q.outcomes[m].correct
            cost[m] += q.outcomes[m].cost
    def dom(a, b):  # b dominates a
        return cost[b] <= cost[a] and all(acc[(b, d)] >= acc[(a, d)] for d in ds) and (cost[b] < cost[a] or any(acc[(b, d)] > acc[(a, d)] for d in ds))
    return [m for m in ids if not any(dom(m, b) for b in ids if b != m)]


def run_agentic_pairs(cache: str | Path, pool: Pool, pcfg: PairsConfig, acfg: AgenticConfig, out_dir: str | Path,
                      *, offered: list[str] | None = None, lam: float = 0.1, margin: float = 0.01,
                      max_pairs_per_state: int = 2, max_rows: int | None = None, val_fraction: float = 0.0, tokenizer=None, tokenizer_name=None,
                      log=print) -> dict:
    """Write the mixed pairs to ``out_dir/dpo_train_data.json`` (one-shot rows first, then agentic rows). With
    ``val_fraction`` a seeded part of the training questions gets no pair at all (neither kind): it is where the
    evaluation tunes tau and max calls (``evaluate.split_validation``, same seed)."""
    out = Path(out_dir)
    qs = load_questions(cache, pool)
    eval_ids = split_prompt_ids([q.prompt_id for q in qs], pcfg.eval_fraction, pcfg.seed)
    train = [q for q in qs if q.prompt_id not in eval_ids]
    offered = offered or default_offered(pool, train, acfg)
    unknown = [m for m in offered if m not in pool]
    if unknown:
        raise ValueError(f"agentic models not in the pool: {unknown}")
    # the one-shot pairs offer the same models as the agentic states (the same adapter serves both)
    rep1 = run_pairs(cache, Pool(pool.subset(offered), source=f"{pool.source} (agentic subset)"), pcfg, out_dir=out,
                     tokenizer=tokenizer, tokenizer_name=tokenizer_name)
    val_ids: set[str] = set()
    if val_fraction > 0:
        from .evaluate import split_validation

        train, val = split_validation(train, val_fraction, pcfg.seed)
        val_ids = {q.prompt_id for q in val}
    r = acfg.reward
    cfg = acfg.model_copy(update={"reward": RewardConfig(k=r.k, lam=lam, cost_max=r.cost_max, cost_unit=r.cost_unit)})
    pairable = {m for m in offered if pool.get(m).tier in cfg.pair_tiers}
    iv = InfoValues(train, offered, pairable, cfg)
    specs = pool.subset(offered)
    n_rows = n_states = 0
    lengths: list[int] = []
    strategies = {}
    tmp = out / (TRAIN_FILE + ".agentic.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        with (out / TRAIN_FILE).open(encoding="utf-8") as one:
            for line in one:
                if val_ids and json.loads(line).get("prompt_id") in val_ids:
                    continue
                f.write(line)
        rows_q = list(train)
        if max_rows is not None:  # a seeded sample of questions, so the agentic rows stay under max_rows
            random.Random(f"{pcfg.seed}\x1fagentic-rows").shuffle(rows_q)
        for q in rows_q:
            if max_rows is not None and n_rows >= max_rows:
                break
            t = replay(q, iv.act, cfg.max_calls)
            strategies[t.strategy] = strategies.get(t.strategy, 0) + 1
            rng = random.Random(f"{pcfg.seed}\x1fagentic\x1f{q.prompt_id}")
            for depth in range(len(t.turns) + 1):
                turns = t.turns[:depth]
                nd = iv.node(q, [m for x in turns for m in x])
                if nd is None:
                    continue
                n_states += 1
                worse = sorted((a for a in nd.q if nd.q[a] < nd.value - margin), key=lambda a: nd.q[a])
                pick = worse[:1] + rng.sample(worse[1:], min(max_pairs_per_state - 1, len(worse) - 1)) if worse else []
                calls = [[q.call(m) for m in x] for x in turns]
                if tokenizer is not None and pick:
                    from ..prompting import build_agentic_prompt, encode_prompt

                    lengths.append(len(encode_prompt(tokenizer, build_agentic_prompt(q.prompt, specs, calls, cfg.max_calls), None)))
                for r in pick[:max_pairs_per_state]:
                    row = agentic_dpo_example(q.prompt, specs, calls, nd.action, r, cfg.max_calls, prompt_id=q.prompt_id,
                                              dataset=q.dataset, value_chosen=round(nd.value, 6), value_rejected=round(nd.q[r], 6),
                                              depth=depth)
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n_rows += 1
    os.replace(tmp, out / TRAIN_FILE)
    rep = {"one_shot_pairs": rep1.pairs_train, "agentic_pairs": n_rows, "decision_states": n_states, "offered": offered,
           "lam": lam, "max_calls": cfg.max_calls, "train_questions": len(train), "held_out": len(eval_ids),
           "table_strategies_on_train": strategies, "validation_questions": len(val_ids)}
    if lengths:
        from ..pairs import length_stats

        rep["state_prompt_tokens"] = length_stats(sorted(lengths))
        rep["tokenizer"] = tokenizer_name
    (out / AGENTIC_REPORT).write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    log(f"agentic pairs: {n_rows} at {n_states} decision states of {len(train)} training questions, "
        f"+ {rep1.pairs_train} one-shot pairs -> {out / TRAIN_FILE}; offered: {', '.join(offered)}")
    return rep
