"""Throughput of the offline-cache stage through its real code (arun_cache -> acall_model -> litellm -> HTTP).

A FakeUpstream runs in its own process and answers every request after ``--latency`` seconds; a temp pool of fake
models points at it and a temp question file feeds ``arun_cache`` (grading, record writing and budget accounting
included). With ``--concurrency C`` calls in flight and latency L, the ideal rate is C / L calls/s (320/s for the
defaults). Reported: achieved calls/s as a share of ideal, and the client's CPU time per call
(``time.process_time()`` of this process only; the server's CPU is in the other process and shown apart).

    python bench/cache_throughput.py                       # 2,000 calls at concurrency 64, 200 ms latency
    python bench/cache_throughput.py --profile 30          # plus the 30 costliest functions (cProfile)
    python bench/cache_throughput.py --litellm-ab 5        # A/B of the litellm overhead trims (llm.py)
Targets: >= 90% of ideal and <= 2 ms of client CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_inputs(tmp: Path, base_url: str, n_models: int, n_questions: int) -> tuple[Path, Path]:
    pool = tmp / "pool.yaml"
    lines = ["models:"]
    for i in range(n_models):
        lines += [f"  fake-{i}:", f"    litellm_model: openai/fake-{i}", f"    api_base: {base_url}",
                  "    input_price: 0.5", "    output_price: 1.5", "    context_window: 8192",
                  "    max_output_tokens: 4096", "    tier: budget"]
    pool.write_text("\n".join(lines) + "\n")
    qs = tmp / "questions.jsonl"
    with qs.open("w") as f:
        for i in range(n_questions):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Natalia sold clips to {i} friends in April, and then she "
                                f"sold half as many clips in May. How many clips did she sell? (#{i})",
                                "reference": "42", "task": "gsm8k", "dataset": "bench"}) + "\n")
    return pool, qs


async def run(args, pool_path: Path, qs: Path, tmp: Path, transport: str) -> dict:
    from xrouter_lite.cache import CacheConfig, arun_cache

    common = dict(dataset=qs, pool=pool_path, concurrency=args.concurrency, max_tokens=256, timeout_s=30,
                  budget_usd=1000.0, transport=transport)
    # warm-up (imports, first connections)
    await arun_cache(CacheConfig(out=tmp / f"warm-{transport}.jsonl", limit=args.concurrency, models=["fake-0"],
                                 **common), progress=False)
    cfg = CacheConfig(out=tmp / f"cache-{transport}.jsonl", limit=args.calls // args.models, **common)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    server = None
    try:
        import psutil

        server = psutil.Process(args.server_pid)
        s0 = sum(server.cpu_times()[:2])
    except Exception:
        server = None
    c0, w0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    summary = await arun_cache(cfg, progress=False)
    if prof:
        prof.disable()
    c1, w1 = time.process_time(), time.perf_counter()
    out = {"calls": summary.ok + summary.errors, "errors": summary.errors, "wall_s": w1 - w0, "cpu_s": c1 - c0}
    if server is not None:
        out["server_cpu_s"] = sum(server.cpu_times()[:2]) - s0
    if prof:
        import pstats

        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    return out


async def litellm_ab(args, base_url: str, rounds: int) -> None:
    """Interleaved A/B of the litellm trims (same process, same loop, alternating, so machine load hits all alike):
    message redaction on (litellm's turn_off_message_logging) / off, and the idle success-logging skip."""
    import statistics

    from xrouter_lite import llm
    from xrouter_lite.pool import ModelSpec

    litellm = llm.configure_litellm()
    spec = ModelSpec(id="fake-ab", litellm_model="openai/fake-ab", api_base=base_url, input_price=1, output_price=1,
                     context_window=8192, max_output_tokens=512)
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int):
        async with sem:
            return await llm.acall_model(spec, [{"role": "user", "content": f"q {i}"}], {"max_tokens": 64},
                                         transport="litellm")

    modes = {"redaction on, logging payload built": (True, False),
             "redaction off, logging payload built": (False, False),
             "redaction off, idle logging skipped (default)": (False, True)}
    await asyncio.gather(*[one(i) for i in range(200)])
    res: dict[str, list[float]] = {m: [] for m in modes}
    n = 500
    for _ in range(rounds):
        for m, (redact, skip) in modes.items():
            litellm.turn_off_message_logging = redact
            llm.SKIP_IDLE_LITELLM_LOGGING = skip
            await asyncio.sleep(0.3)
            c0 = time.process_time()
            await asyncio.gather(*[one(i) for i in range(n)])
            res[m].append((time.process_time() - c0) / n * 1000)
    litellm.turn_off_message_logging = False
    llm.SKIP_IDLE_LITELLM_LOGGING = True
    await llm.aclose()
    print(f"litellm trims, interleaved A/B ({rounds} rounds x {n} calls each, concurrency {args.concurrency}):")
    for m, v in res.items():
        print(f"- {m}: median {statistics.median(v):.2f} ms CPU per call ({' '.join(f'{x:.2f}' for x in v)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2, help="fake provider latency per request, seconds")
    ap.add_argument("--models", type=int, default=4, help="fake models in the pool (calls split across them)")
    ap.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile; slows the run)")
    ap.add_argument("--transport", action="append", choices=["auto", "litellm", "direct"],
                    help="transport(s) to measure, in order (default: auto, then litellm)")
    ap.add_argument("--litellm-ab", type=int, default=0, metavar="ROUNDS",
                    help="instead: interleaved A/B of the litellm trims, this many rounds")
    args = ap.parse_args()
    transports = args.transport or ["auto", "litellm"]
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    from xrouter_lite.fake_upstream import FakeUpstream
    from xrouter_lite.llm import configure_litellm

    configure_litellm()
    with FakeUpstream(latency_s=args.latency, answers={"*": "Half of them... #### 42"}) as up, \
            tempfile.TemporaryDirectory() as d:
        args.server_pid = up._proc.pid if up._proc is not None else None
        if args.litellm_ab:
            asyncio.run(litellm_ab(args, up.base_url, args.litellm_ab))
            return
        tmp = Path(d)
        pool_path, qs = write_inputs(tmp, up.base_url, args.models, args.calls // args.models)
        results = []
        for tr in transports:
            r = asyncio.run(run(args, pool_path, qs, tmp, tr))
            r["load"] = os.getloadavg()[0]
            results.append((tr, r))
    ideal = args.concurrency / args.latency
    print(f"{args.calls} calls over {args.models} fake models, concurrency {args.concurrency}, latency "
          f"{args.latency * 1000:.0f} ms, ideal {ideal:.0f} calls/s{' (profiled: slower)' if args.profile else ''}")
    for tr, r in results:
        rate = r["calls"] / r["wall_s"]
        cpu_ms = r["cpu_s"] / r["calls"] * 1000
        name = {"auto": "auto (direct POST for openai/<name>+api_base)", "litellm": "litellm.acompletion",
                "direct": "direct POST"}[tr]
        print(f"- transport {name}: {r['calls']} calls ({r['errors']} errors) in {r['wall_s']:.1f} s")
        print(f"    throughput {rate:.1f} calls/s = {rate / ideal:.1%} of ideal   [target >= 90%]")
        print(f"    client CPU {cpu_ms:.2f} ms per call (process_time of this process)   [target <= 2 ms]")
        if "server_cpu_s" in r:
            print(f"    server CPU (other process, for reference) {r['server_cpu_s'] / r['calls'] * 1000:.2f} ms per call")
        print(f"    load average after the run: {r['load']:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
