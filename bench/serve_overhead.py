"""How much latency does the routing server add over calling the upstream directly?

    python bench/serve_overhead.py                      # 50 clients, 30 s per phase, 100 ms upstream
    python bench/serve_overhead.py --seconds 5 --clients 10 --json out.json
    python bench/serve_overhead.py --router random-lora --decision random-lora   # a LoRA router's real cost (GPU)

Three processes on 127.0.0.1: the fake OpenAI-protocol upstream (``FakeUpstream``, fixed latency), the routing
server (``create_app`` + uvicorn; pool: the first ``--offered`` models of configs/pool.yaml, all pointed at the
fake upstream) and this load generator: ``--clients`` concurrent aiohttp clients (``--client httpx`` shows why not
httpx), each sending its next request as soon as the last one answered, for ``--seconds``, first directly against
the upstream, then through the server (``model="router"``: decision, upstream call, router_metadata).

By default the server's router is a constant (``--router constant``), so the routing decision costs ~nothing; the
decision time the server measures (queueing and batching included) is read from each answer's
``x-router-decision-ms`` header and reported separately. Reported: requests/s, p50/p99 latency of each phase, the
added latency (server percentile minus direct percentile), the same with each request's decision time
subtracted, and failed requests. Target: <= 5 ms p50 added (decision excluded) and no failure.

A LoRA router's decision time is measured in this process with ``--decision``: ``adapter`` (a trained adapter,
``--adapter DIR``), ``fresh-lora`` (SmolLM2-135M's real weights + a fresh LoRA) or ``random-lora`` (SmolLM2-135M's
architecture from its config.json with random weights + a fresh LoRA: the same compute, no weights file needed),
batch 1 and batch ``--batch``, on the GPU when there is one. ``--router random-lora|fresh-lora|adapter`` puts that
router in the server instead, so the routed phase shows micro-batched real decisions under load.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUERY = [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                                     "many clips in May. How many clips did Natalia sell altogether in April and May?"}]


def bench_pool(upstream_url: str, n: int):
    """The first ``n`` models of configs/pool.yaml (real names, prices, descriptions: a realistic router prompt),
    every one answered by the fake upstream."""
    from xrouter_lite.pool import Pool, load_pool

    ref = list(load_pool(REPO / "configs" / "pool.yaml"))[:n]
    return Pool([m.model_copy(update={"litellm_model": f"openai/{m.id}", "api_base": upstream_url, "api_key_env": None,
                                      "reasoning": False, "provider": None})
                 for m in ref])


def build_router(kind: str, adapter: str | None = None, model_dir: str | None = None, batch: int = 16):
    """``constant`` (a rule, on the event loop) or a LoRA router (see the module docstring)."""
    from xrouter_lite.router import BaseRouter, Decision

    if kind == "constant":
        class ConstantRouter(BaseRouter):
            """Always the first offered model: the routing decision costs (almost) nothing."""

            name = "constant"
            inline_ok = True  # microseconds per decision: no thread hand-off (see DecisionBatcher)

            def route_batch(self, queries, offered, tau=None):
                return [Decision(o[0].id, {s.id: (1.0 if i == 0 else 0.0) for i, s in enumerate(o)}) for o in offered]

            def route(self, query, offered, tau=None):
                return self.route_batch([query], [offered], tau)[0]

        return ConstantRouter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.router import LoRARouter

    cuda = torch.cuda.is_available()
    if kind == "adapter":
        if not adapter:
            raise SystemExit("--router/--decision adapter needs --adapter DIR")
        return LoRARouter(adapter_dir=adapter, mode="score", batch_size=batch)
    if model_dir is None:
        from xrouter_lite.assets import smollm2_path

        model_dir = str(smollm2_path())
    dtype = torch.bfloat16 if cuda else torch.float32
    if kind == "fresh-lora":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    elif kind == "random-lora":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
    else:
        raise SystemExit(f"unknown router kind {kind!r}")
    model = get_peft_model(model.to("cuda" if cuda else "cpu"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    return LoRARouter(model=model, tokenizer=tok, mode="score", batch_size=batch)


def _server_main(port: int, upstream_url: str, uv_kw: dict, settings_kw: dict, router_kw: dict, n_offered: int) -> None:
    """The routing server process (spawned)."""
    import logging

    import uvicorn

    from xrouter_lite.serve import ServeSettings, create_app

    logging.basicConfig(level=logging.WARNING)
    app = create_app(pool=bench_pool(upstream_url, n_offered), router=build_router(**router_kw),
                     settings=ServeSettings(**settings_kw))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=2048, **uv_kw)


def _start_server(upstream_url: str, settings_kw: dict, uv_kw: dict, router_kw: dict, n_offered: int):
    import multiprocessing as mp

    import httpx

    from xrouter_lite.fake_upstream import _free_port

    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_server_main, args=(port, upstream_url, uv_kw, settings_kw, router_kw, n_offered), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
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


def measure_decision(kind: str | None, adapter: str | None, model_dir: str | None, batch: int, n_offered: int,
                     reps: int = 20) -> dict | None:
    """A LoRA router's decision latency, batch 1 and batch ``batch`` (None when not asked for)."""
    if not kind:
        return None
    import torch

    r = build_router(kind, adapter, model_dir, batch)
    offered = list(bench_pool("http://unused", n_offered))
    q = QUERY[0]["content"]
    out = {"router": kind, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "offered": len(offered)}
    for n in (1, batch):
        for _ in range(2):
            r.route_batch([q] * n, [offered] * n)  # warm-up
        times = []
        for _ in range(reps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            r.route_batch([q] * n, [offered] * n)
            times.append(time.perf_counter() - t)
        out[f"batch{n}_ms"] = round(statistics.median(times) * 1000, 2)
        out[f"batch{n}_per_query_ms"] = round(statistics.median(times) * 1000 / n, 2)
    return out


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
    ap.add_argument("--offered", type=int, default=6, help="models offered to the router (default 6)")
    ap.add_argument("--router", default="constant", choices=["constant", "random-lora", "fresh-lora", "adapter"],
                    help="the server's router (default constant: decision cost ~0)")
    ap.add_argument("--decision", default=None, choices=["random-lora", "fresh-lora", "adapter"],
                    help="also measure this LoRA router's decision time here (default: not measured)")
    ap.add_argument("--adapter", default=None, help="trained adapter folder for --router/--decision adapter")
    ap.add_argument("--model-dir", default=None, help="SmolLM2 folder (default: assets.smollm2_path())")
    ap.add_argument("--batch", type=int, default=16, help="max router batch (server) and batch of --decision")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions of --decision (median reported)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    from xrouter_lite.fake_upstream import FakeUpstream

    report: dict = {"clients": args.clients, "seconds": args.seconds, "upstream_latency_ms": args.latency_ms,
                    "python": platform.python_version(), "cpus": os.cpu_count(), "http": args.http,
                    "loop": args.loop, "transport": args.transport, "client": args.client, "batch_window_ms": args.batch_window_ms,
                    "router": args.router, "offered": args.offered}
    with FakeUpstream(latency_s=args.latency_ms / 1000.0) as up:
        proc, url = _start_server(up.base_url, {"batch_window_ms": args.batch_window_ms, "upstream_timeout_s": 30.0,
                                                "max_inflight": 4 * args.clients + 64,
                                                "upstream_transport": args.transport,
                                                "max_router_batch": args.batch},
                                  {"http": args.http, "loop": args.loop},
                                  {"kind": args.router, "adapter": args.adapter, "model_dir": args.model_dir,
                                   "batch": args.batch}, args.offered)
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

    print(f"upstream latency {args.latency_ms:g} ms, {args.clients} clients, {args.seconds:g} s per phase, "
          f"{os.cpu_count()} CPUs; server: router={args.router} ({args.offered} offered) http={args.http} "
          f"loop={args.loop} transport={args.transport} batch window {args.batch_window_ms:g} ms")
    print(f"{'':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for name, x in (("direct", d), ("routed", s)):
        print(f"{name:<9}{x['rps']:>9.1f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['failed']:>8}")
    print(f"added by the server: p50 {report['added_p50_ms']:.2f} ms, p99 {report['added_p99_ms']:.2f} ms")
    print(f"  of which routing decision ({args.router} router; queue + batch + forward): p50 {report['decision_p50_ms']:.2f} ms,"
          f" p99 {report['decision_p99_ms']:.2f} ms")
    print(f"added excluding the decision: p50 {report['added_excl_decision_p50_ms']:.2f} ms, "
          f"p99 {report['added_excl_decision_p99_ms']:.2f} ms  (target p50 <= 5 ms, no failure: "
          f"{'MET' if report['target_met'] else 'NOT MET'})")
    if report["failed"]:
        print(f"failures: direct {d['failures']}, routed {s['failures']}")
    rd = report["router_decision"] = measure_decision(args.decision, args.adapter, args.model_dir, args.batch,
                                                      args.offered, args.reps)
    if rd is None:
        print("LoRA router decision time: not measured (give --decision random-lora|fresh-lora|adapter)")
    else:
        print(f"LoRA router decision time: {rd}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
