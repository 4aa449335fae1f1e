"""What the packed FlexAttention path (flex_scoring.py) costs the first time: compile time and recompilations.

    python bench/flex_compile.py                    # CUDA: Qwen2.5-1.5B architecture, random weights, bf16 merged
    python bench/flex_compile.py --sets 12 --batch 256 --json out.json
    python bench/flex_compile.py --tiny --device cpu   # CPU smoke run (uncompiled flex: no compile to measure)

A server decides its first packed batch only after torch.compile has built the FlexAttention kernel and the block
mask; every new offered set changes the prefix length ``m`` and every batch the packed length ``L``. This bench runs,
in one fresh process (inductor's on-disk cache pointed at an empty folder unless ``--warm-cache``), on the router as
served (``LoRARouter``, score_tokens distinct, batched path of ``route_batch``):
1. the first batch of B decisions over the 11-model pool (cold: the compile), then the same batch again (warm);
   ``--warm-cache --cache-dir D`` a second process over the folder the first one filled (a restarted server);
2. ``--sets`` batches, each over a NEW offered set (random subsets of 2-11 models, then the 18-model pool): the
   first batch of each (a recompile if one happens) and a second one;
3. batches of other sizes (other packed lengths) over a seen set.
``--warm-up`` first calls ``Router.warm_up`` as the server does at start-up: then no request batch should compile.
For each: wall time, and dynamo's counters (frames compiled, recompiles), so "does a new offered set recompile?" is
answered by a count, not a guess. Prints one JSON line per batch and a summary; writes ``--json`` or $OUT/flex_compile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sets", type=int, default=10, help="new offered sets after the first (default 10)")
    ap.add_argument("--sizes", default="16,64,100,200", help="other batch sizes over a seen set")
    ap.add_argument("--cache-dir", default=None, help="inductor's on-disk cache folder (default: a new empty one)")
    ap.add_argument("--warm-cache", action="store_true", help="keep what --cache-dir holds (a restarted server)")
    ap.add_argument("--warm-up", action="store_true", help="call Router.warm_up first, as the server does at start-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="inductor-cold-")
    if not args.warm_cache:
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    import torch
    from torch._dynamo.utils import counters

    from route_latency import build_model, question_of, write_result
    from xrouter_lite.pool import load_pool
    from xrouter_lite.qwen import qwen_tokenizer
    from xrouter_lite.router import LoRARouter

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tok = qwen_tokenizer()
    p11 = list(load_pool(REPO / "configs" / "pool_routerbench.yaml"))
    p18 = list(load_pool(REPO / "configs" / "pool.yaml"))
    B = args.batch
    qs = [question_of(tok, i, 50) for i in range(4 * B)]
    model, _ = build_model(args.tiny, device, False, 16, args.seed)
    r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=max(B, 256),
                   score_tokens="distinct", cuda_graphs=cuda, merge_adapter=True)
    info = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "inductor_cache": "warm (kept)" if args.warm_cache else "cold (empty folder)", "batch": B,
            "flex": bool(r.prefix_scorer and r.prefix_scorer.flex)}
    print(json.dumps(info), flush=True)
    rows = []
    rng = random.Random(args.seed)

    def counts():
        return {"frames_ok": int(counters["frames"]["ok"]), "recompiles": int(counters["recompiles"].get("total", 0))
                if "recompiles" in counters else 0, "unique_graphs": int(counters["stats"]["unique_graphs"])}

    def run(label, offered, b, shift):
        c0 = counts()
        t0 = time.perf_counter()
        ds = r.route_batch(qs[shift : shift + b], [offered] * b)
        sync()
        dt = time.perf_counter() - t0
        c1 = counts()
        row = {"step": label, "models": len(offered), "batch": b, "seconds": round(dt, 3),
               "decisions_per_s": round(b / dt, 1), "new_frames": c1["frames_ok"] - c0["frames_ok"],
               "new_graphs": c1["unique_graphs"] - c0["unique_graphs"],
               "flex_failures": r.prefix_scorer.flex_failures if r.prefix_scorer else None,
               "valid": sum(d.valid for d in ds)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        return row

    t_start = time.perf_counter()
    if args.warm_up:
        c0 = counts()
        t0 = time.perf_counter()
        r.warm_up(p11)
        sync()
        row = {"step": "Router.warm_up (server start-up)", "seconds": round(time.perf_counter() - t0, 3),
               "new_frames": counts()["frames_ok"] - c0["frames_ok"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        info["warm_up"] = row["seconds"]
    run("first batch, 11 models (cold)" if not args.warm_up else "first batch after warm-up, 11 models", p11, B, 0)
    run("same set again", p11, B, B)
    run("same set, third", p11, B, 2 * B)
    sets = [rng.sample(p11, rng.randint(2, 10)) for _ in range(max(0, args.sets - 1))] + [p18]
    for i, s in enumerate(sets):
        run(f"new set {i + 1} ({len(s)} models): first batch", s, B, (i % 3) * B)
        run(f"new set {i + 1}: again", s, B, ((i + 1) % 3) * B)
    for b in [int(x) for x in args.sizes.split(",") if x.strip()]:
        run(f"batch {b} over the 11 models: first", p11, b, 0)
        run(f"batch {b}: again", p11, b, b)
    run("first set again after all others", p11, B, 0)
    total = time.perf_counter() - t_start
    summary = {"info": info, "rows": rows, "total_s": round(total, 1), "counters": counts()}
    k = 1 if args.warm_up else 0
    first, warm = rows[k]["seconds"], rows[k + 2]["seconds"]
    new_first = [x["seconds"] for x in rows if "first batch" in x["step"] and "new set" in x["step"]]
    new_again = [x["seconds"] for x in rows if x["step"].startswith("new set") and x["step"].endswith("again")]
    summary["headline"] = {"cold_first_batch_s": first, "warm_batch_s": warm,
                           "new_set_first_batch_s_median": sorted(new_first)[len(new_first) // 2] if new_first else None,
                           "new_set_first_batch_s_max": max(new_first) if new_first else None,
                           "new_set_second_batch_s_median": sorted(new_again)[len(new_again) // 2] if new_again else None,
                           "frames_compiled_after_first_batch": sum(x["new_frames"] for x in rows[k + 1:]),
                           "warm_up_s": info.get("warm_up")}
    print(json.dumps(summary["headline"]), flush=True)
    write_result(summary, args.json, "flex_compile.json")
    return summary


if __name__ == "__main__":
    main()
