"""How much latency does the routing server add over calling the upstream directly?

    python bench/serve_overhead.py                      # 50 clients, 30 s per phase, 100 ms upstream
    python bench/serve_overhead.py --seconds 5 --clients 10 --json out.json

Three processes on 127.0.0.1: the fake OpenAI-protocol upstream (``FakeUpstream``, fixed latency), the routing
server (``create_app`` + uvicorn, with a trivial constant router so the routing decision costs ~nothing; the
decision time the server measures, queueing and batching included, is read from the ``x-router-decision-ms``
header and reported separately) and this load generator: ``--clients`` concurrent httpx async clients, each
sending its next request as soon as the last one answered (aiohttp; ``--client httpx`` shows why not httpx), for ``--seconds``, first directly against the
upstream, then through the server (``model="router"``: decision, litellm call, router_metadata).

Reported: requests/s, p50/p99 latency of each phase, the added latency (server percentile minus direct
percentile), the same with each request's decision time subtracted, and failed requests. The target is <= 5 ms
p50 added and no failure.

The real router's decision time (a forward pass of the LoRA router) is measured with ``--adapter DIR`` (or
``--fresh-lora``: a freshly initialised LoRA adapter on SmolLM2-135M, same cost as a trained one), batch 1 and
batch ``--batch``, on the GPU when there is one; without either it is not measured and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUERY = [{"role": "user", "content": "What is 17 * 23? Answer with the number only."}]


def _server_main(port: int, upstream_url: str, uv_kw: dict, settings_kw: dict) -> None:
    """The routing server process (spawned)."""
    import logging

    import uvicorn

    from xrouter_lite.pool import ModelSpec, Pool
    from xrouter_lite.router import BaseRouter, Decision
    from xrouter_lite.serve import ServeSettings, create_app

    class ConstantRouter(BaseRouter):
        """Always the first offered model: the routing decision costs (almost) nothing."""

        name = "constant"
        inline_ok = True  # microseconds per decision: no thread hand-off (see DecisionBatcher)

        def route_batch(self, queries, offered, tau=None):
            return [Decision(o[0].id, {s.id: (1.0 if i == 0 else 0.0) for i, s in enumerate(o)}) for o in offered]

        def route(self, query, offered, tau=None):
            return self.route_batch([query], [offered], tau)[0]

    pool = Pool([
        ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=upstream_url, input_price=0.15, output_price=0.6,
                  context_window=128000, max_output_tokens=4096)
        for m in ("model-a", "model-b")
    ])
    logging.basicConfig(level=logging.WARNING)
    app = create_app(pool=pool, router=ConstantRouter(), settings=ServeSettings(**settings_kw))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=2048, **uv_kw)


def _start_server(upstream_url: str, settings_kw: dict, uv_kw: dict):
    import multiprocessing as mp

    import httpx

    from xrouter_lite.fake_upstream import _free_port

    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_server_main, args=(port, upstream_url, uv_kw, settings_kw), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("routing server did not start")


async def _load(url: str, model: str, clients: int, seconds: float, warmup_s: float = 1.0,
                client_lib: str = "aiohttp") -> dict:
    """Closed-loop load: ``clients`` workers, each with one request in flight, for ``seconds`` after a warm-up.

    aiohttp by default: httpx's connection pool is itself the bottleneck at 50 concurrent connections (measured
    on the 2-core sandbox against the bare fake upstream: httpx 77 req/s, p50 292 ms, p99 3.6 s; aiohttp 467
    req/s, p50 106 ms, p99 143 ms), so httpx would measure the client, not the server."""
    lat: list[float] = []
    decision_ms: list[float] = []
    failures: dict[str, int] = {}
    body = {"model": model, "messages": QUERY, "max_tokens": 16}
    if client_lib == "httpx":
        import httpx

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients),
                                   timeout=30.0)

        async def post():
            r = await client.post(url + "/v1/chat/completions", json=body)
            return r.status_code, r.headers.get("x-router-decision-ms")

        errors: tuple = (httpx.HTTPError,)
    else:
        import aiohttp

        client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                       timeout=aiohttp.ClientTimeout(total=30.0))

        async def post():
            async with client.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
                return r.status, r.headers.get("x-router-decision-ms")

        errors = (aiohttp.ClientError, asyncio.TimeoutError)
    try:
        for _ in range(3):  # first calls open connections and warm caches
            await post()
        t_start = time.perf_counter()
        t_measure = t_start + warmup_s
        t_end = t_measure + seconds

        async def worker():
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                try:
                    status, dec = await post()
                    ok, key = status == 200, f"HTTP {status}"
                except errors as e:
                    ok, key, dec = False, type(e).__name__, None
                t1 = time.perf_counter()
                if t0 < t_measure:
                    continue
                if ok:
                    lat.append(t1 - t0)
                    if dec is not None:
                        decision_ms.append(float(dec))
                else:
                    failures[key] = failures.get(key, 0) + 1

        await asyncio.gather(*[worker() for _ in range(clients)])
    finally:
        await (client.aclose() if client_lib == "httpx" else client.close())
    return {"latencies": lat, "decision_ms": decision_ms, "failures": failures, "seconds": seconds}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _summary(res: dict) -> dict:
    lat = res["latencies"]
    return {
        "requests": len(lat),
        "rps": len(lat) / res["seconds"],
        "p50_ms": _pct(lat, 50) * 1000,
        "p99_ms": _pct(lat, 99) * 1000,
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
        "failed": sum(res["failures"].values()),
        "failures": res["failures"],
    }


def measure_decision(adapter: str | None, fresh_lora: bool, batch: int, reps: int = 20) -> dict | None:
    """Decision latency of the real LoRA router, batch 1 and batch ``batch`` (None when no router is given)."""
    if not adapter and not fresh_lora:
        return None
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from xrouter_lite import router as router_mod
    from xrouter_lite.pool import load_pool

    cls = getattr(router_mod, "LoRARouter", None)
    if cls is None:
        return {"error": "router.LoRARouter does not exist in this build"}
    pool = load_pool(Path(__file__).resolve().parent.parent / "configs" / "pool.yaml")
    offered = list(pool)[:6]
    tmp = None
    if fresh_lora:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from xrouter_lite.assets import smollm2_path

        tmp = tempfile.mkdtemp(prefix="xr-bench-lora-")
        base = AutoModelForCausalLM.from_pretrained(str(smollm2_path()))
        peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                     task_type="CAUSAL_LM"))
        peft_model.save_pretrained(tmp)
        adapter = tmp
    from xrouter_lite.serve import ServeSettings, load_router

    settings = ServeSettings(adapter=adapter, base_model=str(_smollm2()) if fresh_lora else None)
    r = load_router(settings, pool)
    q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
        "How many clips did Natalia sell altogether in April and May?"
    out = {"device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "offered": len(offered)}
    for n in (1, batch):
        r.route_batch([q] * n, [offered] * n)  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            r.route_batch([q] * n, [offered] * n)
            times.append(time.perf_counter() - t)
        out[f"batch{n}_ms"] = statistics.median(times) * 1000
        out[f"batch{n}_per_query_ms"] = statistics.median(times) * 1000 / n
    return out


def _smollm2():
    from xrouter_lite.assets import smollm2_path

    return smollm2_path()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per phase (default 30)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    ap.add_argument("--latency-ms", type=float, default=100.0, help="fixed upstream latency (default 100)")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured warm-up per phase (default 2)")
    ap.add_argument("--batch-window-ms", type=float, default=2.0, help="server's router batch window (default 2)")
    ap.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                    help="uvicorn HTTP parser of the routing server (auto: httptools when installed)")
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                    help="uvicorn event loop of the routing server (auto: uvloop when installed)")
    ap.add_argument("--transport", default="auto", choices=["auto", "litellm"],
                    help="server's upstream transport: auto = direct aiohttp for OpenAI-compatible endpoints")
    ap.add_argument("--client", default="aiohttp", choices=["aiohttp", "httpx"],
                    help="load generator's HTTP client (httpx's pool saturates first at 50 connections)")
    ap.add_argument("--adapter", default=None, help="a trained router adapter: also measure its decision time")
    ap.add_argument("--fresh-lora", action="store_true", help="measure decision time with a fresh LoRA on SmolLM2")
    ap.add_argument("--batch", type=int, default=16, help="batch size for the decision-time measurement")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    from xrouter_lite.fake_upstream import FakeUpstream

    report: dict = {"clients": args.clients, "seconds": args.seconds, "upstream_latency_ms": args.latency_ms,
                    "python": platform.python_version(), "cpus": os.cpu_count(), "http": args.http,
                    "loop": args.loop, "transport": args.transport, "client": args.client, "batch_window_ms": args.batch_window_ms}
    with FakeUpstream(latency_s=args.latency_ms / 1000.0) as up:
        proc, url = _start_server(up.base_url, {"batch_window_ms": args.batch_window_ms, "upstream_timeout_s": 30.0,
                                                "max_inflight": 4 * args.clients + 64,
                                                "upstream_transport": args.transport},
                                  {"http": args.http, "loop": args.loop})
        try:
            direct = asyncio.run(_load(up.base_url.removesuffix("/v1"), "model-a", args.clients, args.seconds,
                                       args.warmup_s, args.client))
            routed = asyncio.run(_load(url, "router", args.clients, args.seconds, args.warmup_s, args.client))
        finally:
            proc.terminate()
            proc.join(10)
    d, s = _summary(direct), _summary(routed)
    dec = routed["decision_ms"]
    excl = [lat - ms / 1000 for lat, ms in zip(routed["latencies"], dec)] if len(dec) == len(routed["latencies"]) else []
    report.update(
        direct=d, routed=s,
        added_p50_ms=s["p50_ms"] - d["p50_ms"], added_p99_ms=s["p99_ms"] - d["p99_ms"],
        decision_p50_ms=_pct(dec, 50), decision_p99_ms=_pct(dec, 99),
        added_excl_decision_p50_ms=(_pct(excl, 50) * 1000 - d["p50_ms"]) if excl else float("nan"),
        added_excl_decision_p99_ms=(_pct(excl, 99) * 1000 - d["p99_ms"]) if excl else float("nan"),
    )
    report["failed"] = d["failed"] + s["failed"]
    report["target_met"] = report["added_excl_decision_p50_ms"] <= 5.0 and report["failed"] == 0
    report["router_decision"] = measure_decision(args.adapter, args.fresh_lora, args.batch)

    print(f"upstream latency {args.latency_ms:g} ms, {args.clients} clients, {args.seconds:g} s per phase, "
          f"{os.cpu_count()} CPUs; server: http={args.http} loop={args.loop} transport={args.transport} "
          f"batch window {args.batch_window_ms:g} ms")
    print(f"{'':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for name, x in (("direct", d), ("routed", s)):
        print(f"{name:<9}{x['rps']:>9.1f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['failed']:>8}")
    print(f"added by the server: p50 {report['added_p50_ms']:.2f} ms, p99 {report['added_p99_ms']:.2f} ms")
    print(f"  of which routing decision (constant router; queue + batch window): p50 {report['decision_p50_ms']:.2f} ms,"
          f" p99 {report['decision_p99_ms']:.2f} ms")
    print(f"added excluding the decision: p50 {report['added_excl_decision_p50_ms']:.2f} ms, "
          f"p99 {report['added_excl_decision_p99_ms']:.2f} ms  (target p50 <= 5 ms, no failure: "
          f"{'MET' if report['target_met'] else 'NOT MET'})")
    if report["failed"]:
        print(f"failures: direct {d['failures']}, routed {s['failures']}")
    rd = report["router_decision"]
    if rd is None:
        print("real router decision time: not measured (give --adapter DIR or --fresh-lora)")
    else:
        print(f"real router decision time: {rd}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
