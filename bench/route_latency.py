"""How long does the trained router take to decide, against the time of one forward pass over its prompt?

    python bench/route_latency.py --tiny                 # CPU smoke run: a tiny Qwen2-shaped random model
    python bench/route_latency.py                        # CUDA: Qwen2.5-1.5B-Instruct's architecture, 4-bit NF4
    python bench/route_latency.py --candidates 11,18 --prompt-tokens 1500 --batches 1,4,16 --json out.json

The model is Qwen2.5-1.5B-Instruct's exact architecture (hidden 1536, intermediate 8960, 28 layers, 12 heads,
2 KV heads, vocabulary 151,936, tied embeddings, rope theta 1e6) with RANDOM weights (no Hub here; the compute is
the same), quantised to 4-bit NF4 with bitsandbytes (double quantisation, bf16 compute) and wrapped with a random
LoRA adapter (r=16 on every projection), as the router is served. The tokenizer is Qwen2.5's (``qwen.py``,
offline). The router prompt is the real one (``prompting.build_router_prompt``: 11 RouterBench models or the 18
models of configs/pool.yaml), its query padded with text until the prompt is ``--prompt-tokens`` tokens.

Measured (median of ``--repeats`` after warm-up; CUDA synchronised):
- floor: one forward over the prompt (no KV cache kept, logits of the last position only): the least any
  router reading this prompt can cost;
- score (forward): ``LoRARouter._score_batch`` alone, both implementations (``packed``: one forward with a block
  mask; ``cached``: prompt forward + candidates over its KV cache);
- score route(): ``LoRARouter.route`` end to end (prompt rendering and tokenisation included);
- generate route(): greedy decoding of the tool call. Random weights never emit the end token, so decoding
  runs its whole budget (longest action + 8 tokens): the worst case;
- batched throughput: ``route_batch`` of B queries in score mode, queries per second, B in ``--batches``.
Target: score mode <= 1.3x the floor.

Prints a table; writes JSON to ``--json`` or, when the environment variable OUT is set, to $OUT/route_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FILLER = (
    "The quarterly report lists revenue by region, the cost of goods sold, and a note on currency effects. "
    "Summarise the main drivers of the change in margin and say which region contributed most to growth. "
)


def qwen2_config(tiny: bool):
    from transformers import Qwen2Config

    kw = dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
        tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643, eos_token_id=151645,
    )
    if tiny:
        kw.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    try:  # transformers 5: rope settings live in rope_parameters
        cfg = Qwen2Config(**kw, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    except TypeError:
        cfg = Qwen2Config(**kw, rope_theta=1000000.0)
    if getattr(cfg, "rope_theta", 1000000.0) != 1000000.0 and not getattr(cfg, "rope_parameters", None):
        cfg.rope_theta = 1000000.0
    return cfg


def build_model(tiny: bool, device: str, quantize: bool, lora_r: int, seed: int, adapter_dtype: str = "compute"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = qwen2_config(tiny)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    if quantize:
        from transformers import BitsAndBytesConfig

        with torch.device(device):
            m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        with tempfile.TemporaryDirectory(prefix="qwen-random-") as d:
            m.save_pretrained(d)
            del m
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=dtype)
            m = AutoModelForCausalLM.from_pretrained(d, quantization_config=bnb, device_map={"": device}, dtype=dtype)
    else:
        with torch.device(device):
            m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pm = get_peft_model(m, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.01)
    from xrouter_lite.router import adapter_to_compute_dtype

    if adapter_dtype == "compute":  # as load_router_model serves it
        adapter_to_compute_dtype(pm)
    pm.eval()
    return pm, time.perf_counter() - t0


def query_for(tokenizer, offered, target: int) -> tuple[str, int]:
    """A query that makes the rendered router prompt about ``target`` tokens long (never more)."""
    from xrouter_lite.prompting import build_router_prompt, encode_prompt

    words = (FILLER * 400).split()
    lo, hi = 0, len(words)
    best = ("Hi.", len(encode_prompt(tokenizer, build_router_prompt("Hi.", offered), None)))
    if best[1] > target:
        return best
    while lo <= hi:
        mid = (lo + hi) // 2
        q = " ".join(words[:mid]) + "\nWhich model should answer this?"
        n = len(encode_prompt(tokenizer, build_router_prompt(q, offered), None))
        if n <= target:
            best = (q, n)
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def write_result(result: dict, path: str | None, default_name: str) -> str | None:
    """The benches' JSON output: ``path`` (their ``--json``), else $OUT/``default_name`` when OUT is set (a device
    run), else nothing. Returns the path written."""
    if path is None and os.environ.get("OUT"):
        path = str(Path(os.environ["OUT"]) / default_name)
    if path:
        Path(path).write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    return path


def timers(fns: dict, repeats: int, warmup: int, sync) -> dict[str, dict[str, float]]:
    """Time several functions in interleaved rounds (f1, f2, f3, f1, f2, ...), so drift hits them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            ts[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v), "n": repeats} for k, v in ts.items()}


