"""The router's decision rule: from its candidate scores to a choice, the same function in evaluation and serving.

The LoRA router scores every offered model (``log p(action | prompt)``). Those log-probabilities rank who is likely
right, but they are not probabilities of a correct answer and their scale is not the cost's, so ``argmax(logp - tau
x c)`` trades accuracy for cost badly in the middle of the range (docs/BENCHMARKS.md, "Router quality": the tau curve
had a hole between 12% and 54% of GPT-4's cost). The *decision head* fixes that:

    P(correct | question, m) = sigmoid(w_m . f(scores) + b_m)        one small logistic model per pool model
    choice = argmax_m  P(correct | question, m) - tau x c_m           expected utility (``router.decide``)

where ``f(scores)`` is the log-softmax of the WHOLE score vector over the head's models (the vector carries the task
and the question's difficulty; one model's own score does not: a 1-D Platt scaling per model made the curve worse).
The head is fitted on a validation part of the training side (``pairs --val-fraction``; never on held-out questions):
``xrouter-lite fit-head`` writes ``decision_head.json`` next to the adapter, and every ``LoRARouter`` built on that
adapter (evaluation, serving) uses it through ``route_scores``. ``tau`` then has a plain meaning: the accuracy
(probability of a correct answer) one would give up to save the dearest model's whole cost.

When the offered models are not exactly the head's models (serving a subset), the head cannot read the vector and
the raw rule ``argmax(logp - tau x c)`` decides (``DecisionHead.p_correct`` returns None; the decision says so).

Also here: the exact curve of any such rule (``exact_curve``): each question's choice changes only at the taus where
two candidates' lines ``u_m - tau x c_m`` cross on their upper envelope, so enumerating those breakpoints gives every
operating point the rule can reach, whatever tau list a user passes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .prompting import DEFAULT_MAX_PROMPT_TOKENS

HEAD_FILE = "decision_head.json"
FEATURES = "logsoftmax"
DEFAULT_L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


class HeadError(ValueError):
    """A decision head that cannot be read or fitted; the message names the file or the field."""


def _logsoftmax(xs: Sequence[float]) -> list[float]:
    top = max(xs)
    z = math.log(sum(math.exp(x - top) for x in xs))
    return [x - top - z for x in xs]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class DecisionHead:
    """Per-model logistic regressions over the log-softmax of the router's score vector (see the module doc)."""

    models: list[str]
    coef: list[list[float]]  # coef[j] : weights of model j's regression over the len(models) features
    intercept: list[float]
    l2: float = 1.0
    features: str = FEATURES
    info: dict[str, Any] = field(default_factory=dict)
    score_tokens: str = "full"  # how the scores it was fitted on were computed (LoRARouter's score_tokens); must match

    def __post_init__(self) -> None:
        n = len(self.models)
        if self.features != FEATURES:
            raise HeadError(f"decision head: unknown features {self.features!r} (known: {FEATURES!r})")
        if len(self.coef) != n or any(len(r) != n for r in self.coef) or len(self.intercept) != n:
            raise HeadError(f"decision head: coef must be {n} x {n} and intercept {n} long for {n} models")

    def applies(self, offered: Sequence[str]) -> bool:
        return sorted(offered) == sorted(self.models)

    def feature_vector(self, scores: Mapping[str, float]) -> list[float] | None:
        if not self.applies(list(scores)):
            return None
        return _logsoftmax([float(scores[m]) for m in self.models])

    def p_correct(self, scores: Mapping[str, float]) -> dict[str, float] | None:
        """P(correct | question, m) for every offered model, in ``scores``' order; None when the offered set is
        not the head's model set."""
        f = self.feature_vector(scores)
        if f is None:
            return None
        p = {}
        for j, m in enumerate(self.models):
            p[m] = _sigmoid(self.intercept[j] + sum(w * x for w, x in zip(self.coef[j], f)))
        return {m: p[m] for m in scores}

    # -- files ------------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/decision_head.json`` (temp file, then rename)."""
        path = Path(folder) / HEAD_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DecisionHead:
        path = Path(path)
        if path.is_dir():
            path = path / HEAD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise HeadError(f"{path}: cannot read the decision head: {e}") from None
        try:
            return cls(**data)
        except (TypeError, HeadError) as e:
            raise HeadError(f"{path}: {e}") from None


