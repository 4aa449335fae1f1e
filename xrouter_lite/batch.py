"""The cache stage through providers' batch APIs: the same calls at the batch price, collected hours later.

    xrouter-lite cache --dataset Q.jsonl --pool P.yaml --out C.jsonl --batch                  # full traversal
    xrouter-lite cache ... --batch --traversal cost-ordered --explore 0.08                    # rounds, cheapest first
    xrouter-lite cache ... --batch            # the same command again: polls the jobs it submitted, never resubmits

OpenAI-compatible batch API (``/v1/files`` + ``/v1/batches``; OpenAI, Azure-style gateways, vLLM and others that
implement it; tested against ``fake_upstream``): the pending calls are written as a JSONL file of
``/v1/chat/completions`` requests, one file and one job per model (OpenAI allows one model per batch file), uploaded
and submitted; the run then polls every ``batch_poll_s`` seconds and, when a job completes, downloads its output
file and writes each answer, graded, into the cache in the usual format (``records.CacheRecord``; an errored line
becomes an error record, retried by the next run). With ``traversal: cost-ordered`` the jobs go in rounds: round k
holds, for every unfinished question, its next-cheapest model; a question leaves at its first correct answer.

Transport: direct HTTP with aiohttp (the project's direct transport for api_base endpoints), not litellm's batch
helpers: the calls are the same four OpenAI-protocol requests for every OpenAI-compatible endpoint, the keys and
base URLs are the pool's own (``api_base``, ``api_key_env``), and it runs offline against the fake provider.
Models that are not OpenAI-compatible (Anthropic's and Bedrock's batch APIs differ) are refused with a message.

Crash safety (a kill -9 at any point): the jobs live in a state file beside the cache (``<cache>.batch.json``,
rewritten atomically). Before a job is created, its pairs, its input file id and a unique tag are recorded
(``preparing``); the tag goes into the job's ``metadata``. A resumed run polls every job it knows; a ``preparing``
job is looked up by its tag in the provider's job list before anything is submitted, so a kill between the
provider's "created" and the state file's update never submits the same pairs twice. Answers already in the cache
are never written again; pairs in a job not yet collected are never put in another.

Money: every call of a job is priced at the pool's batch price (``batch_discount`` or ``batch_input_price`` /
``batch_output_price``); ``budget_usd`` is checked before each job against the money recorded in the cache plus
the worst case (whole output budget) of every job still out, so the cap holds across runs too; a job that does
not fit is trimmed, and the run stops when nothing fits.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from .pool import ModelSpec, Pool, load_pool
from .records import iter_records

STATE_SUFFIX = ".batch.json"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class BatchError(RuntimeError):
    """The provider refused a batch request; the message names the model and the endpoint."""


def state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def load_state(out: Path) -> dict[str, Any]:
    p = state_path(out)
    if not p.exists():
        return {"version": 1, "jobs": []}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BatchError(f"{p}: the batch state file is not valid JSON ({e}); it lists the jobs already submitted: "
                         "repair it rather than deleting it, or pairs may be submitted twice") from None


def save_state(out: Path, state: dict[str, Any]) -> None:
    p = state_path(out)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def batch_base(spec: ModelSpec) -> tuple[str, str]:
    """(base URL ending in /v1 or the provider's root, the model name to send) of an OpenAI-compatible model."""
    from .llm import is_openai_compatible

    if is_openai_compatible(spec):
        return spec.api_base.rstrip("/"), spec.litellm_model.split("/", 1)[1]  # type: ignore[union-attr]
    if not spec.api_base and ("/" not in spec.litellm_model or spec.litellm_model.startswith("openai/")) \
            and not spec.hf_model:
        return "https://api.openai.com/v1", spec.litellm_model.split("/", 1)[-1]
    raise BatchError(f"model {spec.id!r} ({spec.litellm_model}): --batch supports OpenAI-compatible batch APIs "
                     "(openai/<name> with an api_base, or OpenAI itself); run this model without --batch")


class _Client:
    """The four batch requests, over the shared aiohttp session."""

    def __init__(self, spec: ModelSpec, timeout_s: float):
        from .llm import api_key_for as _api_key

        self.base, self.model = batch_base(spec)
        key = _api_key(spec)
        if key is None:
            key = os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self.spec = spec

    async def _req(self, method: str, path: str, **kw) -> Any:
        import aiohttp

        from .llm import http_session as _http_session

        url = self.base + path
        for attempt in range(5):
            try:
                async with _http_session().request(method, url, headers=self.headers,
                                                   timeout=aiohttp.ClientTimeout(total=self.timeout_s), **kw) as r:
                    raw = await r.read()
                    if r.status in (429, 500, 502, 503, 504) and attempt < 4:
                        await asyncio.sleep(0.5 * 2**attempt)
                        continue
                    if r.status != 200:
                        raise BatchError(f"model {self.spec.id!r}: {method} {url}: HTTP {r.status}: "
                                         f"{raw[:300].decode('utf-8', 'replace')}")
                    return raw if path.endswith("/content") else json.loads(raw)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                if attempt == 4:
                    raise BatchError(f"model {self.spec.id!r}: {method} {url}: {type(e).__name__}: {e}") from None
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def upload(self, content: bytes) -> str:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="xrouter_batch.jsonl", content_type="application/jsonl")
        return (await self._req("POST", "/files", data=form))["id"]

    async def create(self, input_file_id: str, tag: str, window: str) -> dict[str, Any]:
        return await self._req("POST", "/batches", json={
            "input_file_id": input_file_id, "endpoint": "/v1/chat/completions", "completion_window": window,
            "metadata": {"xrouter_tag": tag}})

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._req("GET", f"/batches/{batch_id}")

    async def find(self, tag: str) -> dict[str, Any] | None:
        data = await self._req("GET", "/batches", params={"limit": "100"})
        for b in data.get("data") or []:
            if (b.get("metadata") or {}).get("xrouter_tag") == tag:
                return b
        return None

    async def content(self, file_id: str) -> bytes:
        return await self._req("GET", f"/files/{file_id}/content")


