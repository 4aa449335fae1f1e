"""CPU time the routing server process spends per routed request: a figure that a loaded machine disturbs far
less than latency (the wall-clock overhead is bench/serve_overhead.py's).

    python bench/serve_cpu.py [--requests 1500] [--concurrency 10] [--reps 3]

The server (``create_app``, a constant router, 6 offered models) runs in its own process against the fake upstream;
its user+system CPU time (/proc/PID/stat, Linux) is read before and after each rep of ``--requests`` routed requests
sent by ``--concurrency`` aiohttp clients. Prints ms of server CPU per request for each rep and the median. To
compare two versions, run it from each checkout (``git archive <rev> | tar -x -C DIR``) in alternation.

``--in-process``: the CPU-only part instead (parse + validate + plan + metadata of one request, no I/O), timed in
this process over ``--requests`` requests (also works on the single-module serve.py of main b27aba1).
"""
import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

root = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, root)

def server_main(port, upstream):
    sys.path.insert(0, root)
    import logging, uvicorn
    from xrouter_lite.pool import ModelSpec, Pool
    from xrouter_lite.router import BaseRouter, Decision
    from xrouter_lite.serve import ServeSettings, create_app
    class Const(BaseRouter):
        name = "constant"; inline_ok = True
        def route_batch(self, qs, offered, tau=None):
            return [Decision(o[0].id, {s.id: 0.0 for s in o}) for o in offered]
    pool = Pool([ModelSpec(id=f"m{i}", litellm_model=f"openai/m{i}", api_base=upstream, input_price=1, output_price=2,
                           context_window=8192, max_output_tokens=1024) for i in range(6)])
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(create_app(pool=pool, router=Const(), settings=ServeSettings()), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

async def load(url, n, conc):
    import aiohttp
    body = {"model": "router", "messages": [{"role": "user", "content": "What is 2+2? " * 10}], "max_tokens": 50}
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(conc)
        async def one():
            async with sem:
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
        await asyncio.gather(*[one() for _ in range(n)])

def in_process(n: int) -> float:
    """Microseconds of CPU per request for parse + validate + plan + metadata (no I/O)."""
    import json

    from xrouter_lite.pool import ModelSpec, Pool
    from xrouter_lite.router import BaseRouter, Decision
    import xrouter_lite.serve as S

    class Const(BaseRouter):
        name = "constant"
        inline_ok = True

        def route_batch(self, qs, offered, tau=None):
            return [Decision(o[0].id, {s.id: 0.0 for s in o}) for o in offered]

    pool = Pool([ModelSpec(id=f"m{i}", litellm_model=f"openai/m{i}", api_base="http://x/v1", input_price=1,
                           output_price=2, context_window=8192, max_output_tokens=1024) for i in range(6)])
    body = json.dumps({"model": "router", "messages": [{"role": "user", "content": "What is 2+2? " * 10}],
                       "max_tokens": 50}).encode()

    async def main() -> float:
        srv = S.RouterServer(pool, S.ServeSettings(), Const())
        srv.batcher = S.DecisionBatcher(srv.router, 16, 0.0, 256)
        srv.batcher.start()
        new = hasattr(S.RouterServer, "finish")

        async def one():
            if new:
                from xrouter_lite.serve.protocol import decode_json_body, parse_chat_request

                req = parse_chat_request(decode_json_body(body))
                m, p = req.plain_messages(), req.sampling_params()
                srv.finish(await srv.plan(req, m, p, "rid"), [], "m0", 0.0, m)
            else:  # main b27aba1
                req = srv.parse_request(json.loads(body))
                m, p = req.plain_messages(), req.sampling_params()
                srv.metadata(await srv.plan(req, m, p), [], "m0", 0.0)

        for _ in range(300):
            await one()
        t = time.process_time()
        for _ in range(n):
            await one()
        return (time.process_time() - t) / n * 1e6

    return asyncio.run(main())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="server CPU ms per routed request")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="time parse + plan + metadata only, no I/O")
    a = ap.parse_args()
    if a.in_process:
        print(f"{root}: parse + validate + plan + metadata: {in_process(a.requests):.1f} us of CPU per request")
        sys.exit(0)
    from xrouter_lite.fake_upstream import FakeUpstream, _free_port
    import httpx
    with FakeUpstream(answers={"*": "#### 42"}) as up:
        port = _free_port()
        p = mp.get_context("spawn").Process(target=server_main, args=(port, up.base_url), daemon=True)
        p.start()
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200: break
            except Exception: pass
            time.sleep(0.2)
        asyncio.run(load(url, 300, a.concurrency))  # warm-up
        res = []
        for _ in range(a.reps):
            c0 = cpu(p.pid)
            asyncio.run(load(url, a.requests, a.concurrency))
            res.append((cpu(p.pid) - c0) / a.requests * 1e3)
        p.terminate()
    med = sorted(res)[len(res) // 2]
    print(f"{root}: server CPU ms/request:", " ".join(f"{x:.3f}" for x in res), f"median {med:.3f}")
