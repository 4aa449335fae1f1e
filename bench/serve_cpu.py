"""CPU time the routing server process spends per routed request: a figure that a loaded machine disturbs far
less than latency (the wall-clock overhead is bench/serve_overhead.py's).

    python bench/serve_cpu.py [--requests 1500] [--concurrency 10] [--reps 3]

The server (``create_app``, a constant router, 6 offered models) runs in its own process against the fake upstream;
its user+system CPU time (/proc/PID/stat, Linux) is read before and after each rep of ``--requests`` routed requests
sent by ``--concurrency`` aiohttp clients. Prints ms of server CPU per request for each rep and the median. To
compare two versions, run it from each checkout (``git archive <rev> | tar -x -C DIR``) in alternation.
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

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="server CPU ms per routed request")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
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