def load_head(adapter_dir: str | Path | None) -> DecisionHead | None:
    """The decision head saved next to an adapter, or None when there is none."""
    if not adapter_dir:
        return None
    path = Path(adapter_dir) / HEAD_FILE
    return DecisionHead.load(path) if path.exists() else None


def route_scores(
    scores: Mapping[str, float], costs: Mapping[str, float], tau: float, head: DecisionHead | None = None
) -> tuple[str, dict[str, float], dict[str, float], bool]:
    """THE decision rule of a scoring router: utilities (the head's P(correct), or the raw scores without a head or
    when it does not apply), then ``router.decide``: ``argmax utility - tau x c``.

    Returns (choice, adjusted utilities, utilities, whether the head was used)."""
    from .router import decide

    util = head.p_correct(scores) if head is not None else None
    used = util is not None
    if util is None:
        util = {m: float(s) for m, s in scores.items()}
    model, adj = decide(util, costs, tau)
    return model, adj, util, used


# ---- fitting ------------------------------------------------------------------------------------------------------


def _fit_logistic(X, y, l2: float, iters: int = 50):
    """L2-penalised logistic regression by Newton's method (the intercept is not penalised). numpy arrays."""
    import numpy as np

    n, d = X.shape
    A = np.hstack([np.ones((n, 1)), X])
    w = np.zeros(d + 1)
    pen = np.full(d + 1, l2)
    pen[0] = 0.0
    for _ in range(iters):
        z = A @ w
        p = 1.0 / (1.0 + np.exp(-z))
        g = A.T @ (p - y) + pen * w
        h = (A * (p * (1 - p))[:, None]).T @ A + np.diag(pen) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, g)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def _features(S):
    import numpy as np

    S = np.asarray(S, dtype=float)
    S = S - S.max(1, keepdims=True)
    return S - np.log(np.exp(S).sum(1, keepdims=True))