def timer(fn, repeats: int, warmup: int, sync) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return {"median_ms": 1000 * statistics.median(ts), "min_ms": 1000 * min(ts), "n": repeats}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2-shaped random model (CPU smoke run)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available, cpu with --tiny)")
    ap.add_argument("--no-quantize", action="store_true", help="keep bf16 weights on CUDA (default: 4-bit NF4)")
    ap.add_argument("--prompt-tokens", type=int, default=1500, help="router prompt length in tokens (default 1500)")
    ap.add_argument("--candidates", default="11,18", help="offered models: 11 (RouterBench pool) and/or 18 (configs/pool.yaml)")
    ap.add_argument("--batches", default="1,4,16", help="batch sizes of the throughput measurement")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 20 CUDA, 3 CPU)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter-fp32", action="store_true", help="keep the LoRA weights in float32 (peft's default for 4-bit)")
    ap.add_argument("--no-generate", action="store_true", help="skip the generate-mode figure")
    ap.add_argument("--json", default=None, help="write the results here (default: $OUT/route_latency.json if OUT is set)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from xrouter_lite.pool import load_pool
    from xrouter_lite.prompting import build_router_prompt, encode_action, encode_prompt
    from xrouter_lite.qwen import qwen_tokenizer
    from xrouter_lite.router import LoRARouter

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cuda = device.startswith("cuda")
    quantize = cuda and not args.no_quantize
    repeats = args.repeats or (20 if cuda else 3)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tok = qwen_tokenizer()
    model, build_s = build_model(args.tiny, device, quantize, args.lora_r, args.seed,
                                 "fp32" if args.adapter_fp32 else "compute")
    arch = "tiny Qwen2 (2 layers, hidden 64)" if args.tiny else "Qwen2.5-1.5B-Instruct architecture"
    info = {
        "model": arch + (", 4-bit NF4" if quantize else (", bf16" if cuda else ", fp32")) + f", random LoRA r={args.lora_r}"
        + (" (fp32 adapter)" if args.adapter_fp32 else ""),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "prompt_tokens_target": args.prompt_tokens, "repeats": repeats, "model_build_s": round(build_s, 1),
    }
    print(json.dumps(info))
    pools = {11: load_pool(REPO / "configs" / "pool_routerbench.yaml"), 18: load_pool(REPO / "configs" / "pool.yaml")}
    results = []
    for n in [int(x) for x in args.candidates.split(",") if x.strip()]:
        if n not in pools:
            raise SystemExit(f"--candidates: {n} not supported (11 or 18)")
        offered = list(pools[n])
        query, n_tok = query_for(tok, offered, args.prompt_tokens)
        ids = encode_prompt(tok, build_router_prompt(query, offered), None)
        actions = [encode_action(tok, m.id) for m in offered]
        packed = LoRARouter(model=model, tokenizer=tok, mode="score", score_impl="packed", max_prompt_tokens=None, batch_size=64)
        cached = LoRARouter(model=model, tokenizer=tok, mode="score", score_impl="cached", max_prompt_tokens=None)
        gen = LoRARouter(model=model, tokenizer=tok, mode="generate", max_prompt_tokens=None)
        x = torch.tensor([ids], device=device)

        def floor():
            with torch.inference_mode():
                model(input_ids=x, use_cache=False, logits_to_keep=1)

        row: dict = {"candidates": n, "prompt_tokens": len(ids), "action_tokens": [len(a) for a in actions]}
        row.update(timers({
            "floor": floor,
            "score_packed_forward": lambda: packed._score_batch([ids], [actions]),
            "score_cached_forward": lambda: cached._score_batch([ids], [actions]),
            "score_route": lambda: packed.route(query, offered),
        }, repeats, 3, sync))
        if not args.no_generate:
            row["generate_route"] = timer(lambda: gen.route(query, offered), max(3, repeats // 4), 1, sync)
            row["generate_new_tokens"] = max(len(a) for a in actions) + 8
        fl = row["floor"]["median_ms"]
        for k in ("score_packed_forward", "score_cached_forward", "score_route", "generate_route"):
            if k in row:
                row[k]["x_floor"] = row[k]["median_ms"] / fl
        row["throughput"] = {}
        for bsz in [int(b) for b in args.batches.split(",") if b.strip()]:
            qs, offs = [query] * bsz, [offered] * bsz
            xb = torch.tensor([ids] * bsz, device=device)

            def floor_b(xb=xb):
                with torch.inference_mode():
                    model(input_ids=xb, use_cache=False, logits_to_keep=1)

            tb = timers({"score": lambda: packed.route_batch(qs, offs), "floor": floor_b}, max(3, repeats // 4), 1, sync)
            t, fb = tb["score"], tb["floor"]
            row["throughput"][bsz] = {
                "score_qps": bsz / (t["median_ms"] / 1000), "floor_qps": bsz / (fb["median_ms"] / 1000),
                "score_ms_per_batch": t["median_ms"], "floor_ms_per_batch": fb["median_ms"],
            }
            if cuda:
                torch.cuda.empty_cache()
        if cuda:
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        results.append(row)
        del packed, cached, gen

    print()
    print(f"{info['model']} on {info['device']}; prompt ~{args.prompt_tokens} tokens; median of {repeats}")
    print(f"{'N':>3} {'prompt':>6} | {'floor ms':>9} | {'score(packed) fwd':>18} | {'score(cached) fwd':>18} | "
          f"{'score route()':>14} | {'generate route()':>17}")
    for r in results:
        def cell(k):
            return f"{r[k]['median_ms']:8.1f} {r[k]['x_floor']:5.2f}x" if k in r else "-"
        print(f"{r['candidates']:>3} {r['prompt_tokens']:>6} | {r['floor']['median_ms']:9.1f} | {cell('score_packed_forward'):>18} | "
              f"{cell('score_cached_forward'):>18} | {cell('score_route'):>14} | {cell('generate_route'):>17}")
    print()
    print("batched score mode (route_batch), queries/s:")
    for r in results:
        parts = [f"B={b}: {v['score_qps']:.1f} q/s (floor {v['floor_qps']:.1f})" for b, v in r["throughput"].items()]
        print(f"  N={r['candidates']}: " + "; ".join(parts))
    out = {"info": info, "results": results}
    write_result(out, args.json, "route_latency.json")
    return out


QUESTIONS = [  # real-looking questions, ~50 Qwen2.5 tokens each once padded by question_of
    "A store sells pencils at 3 for $1.20 and erasers at 2 for $0.90. Maya buys 12 pencils and 6 erasers and pays "
    "with a $10 bill. How much change does she get, and what would she have saved buying a 24-pack at $8.50?",
    "Explain the difference between a process and a thread in an operating system, and give one situation in which "
    "using several processes is clearly better than using several threads, with the reason in one sentence.",
    "Which of the following best describes the function of the mitochondria in eukaryotic cells? (A) protein "
    "synthesis (B) ATP production through cellular respiration (C) lipid storage (D) DNA replication. Answer:",
    "Translate into French and keep the formal register: 'We regret to inform you that the meeting planned for "
    "Thursday has been moved to the following Monday at ten o'clock, in the same room as before.'",
]


def question_of(tok, i: int, n_tokens: int = 50) -> str:
    """The i-th benchmark question, cut or padded to ``n_tokens`` Qwen2.5 tokens (distinct for each i)."""
    base = QUESTIONS[i % len(QUESTIONS)]
    ids = tok(f"(#{i}) " + base + " " + FILLER * 4, add_special_tokens=False)["input_ids"][:n_tokens]
    return tok.decode(ids)


def prefix_bench(args) -> dict:
    """Static prefix reuse (prefix_cache.py): batch-1 p50 of route() and the floor, batched decisions/s, memory,
    per serving configuration: bf16 with the LoRA merged (+ CUDA graphs or eager), 4-bit NF4 with the LoRA
    unmerged (+ graphs or eager), and today's path (whole prompt per decision) for the ratio."""
    import torch
    import transformers

    from xrouter_lite.pool import load_pool
    from xrouter_lite.prompting import build_router_prompt, distinct_action_prefixes, encode_action
    from xrouter_lite.qwen import qwen_tokenizer
    from xrouter_lite.router import LoRARouter

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    repeats = args.repeats or (50 if cuda else 3)
    tok = qwen_tokenizer()
    pools = {11: list(load_pool(REPO / "configs" / "pool_routerbench.yaml")), 18: list(load_pool(REPO / "configs" / "pool.yaml"))}
    ns = [int(x) for x in args.candidates.split(",") if x.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    qs = [question_of(tok, i, args.question_tokens) for i in range(max(batches + [64]))]
    out = {"info": {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "arch": "tiny Qwen2" if args.tiny else "Qwen2.5-1.5B-Instruct architecture, random weights, random LoRA r=16",
                    "question_tokens": args.question_tokens, "repeats": repeats}, "configs": []}
    print(json.dumps(out["info"]), flush=True)
    confs = [c.strip() for c in args.prefix_configs.split(",") if c.strip()]
    for conf in confs:
        quant = conf.startswith("nf4")
        if quant and not cuda:
            continue
        model, _ = build_model(args.tiny, device, quant, args.lora_r, args.seed)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = conf
        rows = base.endswith("-rows")  # batches as left-padded rows (the eager path), not one packed flex sequence
        base = base[: -len("-rows")] if rows else base
        distinct = base.endswith("-distinct")  # score_tokens "distinct": each action up to its distinguishing token
        base = base[: -len("-distinct")] if distinct else base
        plain = base.endswith("-plain")  # without the fused kernels (fused.py), the serving default on CUDA now
        base = base[: -len("-plain")] if plain else base
        graphs = base.endswith("graphs")
        before = base.endswith("today")
        kw = dict(prefix_cache_mb=0, merge_adapter=False, cuda_graphs=False, fuse_kernels=False) if before else dict(
            cuda_graphs=graphs, merge_adapter=not quant, fuse_kernels=not plain)
        r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=max(batches),
                       score_tokens="distinct" if distinct else "full", **kw)
        if rows and r.prefix_scorer:
            r.prefix_scorer.flex = False
        weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
        for n in ns:
            off = pools[n]
            row: dict = {"config": conf, "candidates": n, "weights_gib": weights_gib}
            ids = r.prefix_scorer.finder.encode(build_router_prompt(qs[0], off)) if r.prefix_scorer else None
            if r.prefix_scorer:
                p0 = build_router_prompt(qs[0], off)
                m = r.prefix_scorer.finder.reusable_len(p0, ids)
                row.update(prompt_tokens=len(ids), prefix_tokens=m, question_part_tokens=len(ids) - m)
            k = [0]

            def one():
                k[0] += 1
                return r.route(qs[k[0] % 8], off)

            if cuda:
                torch.cuda.reset_peak_memory_stats()
            row["route_b1"] = timer(one, repeats, 5, sync)
            if cuda:
                row["route_b1"]["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if r.prefix_scorer:
                sc = r.prefix_scorer
                p = build_router_prompt(qs[1], off)
                pid = sc.finder.encode(p)
                one_tok = [[[tok.eos_token_id]]]  # a single 1-token candidate: the forward over the question alone
                row["floor_b1"] = timer(lambda: sc.score([p], [pid], one_tok), repeats, 5, sync)
                acts = [[encode_action(tok, m.id) for m in off]]
                if distinct:
                    acts = [distinct_action_prefixes(acts[0])]
                row["candidate_tokens"] = sum(len(a) for a in acts[0])
                row["score_b1_no_tokenise"] = timer(lambda: sc.score([p], [pid], acts), repeats, 5, sync)
                row["graph_failures"] = sc.graph_failures
                row["prefix_cache"] = sc.cache.stats()
            row["batched"] = {}
            for b in batches:
                if b == 1:
                    continue
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                bq = qs[:b]
                try:
                    t = timer(lambda: r.route_batch(bq, [off] * b), max(3, repeats // 10), 1, sync)
                    t["decisions_per_s"] = b / (t["median_ms"] / 1000)
                    if r.prefix_scorer:  # the batched floor: the questions' forward alone (one 1-token candidate each)
                        sc = r.prefix_scorer
                        ps = [build_router_prompt(q, off) for q in bq]
                        pids = [sc.finder.encode(p) for p in ps]
                        fl = timer(lambda: sc.score(ps, pids, [[[tok.eos_token_id]]] * b), max(3, repeats // 10), 1, sync)
                        t["floor_per_s"] = b / (fl["median_ms"] / 1000)
                        if cuda:  # before the comparison below (its padded rows take more memory)
                            t["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        if sc.flex:  # the packed sequence against the rows on this batch: same scores, same choices
                            acts_b = [[encode_action(tok, mm.id) for mm in off]] * b
                            if distinct:
                                acts_b = [distinct_action_prefixes(acts_b[0])] * b
                            fx = sc.score(ps, pids, acts_b)
                            sc.flex = False
                            rw = sc.score(ps, pids, acts_b)
                            sc.flex = True
                            t["flex_vs_rows_max_abs"] = max(abs(x - y) for u, v in zip(fx, rw) for x, y in zip(u, v))
                            t["flex_vs_rows_same_argmax"] = sum(
                                max(range(len(u)), key=u.__getitem__) == max(range(len(v)), key=v.__getitem__)
                                for u, v in zip(fx, rw)) / b
                            t["flex_failures"] = sc.flex_failures
                    if cuda and "peak_alloc_gib" not in t:
                        t["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
                except torch.OutOfMemoryError:
                    t = {"status": "OOM"}
                row["batched"][b] = t
            print(json.dumps(row), flush=True)
            out["configs"].append(row)
            if args.json:  # written after every row: a run stopped by a time limit keeps what it measured
                Path(args.json).write_text(json.dumps(out, indent=2))
        del r, model
        if cuda:
            torch.cuda.empty_cache()
    print()
    print(f"{'config':<16} {'N':>3} {'prompt':>6} {'q part':>6} | {'route p50 ms':>12} | {'floor ms':>8} | batched decisions/s")
    for row in out["configs"]:
        fl = row.get("floor_b1", {}).get("median_ms")
        bt = "; ".join(f"B={b}: {v.get('decisions_per_s', 0):.0f} (floor {v.get('floor_per_s', 0):.0f})"
                       for b, v in row["batched"].items())
        print(f"{row['config']:<16} {row['candidates']:>3} {row.get('prompt_tokens', '-'):>6} {row.get('question_part_tokens', '-'):>6} | "
              f"{row['route_b1']['median_ms']:12.2f} | {fl if fl is None else round(fl, 2)!s:>8} | {bt}")
    write_result(out, args.json, "route_latency_prefix.json")
    return out


if __name__ == "__main__":
    if "--prefix-reuse" in sys.argv:
        ap = argparse.ArgumentParser(description="static prefix reuse figures (prefix_cache.py)")
        ap.add_argument("--prefix-reuse", action="store_true")
        ap.add_argument("--tiny", action="store_true")
        ap.add_argument("--device", default=None)
        ap.add_argument("--candidates", default="11,18")
        ap.add_argument("--batches", default="1,16,64,128")
        ap.add_argument("--question-tokens", type=int, default=50)
        ap.add_argument("--repeats", type=int, default=None)
        ap.add_argument("--lora-r", type=int, default=16)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--prefix-configs", default="bf16-merged-graphs,bf16-merged-eager,nf4-graphs,nf4-eager,nf4-today,bf16-today",
                        help="comma-separated: {bf16-merged,nf4}-{graphs,eager}[-plain][-distinct][-rows] (-plain: without the "
                             "fused kernels; -distinct: score_tokens 'distinct'; -rows: batches as padded rows, not one "
                             "packed FlexAttention sequence), {bf16,nf4}-today (whole prompt, no reuse)")
        ap.add_argument("--json", default=None)
        prefix_bench(ap.parse_args())
    else:
        main()
