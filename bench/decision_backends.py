"""Batch-1 and batch-64 decisions of the serving configuration (Qwen2.5-1.5B architecture, random weights, random
LoRA merged into bf16, static prefix cached, CUDA graphs at batch 1) under each attention backend: the default (cuDNN
for this mask on an H100), SDPA's math kernel, HF's eager attention, and the memory-efficient kernel (which has no
kernel for this mask there and is reported as failed). With --profile: a torch profile of one 18-model decision
(eager, no graphs), kernels sorted by CUDA time. GPU only; docs/BENCHMARKS.md, issue 13.

    python bench/decision_backends.py [--repeats 100] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import route_latency as rl
    from xrouter_lite.pool import load_pool
    from xrouter_lite.prompting import build_router_prompt, encode_action
    from xrouter_lite.qwen import qwen_tokenizer
    from xrouter_lite.router import LoRARouter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fuse", action="store_true", help="default kernels vs xrouter_lite.fused (norms + MLP, + rotary)")
    a = ap.parse_args()
    tok = qwen_tokenizer()
    pools = {11: list(load_pool(REPO / "configs" / "pool_routerbench.yaml")), 18: list(load_pool(REPO / "configs" / "pool.yaml"))}
    qs = [rl.question_of(tok, i, 50) for i in range(8)]

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        model, _ = rl.build_model(False, "cuda", False, 16, 0)
        r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=1,
                       cuda_graphs=False, merge_adapter=True)
        sc = r.prefix_scorer
        p = build_router_prompt(qs[1], pools[18])
        pid = sc.finder.encode(p)
        acts = [[encode_action(tok, m.id) for m in pools[18]]]
        for _ in range(10):
            sc.score([p], [pid], acts)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                sc.score([p], [pid], acts)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
        return

    if a.fuse:
        return fuse_variants(a, rl, tok, pools, qs)
    backends = {"default": None, "math": [SDPBackend.MATH], "eager": "eager", "efficient": [SDPBackend.EFFICIENT_ATTENTION]}
    for name, be in backends.items():
        model, _ = rl.build_model(False, "cuda", False, 16, 0)
        if be == "eager":
            model.set_attn_implementation("eager")
            be = None
        try:
            r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=64,
                           cuda_graphs=True, merge_adapter=True)
            with sdpa_kernel(be) if be else contextlib.nullcontext():
                for n, off in pools.items():
                    b1, per_s = time_route(rl, r, qs, off, a.repeats)
                    print(f"{name:<10} {n} models: route p50 {b1:.2f} ms, batch 64: {per_s:.0f} decisions/s, "
                          f"graph failures {r.prefix_scorer.graph_failures}", flush=True)
        except Exception as e:  # noqa: BLE001 - a backend without a kernel for this mask: reported, the others go on
            traceback.print_exc(limit=3)
            print(f"{name} FAILED: {e}", flush=True)
        del model
        torch.cuda.empty_cache()


def time_route(rl, r, qs, off, repeats: int) -> tuple[float, float]:
    """(batch-1 route() p50 in ms over the 8 questions in turn, decisions/s of route_batch at batch 64)."""
    import torch

    k = [0]

    def one():
        k[0] += 1
        r.route(qs[k[0] % 8], off)

    b1 = rl.timer(one, repeats, 10, torch.cuda.synchronize)["median_ms"]
    bq = qs * 8
    b64 = rl.timer(lambda: r.route_batch(bq, [off] * 64), 3, 1, torch.cuda.synchronize)["median_ms"]
    return b1, 64000 / b64


def fuse_variants(a, rl, tok, pools, qs) -> None:
    """The serving configuration with and without xrouter_lite.fused, alternated twice; the largest score difference
    against the unfused scores of the same decisions."""
    import torch

    from xrouter_lite.fused import fuse_elementwise
    from xrouter_lite.prompting import build_router_prompt, encode_action
    from xrouter_lite.router import LoRARouter

    ref: dict[int, list] = {}
    for rnd in range(2):
        for name in ("default", "fused", "fused+rotary"):
            model, _ = rl.build_model(False, "cuda", False, 16, 0)
            r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=64,
                           cuda_graphs=True, merge_adapter=True, fuse_kernels=False)
            if name != "default":
                print(f"{name}: {fuse_elementwise(r.model, rotary=name.endswith('rotary'))} modules patched", flush=True)
            for n, off in pools.items():
                sc = r.prefix_scorer
                ps = [build_router_prompt(q, off) for q in qs[:4]]
                acts = [encode_action(tok, m.id) for m in off]
                scores = [sc.score([p], [sc.finder.encode(p)], [acts])[0] for p in ps]
                if name == "default" and rnd == 0:
                    ref[n] = scores
                    # bf16 implementation noise: the same decisions through the eager batched path (no graph)
                    eager = sc.score(ps, [sc.finder.encode(p) for p in ps], [acts] * len(ps))
                    noise = max(abs(x - y) for s1, s2 in zip(eager, scores) for x, y in zip(s1, s2))
                    same = sum(max(range(len(s1)), key=s1.__getitem__) == max(range(len(s2)), key=s2.__getitem__)
                               for s1, s2 in zip(eager, scores))
                    print(f"{n} models: unfused graph vs unfused eager batched path: max |score diff| {noise:.4f}, "
                          f"same argmax {same}/{len(ps)}", flush=True)
                diff = max(abs(x - y) for s1, s2 in zip(scores, ref[n]) for x, y in zip(s1, s2))
                same = sum(max(range(len(s1)), key=s1.__getitem__) == max(range(len(s2)), key=s2.__getitem__)
                           for s1, s2 in zip(scores, ref[n]))
                b1, per_s = time_route(rl, r, qs, off, a.repeats)
                print(f"round {rnd} {name:<13} {n} models: route p50 {b1:.2f} ms, batch 64: {per_s:.0f} "
                      f"decisions/s, graph failures {r.prefix_scorer.graph_failures}, max |score - unfused| {diff:.4f}, "
                      f"same argmax {same}/{len(ps)}",
                      flush=True)
            del model, r
            torch.cuda.empty_cache()
            if name == "fused+rotary":  # the rotary patch is process-wide: undo it for the next round
                import transformers.models.qwen2.modeling_qwen2 as mq

                f = mq.apply_rotary_pos_emb
                mq.apply_rotary_pos_emb = getattr(f, "_torchdynamo_orig_callable", f)


if __name__ == "__main__":
    main()