async def arun_batch(cfg, *, pool: Pool | None = None, console=None, progress: bool | None = None,
                     stop_event: asyncio.Event | None = None):
    """Run the cache stage through batch jobs (module docstring). Returns a ``cache.CacheSummary``; its
    ``traversal`` field holds the jobs' figures. Stops (``stopped: interrupted``, jobs left to poll by the next run)
    on ``stop_event``."""
    from rich.console import Console

    from . import cache as C
    from .llm import aclose as aclose_http
    from .llm import build_request_params, estimate_prompt_tokens_upper
    from .records import RecordWriter, repair_torn_tail
    from .traversal import COST_ORDERED, EXPLORE, is_explored, order_models, recorded_spend

    console = console or Console(stderr=True)
    pool = pool or load_pool(cfg.pool)
    specs = C._select_models(cfg, pool)
    by_id = {s.id: s for s in specs}
    for s in specs:
        batch_base(s)
        if not s.has_batch_price:
            raise C.CacheConfigError(f"model {s.id!r}: --batch needs its batch price in the pool file "
                                     "(batch_discount, or batch_input_price and batch_output_price)")
    out = Path(cfg.out)
    t0 = time.perf_counter()
    summary = C.CacheSummary(out=str(out), budget_usd=cfg.budget_usd)
    summary.per_model = {s.id: C.ModelTally() for s in specs}
    info = summary.traversal = {"traversal": cfg.traversal, "batch": True, "jobs_submitted": 0, "jobs_collected": 0,
                                "jobs_adopted": 0, "jobs_pending": 0, "rounds": 0, "state_file": str(state_path(out))}
    stop_event = stop_event or asyncio.Event()
    sync_fd = C._lock_cache_file(out)
    try:
        summary.torn_tail_dropped = repair_torn_tail(out)
        answered: dict[tuple[str, str], bool | None] = {}
        for _, rec in iter_records(out):
            if rec.ok:
                answered[rec.key] = bool(rec.is_correct)
            else:
                answered.setdefault(rec.key, None)
        spent_before = recorded_spend(out)
        questions = {}
        check = C._task_checker()
        for q in C._questions(cfg):
            check(q)
            questions[q.id] = q
        summary.pairs_total = len(questions) * len(specs)
        state = load_state(out)
        writer = RecordWriter(out, fsync_every=1)
    except BaseException:
        os.close(sync_fd)
        raise
    sampling = cfg.sampling()
    clients = {s.id: _Client(s, cfg.timeout_s) for s in specs}
    orders: dict[str, list[tuple[ModelSpec, float]]] = {}

    def order_of(qid: str):
        if qid not in orders:
            from .traversal import _input_tokens

            orders[qid] = order_models(specs, _input_tokens(questions[qid].prompt, cfg.system_prompt),
                                       cfg.est_output_tokens, cfg.est_reasoning_output_tokens)
        return orders[qid]

    failed_now: set[tuple[str, str]] = set()  # errored in this run's jobs: retried by the next run, not this one

    def in_jobs() -> set[tuple[str, str]]:
        return {(q, m) for j in state["jobs"] if j["state"] != "collected" for q, m in j["pairs"]}

    def outstanding_reserve() -> float:
        return sum(j.get("reserve_usd", 0.0) for j in state["jobs"] if j["state"] != "collected")

    def next_pairs() -> dict[str, list[tuple[str, str, str, dict | None]]]:
        """model -> [(question, model, tag, skipped)] to submit now."""
        busy = in_jobs() | failed_now
        todo: dict[str, list] = defaultdict(list)
        for qid in questions:
            order = order_of(qid)
            explored = cfg.traversal == COST_ORDERED and is_explored(qid, cfg.explore, cfg.explore_seed)
            if cfg.traversal != COST_ORDERED or explored:
                for s, _ in order:
                    k = (qid, s.id)
                    if answered.get(k) is None and k not in busy:
                        todo[s.id].append((qid, s.id, EXPLORE if explored else None, None))
                continue
            for i, (s, _) in enumerate(order):
                k = (qid, s.id)
                if k in busy:
                    break  # its answer decides what comes next
                known = answered.get(k)
                if known is None:
                    rest = {t.id: round(c, 10) for t, c in order[i + 1:]}
                    todo[s.id].append((qid, s.id, COST_ORDERED, rest))
                    break
                if known:
                    break
        return todo

    def worst(spec: ModelSpec, qid: str) -> float:
        from .llm import max_output_budget

        msgs = C._messages(questions[qid].prompt, cfg.system_prompt)
        return spec.batch_cost(estimate_prompt_tokens_upper(msgs),
                               max_output_budget(spec, sampling, cfg.reasoning_max_tokens))

    def collect(job: dict[str, Any], status: str, output: bytes | None, errors: bytes | None) -> None:
        spec = by_id.get(job["model"]) or pool.get(job["model"])
        got: dict[str, dict] = {}
        for blob in (output, errors):
            for line in (blob or b"").decode("utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    got[row.get("custom_id")] = row
        for i, (qid, mid) in enumerate(job["pairs"]):
            if answered.get((qid, mid)) is not None:
                continue  # already answered (never written twice)
            q = questions.get(qid)
            if q is None:
                continue
            tag, skipped = job["tags"][i], job["skipped"][i]
            row = got.get(f"r{i}")
            resp = (row or {}).get("response") or {}
            body = resp.get("body") or {}
            rec = None
            if row is not None and resp.get("status_code") == 200 and body.get("choices"):
                text = ((body["choices"][0].get("message") or {}).get("content")) or ""
                usage = body.get("usage") or {}
                tin, tout = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                rec = C._graded_record(q, spec, text, in_tok=tin, out_tok=tout, cost=spec.batch_cost(tin, tout))
            else:
                why = (row or {}).get("error") or (body.get("error") if isinstance(body, dict) else None)
                why = why.get("message") if isinstance(why, dict) else why
                rec = C._record(q, spec, error=f"batch {job.get('batch_id')} ({status}): "
                                               f"{why or 'no answer for this request'}")
            rec.traversal = tag
            if rec.ok and rec.is_correct and skipped:
                rec.skipped = skipped
            writer.write(rec)
            C._tally(summary, rec, rec.cost)  # a grader failure was paid too (as recorded_spend counts it)
            if rec.ok:
                answered[(qid, mid)] = bool(rec.is_correct)
            else:
                failed_now.add((qid, mid))
        job["state"] = "collected"
        job["status"] = status
        save_state(out, state)
        info["jobs_collected"] += 1

    async def submit(mid: str, items: list) -> None:
        spec = by_id[mid]
        client = clients[mid]
        params = build_request_params(spec, sampling, cfg.reasoning_max_tokens)
        lines = []
        for i, (qid, _, _, _) in enumerate(items):
            body = {"model": client.model, "messages": C._messages(questions[qid].prompt, cfg.system_prompt), **params}
            lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": body}, ensure_ascii=False))
        job = {"tag": uuid.uuid4().hex, "model": mid, "round": info["rounds"], "state": "preparing",
               "pairs": [[q, m] for q, m, _, _ in items], "tags": [t for _, _, t, _ in items],
               "skipped": [s for _, _, _, s in items], "reserve_usd": sum(worst(spec, q) for q, *_ in items),
               "input_file_id": None, "batch_id": None, "created": time.time()}
        state["jobs"].append(job)
        save_state(out, state)  # before anything reaches the provider: a resumed run knows these pairs are out
        job["input_file_id"] = await client.upload(("\n".join(lines) + "\n").encode("utf-8"))
        save_state(out, state)
        b = await client.create(job["input_file_id"], job["tag"], cfg.batch_completion_window)
        job["batch_id"], job["state"] = b["id"], "submitted"
        save_state(out, state)
        info["jobs_submitted"] += 1

    async def settle(job: dict[str, Any]) -> None:
        """Poll one job until it ends, then collect it. A ``preparing`` job is found by its tag first."""
        client = clients.get(job["model"]) or _Client(pool.get(job["model"]), cfg.timeout_s)
        if job["state"] == "preparing":
            b = await client.find(job["tag"])
            if b is not None:
                job["batch_id"], job["state"] = b["id"], "submitted"
                info["jobs_adopted"] += 1
            else:  # never created: create it now (re-upload if the upload itself was lost)
                if not job.get("input_file_id"):
                    state["jobs"].remove(job)  # nothing reached the provider; the pairs are planned again
                    save_state(out, state)
                    return
                b = await client.create(job["input_file_id"], job["tag"], cfg.batch_completion_window)
                job["batch_id"], job["state"] = b["id"], "submitted"
                info["jobs_submitted"] += 1
            save_state(out, state)
        while True:
            b = await client.retrieve(job["batch_id"])
            if b.get("status") in TERMINAL:
                break
            await asyncio.sleep(cfg.batch_poll_s)
        output = await client.content(b["output_file_id"]) if b.get("output_file_id") else None
        errors = await client.content(b["error_file_id"]) if b.get("error_file_id") else None
        collect(job, b["status"], output, errors)

    async def main() -> None:
        while True:
            pending = [j for j in state["jobs"] if j["state"] != "collected"]
            if pending:  # jobs of an earlier run (or of this round): poll them before planning more
                await asyncio.gather(*(settle(j) for j in pending))
                continue
            todo = next_pairs()
            if not todo:
                return
            info["rounds"] += 1
            any_job = False
            for mid in sorted(todo):
                items = todo[mid]
                if cfg.budget_usd is not None:
                    room = cfg.budget_usd - spent_before_now() - outstanding_reserve()
                    spec = by_id[mid]
                    fit = []
                    for it in items:
                        w = worst(spec, it[0])
                        if w > room + 1e-12:
                            break
                        room -= w
                        fit.append(it)
                    if len(fit) < len(items):
                        summary.stopped = "budget"
                        summary.not_scheduled += len(items) - len(fit)
                    items = fit
                if items:
                    summary.planned += len(items)
                    await submit(mid, items)
                    any_job = True
            if not any_job:
                return

    def spent_before_now() -> float:
        return spent_before + sum(t.cost_usd for t in summary.per_model.values())

    runner = asyncio.ensure_future(main())
    stopper = asyncio.ensure_future(stop_event.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not runner.done():
            runner.cancel()
        stopper.cancel()
        await asyncio.gather(runner, stopper, return_exceptions=True)
        writer.close()
        os.close(sync_fd)
        await aclose_http()
        info["jobs_pending"] = sum(j["state"] != "collected" for j in state["jobs"])
        if stop_event.is_set():
            summary.stopped = "interrupted"
        summary.spent_usd = sum(t.cost_usd for t in summary.per_model.values())
        summary.already_done = sum(1 for v in answered.values() if v is not None) - summary.ok
        summary.elapsed_s = time.perf_counter() - t0
    if runner.done() and not runner.cancelled() and runner.exception() is not None:
        raise runner.exception()
    return summary


def summary_lines(summary) -> list[str]:
    info = getattr(summary, "traversal", None) or {}
    if not info.get("batch"):
        return []
    lines = [f"batch ({info['traversal']}): {info['jobs_submitted']} job(s) submitted in {info['rounds']} round(s), "
             f"{info['jobs_collected']} collected, {info['jobs_adopted']} found again after a crash; "
             f"state in {info['state_file']}"]
    if info["jobs_pending"]:
        lines.append(f"[yellow]{info['jobs_pending']} job(s) still running: re-run the same command to poll and collect "
                     "them (nothing is submitted twice)")
    return lines
