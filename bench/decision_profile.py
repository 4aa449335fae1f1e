"""Where a batch of 256 router decisions spends its time on a GPU (Qwen2.5-1.5B architecture, random weights, bf16
LoRA merged, 11 RouterBench models, score_tokens distinct): host stages timed one by one, then a torch profile of one
``PrefixScorer.score`` call. Run on the device: ``python bench/decision_profile.py [--rows]``."""

import sys, time, torch
sys.path.insert(0, "."); sys.path.insert(0, "bench")
import route_latency as rl
from xrouter_lite.pool import load_pool
from xrouter_lite.prompting import build_router_prompt, encode_action, distinct_action_prefixes
from xrouter_lite.qwen import qwen_tokenizer
from xrouter_lite.router import LoRARouter
from torch.profiler import profile, ProfilerActivity
tok = qwen_tokenizer()
model, _ = rl.build_model(False, "cuda", False, 16, 0)
off = list(load_pool("configs/pool_routerbench.yaml"))
B = 256
qs = [rl.question_of(tok, i, 50) for i in range(B)]
r = LoRARouter(model=model, tokenizer=tok, mode="score", max_prompt_tokens=None, batch_size=B, cuda_graphs=False,
               merge_adapter=True, score_tokens="distinct")
sc = r.prefix_scorer
if "--rows" in sys.argv:  # the padded-row path (before flex_scoring.py) instead of the packed sequence
    sc.flex = False
def T(f, n=3):
    f(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): f()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1000
ps = [build_router_prompt(q, off) for q in qs]
pids = [sc.finder.encode(p) for p in ps]
acts = [distinct_action_prefixes([encode_action(tok, m.id) for m in off])] * B
print("route_batch ms", T(lambda: r.route_batch(qs, [off] * B)))
print("build prompts ms", T(lambda: [build_router_prompt(q, off) for q in qs]))
print("encode ms", T(lambda: [sc.finder.encode(p) for p in ps]))
print("prefix_ids ms", T(lambda: [sc.finder.prefix_ids(p) for p in ps]))
print("score ms", T(lambda: sc.score(ps, pids, acts)))
print("floor score ms", T(lambda: sc.score(ps, pids, [[[tok.eos_token_id]]] * B)))
m = min(len(sc.finder.prefix_ids(ps[0])), len(pids[0]) - 1)
tails = [p[m:] for p in pids]
print("layout ms", T(lambda: sc._layout(m, tails, acts)))
entry = sc.entry_for(sc.finder.prefix_ids(ps[0]))
from xrouter_lite.prefix_cache import make_dynamic_cache
layers = [(k[..., :m, :], v[..., :m, :]) for k, v in entry.layers]
print("make cache ms", T(lambda: make_dynamic_cache(layers, B)))
ids, pos, seg, flat, Tn, keep = sc._layout(m, tails, acts)
print("rows", len(ids), "T", Tn, "keep", keep, "gathered", len(flat[0]))
dev = "cuda"
def fwd():
    with torch.inference_mode():
        mask = sc._mask(seg, m)
        out = r.model(input_ids=torch.tensor(ids, device=dev), attention_mask=mask, position_ids=torch.tensor(pos, device=dev),
                      past_key_values=make_dynamic_cache(layers, B), use_cache=True, logits_to_keep=keep)
        return out
print("forward ms", T(fwd))
def fwd_nocache_keep():
    with torch.inference_mode():
        mask = sc._mask(seg, m)
        r.model(input_ids=torch.tensor(ids, device=dev), attention_mask=mask, position_ids=torch.tensor(pos, device=dev),
                past_key_values=make_dynamic_cache(layers, B), use_cache=False, logits_to_keep=keep)
print("forward use_cache=False ms", T(fwd_nocache_keep))
print("attn impl", r.model.config._attn_implementation)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    sc.score(ps, pids, acts); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