def fit_head(
    scores: Sequence[Mapping[str, float]],
    correct: Sequence[Mapping[str, bool]],
    *,
    l2: float | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    folds: int = 5,
    seed: int = 0,
    info: dict[str, Any] | None = None,
    costs: Sequence[Mapping[str, float]] | None = None,
    score_tokens: str = "full",
) -> DecisionHead:
    """Fit the head on validation questions: ``scores[i]`` the router's score of every model on question i,
    ``correct[i]`` whether each model answered it correctly. ``l2`` None: chosen from ``l2_grid`` by ``folds``-fold
    cross-validated log-loss on these same validation questions (nothing else is looked at). With ``costs`` (each
    question's recorded cost per model), ``info["cv_aiq"]`` compares on these questions the head's rule, cross-fitted,
    with the raw rule (a diagnostic that ``fit-head`` prints)."""
    import numpy as np

    if len(scores) != len(correct):
        raise HeadError(f"{len(scores)} score rows but {len(correct)} outcome rows")
    if len(scores) < 4:
        raise HeadError(f"fitting a decision head needs at least 4 validation questions, got {len(scores)}")
    folds = max(2, min(folds, len(scores) // 2))
    models = list(scores[0])
    for i, (s, c) in enumerate(zip(scores, correct)):
        if sorted(s) != sorted(models) or any(m not in c for m in models):
            raise HeadError(f"validation question {i}: every question must offer (and grade) the same models {models}")
    X = _features([[s[m] for m in models] for s in scores])
    Y = np.array([[float(bool(c[m])) for m in models] for c in correct])
    n = len(X)
    cv: dict[str, float] = {}
    if l2 is None:
        order = np.random.default_rng(seed).permutation(n)
        parts = np.array_split(order, folds)
        best = None
        for lam in l2_grid:
            p = np.clip(_out_of_fold(X, Y, lam, parts), 1e-6, 1 - 1e-6)
            loss = -float(np.sum(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
            cv[str(lam)] = loss / (n * len(models))
            if best is None or cv[str(lam)] < cv[str(best)]:
                best = lam
        l2 = float(best)
    coef, icpt = [], []
    for j in range(len(models)):
        w = _fit_logistic(X, Y[:, j], l2)
        icpt.append(float(w[0]))
        coef.append([float(v) for v in w[1:]])
    meta = {"n_questions": n, "cv_logloss_by_l2": cv, "folds": folds, "seed": seed, **(info or {})}
    if costs is not None:
        meta["cv_aiq"] = _cv_aiq(X, Y, scores, costs, models, float(l2), folds, seed)
    return DecisionHead(models=models, coef=coef, intercept=icpt, l2=float(l2), info=meta, score_tokens=score_tokens)


def _out_of_fold(X, Y, lam: float, parts):
    """P(correct) of every question and model from per-model heads (L2 ``lam``) fitted on the other folds."""
    import numpy as np

    P = np.zeros_like(Y)
    for k, te in enumerate(parts):
        tr = np.concatenate([q for i, q in enumerate(parts) if i != k])
        for j in range(Y.shape[1]):
            w = _fit_logistic(X[tr], Y[tr, j], lam)
            P[te, j] = 1 / (1 + np.exp(-(w[0] + X[te] @ w[1:])))
    return P


def _cv_aiq(X, Y, scores, costs, models, l2: float, folds: int, seed: int) -> dict[str, float]:
    """AIQ on the validation questions of the head's rule with cross-fitted P(correct) (each question's P from a head
    fitted on the other folds, at ``l2``) and of the raw rule on the same scores; tau's cost vector is each model's
    mean recorded cost on these questions over the dearest's (as the router's), the curves exact."""
    import numpy as np

    from . import metrics

    n = len(X)
    P = _out_of_fold(X, Y, l2, np.array_split(np.random.default_rng(seed + 1).permutation(n), folds))
    mean = {m: sum(float(c[m]) for c in costs) / n for m in models}
    top = max(mean.values()) or 1.0
    cvec = [{m: mean[m] / top for m in models}] * n
    outcomes = [{m: (bool(Y[i, j]), float(costs[i][m])) for j, m in enumerate(models)} for i in range(n)]
    totals = [sum(float(c[m]) for c in costs) for m in models]
    xy = lambda pts: [(p["total_cost"], p["accuracy"]) for p in pts]  # noqa: E731
    head = exact_curve([dict(zip(models, P[i].tolist())) for i in range(n)], cvec, outcomes)
    raw = exact_curve([{m: float(s[m]) for m in models} for s in scores], cvec, outcomes)
    lo, hi = min(totals), max(totals)
    return {"head": round(metrics.aiq(xy(head), lo, hi), 6), "raw": round(metrics.aiq(xy(raw), lo, hi), 6)}


# ---- exact curves ---------------------------------------------------------------------------------------------------


def envelope(utility: Mapping[str, float], costs: Mapping[str, float]) -> list[tuple[float, str]]:
    """The choices of ``argmax utility - tau x c`` over tau in [0, inf): ``[(tau_from, model), ...]``, the first at
    tau 0. Ties go to the cheaper model (as ``router.decide``), so at a breakpoint the next piece's model is chosen."""
    from .router import decide

    ids = list(utility)
    c = {m: float(costs.get(m, 0.0)) for m in ids}
    cur, _ = decide(utility, costs, 0.0)
    out = [(0.0, cur)]
    t = 0.0
    while True:
        best: tuple[float, float, int, str] | None = None
        for i, m in enumerate(ids):
            if c[m] < c[cur]:
                tm = max(t, (utility[cur] - utility[m]) / (c[cur] - c[m]))
                key = (tm, c[m], i, m)
                if best is None or key[:3] < best[:3]:
                    best = key
        if best is None:
            return out
        t, cur = best[0], best[3]
        out.append((t, cur))


def exact_curve(
    utilities: Sequence[Mapping[str, float]],
    costs: Sequence[Mapping[str, float]],
    outcomes: Sequence[Mapping[str, tuple[bool, float]]],
    weights: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Every operating point of ``argmax u - tau x c`` on a set of questions: one point per distinct breakpoint tau
    (plus tau 0), each ``{"tau", "accuracy", "total_cost"}``. ``outcomes[i][m]`` is (correct, recorded cost);
    ``weights`` (e.g. bootstrap counts) weight the questions."""
    return curve_of_envelopes([envelope(u, c) for u, c in zip(utilities, costs, strict=True)], outcomes, weights)


def curve_of_envelopes(
    envelopes: Sequence[Sequence[tuple[float, str]]],
    outcomes: Sequence[Mapping[str, tuple[bool, float]]],
    weights: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """``exact_curve`` from precomputed ``envelope``s (the bootstrap reweights the same envelopes)."""
    n = len(envelopes)
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    tot_w = sum(w)
    events: list[tuple[float, int, str, str]] = []
    cost = corr = 0.0
    for i, env in enumerate(envelopes):
        if not w[i]:
            continue
        ok, c = outcomes[i][env[0][1]]
        cost += w[i] * c
        corr += w[i] * ok
        for (_t0, prev), (t1, nxt) in zip(env, env[1:]):
            events.append((t1, i, prev, nxt))
    events.sort(key=lambda e: e[0])
    pts = [{"tau": 0.0, "accuracy": corr / tot_w, "total_cost": cost}]
    k = 0
    while k < len(events):
        t = events[k][0]
        while k < len(events) and events[k][0] == t:
            _, i, prev, nxt = events[k]
            cost += w[i] * (outcomes[i][nxt][1] - outcomes[i][prev][1])
            corr += w[i] * (float(outcomes[i][nxt][0]) - float(outcomes[i][prev][0]))
            k += 1
        pts.append({"tau": t, "accuracy": corr / tot_w, "total_cost": cost})
    return pts


def aiq_of_envelopes(
    envelopes: Sequence[Sequence[tuple[float, str]]],
    outcomes: Sequence[Mapping[str, tuple[bool, float]]],
    models: Sequence[str],
    weights: Sequence[float] | None = None,
) -> float:
    """AIQ of the exact curve over the cost range of the single ``models`` on the same (re)weighted questions: from
    the cheapest single model's total cost to the dearest one's (a bootstrap passes each resample's counts)."""
    from .metrics import aiq

    w = [1.0] * len(outcomes) if weights is None else weights
    single = [sum(x * o[m][1] for x, o in zip(w, outcomes)) for m in models]
    pts = curve_of_envelopes(envelopes, outcomes, weights)
    return aiq([(p["total_cost"], p["accuracy"]) for p in pts], min(single), max(single))


# ---- the fit-head command -------------------------------------------------------------------------------------------


def read_scores(decisions_path: str | Path, score_tokens: str | None = None) -> dict[str, dict[str, float]]:
    """prompt_id -> the router's own scores, from an evaluation's decisions.jsonl (``router_scores``; older files:
    ``base_scores``). Lines of invalid decisions are left out. ``score_tokens``: refuse lines scored otherwise
    (lines without the field were scored "full")."""
    import gzip

    path = Path(decisions_path)
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, dict[str, float]] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                scores = d.get("router_scores") or d["base_scores"]
                pid = d["prompt_id"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise HeadError(f"{path}:{ln}: not a decisions line with candidate scores ({e})") from None
            if score_tokens is not None and d.get("router") == "lora" and d.get("score_tokens", "full") != score_tokens:
                raise HeadError(f"{path}:{ln}: scored with score_tokens {d.get('score_tokens', 'full')!r}, the router "
                                f"scores {score_tokens!r}: evaluate it again or fit the head without --decisions")
            if d.get("valid", True) and scores:
                out[pid] = {m: float(v) for m, v in scores.items()}
    return out


def raw_scores(adapter, prompts, pool, ids: Sequence[str], *, device=None, quantize: str = "auto", batch_size: int = 8,
               max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS, score_tokens: str | None = None,
               say=print) -> list[dict[str, float]]:
    """The adapter's own scores (no head) of each of ``prompts`` (``evaluate.load_prompts`` items), offered the
    models of ``ids`` it has outcomes for, in that order: what ``fit-head`` fits on."""
    from .router import LoRARouter, RouteItem

    r = LoRARouter(None, adapter, mode="score", device=device, quantize=quantize, batch_size=batch_size, use_head=False,
                   max_prompt_tokens=max_prompt_tokens, score_tokens=score_tokens)
    scores = []
    for s in range(0, len(prompts), 64):
        chunk = prompts[s : s + 64]
        sets = [pool.subset([m for m in ids if m in p.outcomes]) for p in chunk]
        ds = r.route_items([RouteItem(p.prompt, p.prompt_id, p.dataset) for p in chunk], sets, 0.0)
        for p, d in zip(chunk, ds):
            if not d.valid:
                raise HeadError(f"validation question {p.prompt_id}: the router gave no scores ({d.invalid_reason})")
            scores.append(d.router_scores or d.base_scores)
        say(f"  {min(s + 64, len(prompts))}/{len(prompts)}")
    return scores


def fit_head_from_cache(
    adapter: str | Path,
    val_cache: str | Path,
    *,
    decisions: str | Path | None = None,
    pool: str | Path = "configs/pool_routerbench.yaml",
    out: str | Path | None = None,
    l2: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    quantize: str = "auto",
    offered: Sequence[str] | None = None,
    max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS,
    score_tokens: str | None = None,
    say=print,
) -> tuple[DecisionHead, Path]:
    """Score the validation questions with the router (or read its scores from ``decisions``), fit the head on
    their recorded outcomes, save it next to the adapter (or in ``out``). ``offered``: the models every validation
    question offers, in this order (default: the pool's models each question has, in the pool's order); give the
    evaluation's ``offered_models`` so that the validation prompts are the ones it scores and the head applies;
    ``max_prompt_tokens`` as the evaluation's; ``score_tokens`` (default: the adapter's) as the router that will
    use the head (it is recorded in the head, and a router scoring otherwise refuses it). The head's rule is compared with the raw rule on these questions
    (cross-fitted, ``info["cv_aiq"]``, printed): a diagnostic, not a switch (on the built-in example's 72 validation
    questions it pointed the wrong way on three seeds of three; docs/BENCHMARKS.md)."""
    from .evaluate import load_prompts
    from .pool import load_pool

    the_pool = load_pool(pool)
    if offered:
        unknown = [m for m in offered if m not in the_pool]
        if unknown:
            raise HeadError(f"{pool}: offered model(s) {unknown} not in the pool")
    ids = list(offered) if offered else list(the_pool.ids)
    prompts, _stats = load_prompts(val_cache, ids, require_complete=True)
    if not prompts:
        raise HeadError(f"{val_cache}: no validation question with a graded answer of every pool model")
    from .router import adapter_score_tokens

    score_tokens = score_tokens or adapter_score_tokens(adapter)
    if decisions is not None:
        table = read_scores(decisions, score_tokens)
        missing = [p.prompt_id for p in prompts if p.prompt_id not in table]
        if missing:
            raise HeadError(f"{decisions}: no scores for {len(missing)} validation question(s), e.g. {missing[:3]}")
        scores = [{m: table[p.prompt_id][m] for m in ids if m in table[p.prompt_id]} for p in prompts]
        source = str(decisions)
    else:
        say(f"scoring {len(prompts)} validation questions with {adapter} (no head)")
        scores = raw_scores(adapter, prompts, the_pool, ids, device=device, quantize=quantize, batch_size=batch_size,
                            max_prompt_tokens=max_prompt_tokens, score_tokens=score_tokens, say=say)
        source = "scored by fit-head"
    correct = [{m: o.correct for m, o in p.outcomes.items() if m in ids} for p in prompts]
    costs = [{m: o.cost for m, o in p.outcomes.items() if m in ids} for p in prompts]
    head = fit_head(scores, correct, l2=l2, costs=costs, score_tokens=score_tokens,
                    info={"val_cache": str(val_cache), "scores_from": source, "adapter": str(adapter)})
    cv = head.info["cv_aiq"]
    say(f"validation AIQ (cross-fitted): head {cv['head']:.4f}, raw rule {cv['raw']:.4f}")
    return head, head.save(out or adapter)
