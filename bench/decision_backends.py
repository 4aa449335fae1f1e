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
                    k = [0]

                    def one():
                        k[0] += 1
                        r.route(qs[k[0] % 8], off)

                    b1 = rl.timer(one, a.repeats, 10, torch.cuda.synchronize)["median_ms"]
                    bq = qs * 8
                    b64 = rl.timer(lambda: r.route_batch(bq, [off] * 64), 3, 1, torch.cuda.synchronize)["median_ms"]
                    print(f"{name:<10} {n} models: route p50 {b1:.2f} ms, batch 64: {64000 / b64:.0f} decisions/s, "
                          f"graph failures {r.prefix_scorer.graph_failures}", flush=True)
        except Exception as e:  # noqa: BLE001 - a backend without a kernel for this mask: reported, the others go on
            traceback.print_exc(limit=3)
            print(f"{name} FAILED: {e}", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
