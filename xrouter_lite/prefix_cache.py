"""Static prefix reuse for router decisions: the question-independent part of the router prompt is computed once.

The router prompt (``prompting.render_prompt``) is the system text and the tool block (one tool per offered model,
with prices), then the user's question. For 11 RouterBench models that is ~1,400 tokens before a 50-token question,
and those 1,400 tokens are the same for every question offered the same models. So:

- ``PrefixFinder`` finds, per offered set (system text + tools), the longest token prefix that does not depend on
  the question: the prompt is rendered with two different probe questions through the ONE renderer
  (``prompting.render_prompt``) and tokenised; the common token prefix of the two is the static prefix. Nothing
  about the rendered text changes: a decision's token ids are exactly ``prompting.encode_prompt``'s, and the
  prefix actually reused for a decision is the common prefix of those ids and the static prefix (a question that
  starts with a space or newline may merge with the last prefix token; then a shorter prefix is reused).
- ``PrefixKVCache`` keeps the prefix's KV cache per prefix (so per router and offered set: one cache per router),
  least recently used first out, bounded in bytes (``max_bytes``, default 256 MiB: ~6 prefixes of 11 Qwen2.5-1.5B
  tools in bf16). It never grows with traffic; an entry larger than the bound is used once and not kept.
- ``PrefixScorer.score`` scores every offered action over the cached prefix: per question ONE forward over the
  question's tokens, the action tokens all candidates share, and every candidate's remaining tokens (block attention
  mask: a candidate sees the prefix, the question and its own earlier tokens, never another candidate; position ids
  restart after the shared part). Questions sharing a prefix are batched over one copy of the prefix KV.
- On CUDA, ``cuda_graphs=True`` replays batch-1 decisions as CUDA graphs (static shapes: prefix, row, logits
  window and target count rounded up to buckets; masked padding), which removes the per-kernel launch cost that
  dominates a 1.5B model's batch-1 forward over a few hundred tokens.

Scores equal the scores of the whole prompt in one forward up to float rounding (``tests/test_router.py`` compares
them on the real SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .prompting import RouterPrompt, common_prefix_len, identity_memo, render_prompt

DEFAULT_PREFIX_CACHE_MB = 256.0
_PROBES = ("x", "7 y")
_MARK = "\u27e6xrouter-question\u27e7"


def _actions_lcp(actions) -> int:
    """Tokens every candidate action starts with, leaving each at least one token of its own: the shared head a
    decision's candidates are scored after (padded rows, packed rows and the trie alike)."""
    n = min(len(s) for s in actions)
    i = 0
    while i < n and all(s[i] == actions[0][i] for s in actions):
        i += 1
    return min(i, n - 1)


class PrefixFinder:
    """The question-independent token prefix of a router prompt, per (system text, tools), memoised (bounded)."""

    _tools_json: dict[tuple, tuple] = {}  # a tool list's identity -> its JSON (prompting.identity_memo), shared

    def __init__(self, tokenizer, max_entries: int = 1024):
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._memo: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._plans: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def _key(prompt: RouterPrompt) -> str:
        """The static part's identity (everything but the question), serialised once per prompt object."""
        key = prompt.__dict__.get("_static_key")
        if key is None:
            # prompts built from one offered set share its tool list (prompting._tools_of): serialised once per list
            tools = identity_memo(PrefixFinder._tools_json, (prompt.tools,),
                                  lambda: json.dumps(prompt.tools, sort_keys=True, ensure_ascii=False))
            key = json.dumps(prompt.messages[:-1], sort_keys=True, ensure_ascii=False) + "\x1f" + tools
            prompt.__dict__["_static_key"] = key
        return key

    def prefix_ids(self, prompt: RouterPrompt) -> tuple[int, ...]:
        key = self._key(prompt)
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            return hit
        rendered = []
        for probe in _PROBES:
            p = RouterPrompt(
                messages=[*(dict(m) for m in prompt.messages[:-1]), {"role": "user", "content": probe}],
                tools=prompt.tools, offered=prompt.offered, tool_to_model=prompt.tool_to_model,
            )
            rendered.append(self.tokenizer(render_prompt(self.tokenizer, p), add_special_tokens=False)["input_ids"])
        ids = tuple(rendered[0][: common_prefix_len(rendered[0], rendered[1])])
        self._memo[key] = ids
        if len(self._memo) > self.max_entries:
            self._memo.popitem(last=False)
        return ids

    def encode(self, prompt: RouterPrompt, max_prompt_tokens: int | None = None) -> list[int]:
        """Exactly ``prompting.encode_prompt(tokenizer, prompt, max_prompt_tokens)``, faster: the rendered text is
        the static text, then the question, then the static end; a tokenizer splits its text at special tokens
        before anything else, so the part up to the last special token before the question is tokenised once per
        offered set and only the rest per decision. Used only where a check on probe questions (with leading and
        trailing whitespace) shows that rendering inserts the question verbatim and that the split tokenises
        identically; otherwise (or for a question containing the marker) the whole prompt is tokenised."""
        ids = self.encode_many([prompt], max_prompt_tokens)[0]
        if isinstance(ids, Exception):
            raise ids
        return ids

    def encode_many(self, prompts: list[RouterPrompt], max_prompt_tokens: int | None = None) -> list:
        """``encode`` of every prompt, the question parts tokenised in one batch call; an item is the ids or the
        PromptTooLongError ``encode`` would raise."""
        from .prompting import PromptTooLongError, encode_prompt

        out: list = [None] * len(prompts)
        fast, texts = [], []
        for i, p in enumerate(prompts):
            plan = self._plan(p)
            q = p.messages[-1]["content"]
            if plan is None or _MARK in q:  # the whole prompt tokenised
                try:
                    out[i] = encode_prompt(self.tokenizer, p, max_prompt_tokens)
                except PromptTooLongError as e:
                    out[i] = e
                continue
            fast.append((i, plan[0]))
            texts.append(plan[1] + q + plan[2])
        if texts:
            for (i, static_ids), rest in zip(fast, self.tokenizer(texts, add_special_tokens=False)["input_ids"]):
                ids = static_ids + rest
                if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                    out[i] = PromptTooLongError(len(ids), max_prompt_tokens)
                else:
                    out[i] = ids
        return out

    def _plan(self, prompt: RouterPrompt):
        key = "plan\x1f" + self._key(prompt)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        tok = self.tokenizer

        def render(q):
            p = RouterPrompt(messages=[*(dict(m) for m in prompt.messages[:-1]), {"role": "user", "content": q}],
                             tools=prompt.tools, offered=prompt.offered, tool_to_model=prompt.tool_to_model)
            return render_prompt(tok, p)

        plan = None
        marked = render(_MARK)
        if marked.count(_MARK) == 1:
            before, after = marked.split(_MARK)
            specials = [t for t in getattr(tok, "added_tokens_encoder", {}) if t and t in before]
            cut = max((before.rfind(t) + len(t) for t in specials), default=0)
            static_ids = tok(before[:cut], add_special_tokens=False)["input_ids"] if cut else []
            ok = True
            for probe in (" x \n", "\n\n7 y", "<|im_end|> z"):
                full = tok(render(probe), add_special_tokens=False)["input_ids"]
                fast = static_ids + tok(before[cut:] + probe + after, add_special_tokens=False)["input_ids"]
                ok = ok and render(probe) == before + probe + after and full == fast
            if ok:
                plan = (list(static_ids), before[cut:], after)
        self._plans[key] = plan
        if len(self._plans) > self.max_entries:
            self._plans.popitem(last=False)
        return plan

    def reusable_len(self, prompt: RouterPrompt, prompt_ids) -> int:
        """How many leading tokens of ``prompt_ids`` are the static prefix (at most ``len(prompt_ids) - 1``)."""
        pre = self.prefix_ids(prompt)
        return min(common_prefix_len(pre, prompt_ids), len(prompt_ids) - 1)


@dataclass
class PrefixEntry:
    ids: tuple[int, ...]
    layers: list  # per decoder layer (keys, values), each [1, kv_heads, len, head_dim]
    nbytes: int

    def __len__(self) -> int:
        return len(self.ids)


class PrefixKVCache:
    """LRU of prefix KV caches, bounded by ``max_bytes`` (never grows with traffic)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, ids: tuple[int, ...]) -> PrefixEntry | None:
        e = self._entries.get(ids)
        if e is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(ids)
        return e

    def put(self, entry: PrefixEntry) -> None:
        if entry.nbytes > self.max_bytes or entry.ids in self._entries:
            return
        while self._entries and self.bytes + entry.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1
        self._entries[entry.ids] = entry
        self.bytes += entry.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}


def _cache_layers(cache) -> list:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # older transformers


def make_dynamic_cache(layers, batch: int):
    """A DynamicCache whose layers hold ``layers`` (expanded to ``batch`` rows, no copy): the next forward's
    ``update`` concatenates its own keys after them (one copy, as any cache would)."""
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=[(k[..., :0, :], v[..., :0, :]) for k, v in layers])
    for layer, (k, v) in zip(cache.layers, layers):
        if batch != k.shape[0]:
            k, v = k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])
        layer.keys, layer.values = k, v
    return cache


def _bucket(n: int, step: int) -> int:
    return max(step, (n + step - 1) // step * step)


class PrefixScorer:
    """Candidate-action log-probabilities over cached prefixes, for one loaded model (see the module docstring)."""

    def __init__(self, model, tokenizer, pad_id: int, max_bytes: int | None = None, cuda_graphs: bool = False,
                 flex: bool | None = None):
        import torch

        from . import flex_scoring

        self._torch = torch
        self.model = model
        self.pad_id = pad_id
        self.finder = PrefixFinder(tokenizer)
        self.cache = PrefixKVCache(int(DEFAULT_PREFIX_CACHE_MB * 2**20) if max_bytes is None else int(max_bytes))
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._graphs: dict[tuple, Any] = {}
        self._static_kv: dict[int, list] = {}
        self._static_kv_owner: dict[int, tuple] = {}
        self._pool = None
        self.graph_failures = 0
        # batches of several decisions: one packed sequence over one prefix copy (flex_scoring.py); default on CUDA
        self.flex = flex_scoring.available(self.device) if flex is None else bool(flex)
        self.flex_failures = 0

    # -- prefix KV ------------------------------------------------------------------------------------------------

    def entry_for(self, prefix: tuple[int, ...]) -> PrefixEntry:
        e = self.cache.get(prefix)
        if e is not None:
            return e
        torch = self._torch
        with torch.inference_mode():
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, position_ids=torch.arange(len(prefix), device=self.device)[None],
                             use_cache=True, logits_to_keep=1)
            layers = [(k.contiguous(), v.contiguous()) for k, v in _cache_layers(out.past_key_values)]
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        e = PrefixEntry(prefix, layers, nbytes)
        self.cache.put(e)
        return e

    # -- scoring --------------------------------------------------------------------------------------------------

    def score(self, prompts: list[RouterPrompt], prompt_ids: list[list[int]], actions: list[list[list[int]]]):
        """``sum log p(action tokens | prompt)`` for every candidate of every prompt (same order as given)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        reuse = []
        for i, (p, ids) in enumerate(zip(prompts, prompt_ids)):
            pre = self.finder.prefix_ids(p)
            m = min(common_prefix_len(pre, ids), len(ids) - 1)
            reuse.append(m)
            groups.setdefault(pre, []).append(i)
        out: list[list[float] | None] = [None] * len(prompts)
        for pre, idx in groups.items():
            entry = self.entry_for(pre)
            m = min(reuse[i] for i in idx)
            tails = [prompt_ids[i][m:] for i in idx]
            acts = [actions[i] for i in idx]
            if self.cuda_graphs and len(idx) == 1:
                try:
                    res = self._score_graph(entry, m, tails, acts)
                except Exception:  # noqa: BLE001 - a model/kernel that cannot be captured: eager from now on
                    self.graph_failures += 1
                    self.cuda_graphs = False
                    res = self._score_eager(entry, m, tails, acts)
            elif self.flex and len(idx) > 1:
                try:
                    res = self._score_flex(entry, m, tails, acts)
                except Exception:  # noqa: BLE001 - no working FlexAttention here: the eager rows from now on
                    self.flex_failures += 1
                    self.flex = False
                    res = self._score_eager(entry, m, tails, acts)
            else:
                res = self._score_eager(entry, m, tails, acts)
            for i, r in zip(idx, res):
                out[i] = r
        return out  # type: ignore[return-value]

    @staticmethod
    def _layout(m: int, tails, actions, T: int | None = None, keep: int | None = None):
        """Left-padded rows ``[pad][question tail + shared action head][candidate rests]`` and the flat list of
        (row, window index, target token, candidate or -1 for the shared head) to gather."""
        heads, rests, lcps = [], [], []
        for t, a in zip(tails, actions):
            l = _actions_lcp(a)
            lcps.append(l)
            heads.append(list(t) + list(a[0][:l]))
            tok, cand, off = [], [], []
            for j, x in enumerate(a):
                s = x[l:]
                tok.extend(s[:-1])
                cand.extend([j] * (len(s) - 1))
                off.extend(range(len(s) - 1))
            rests.append((tok, cand, off))
        lens = [len(h) + len(r[0]) for h, r in zip(heads, rests)]
        need = [l + 1 + len(r[0]) for l, r in zip(lcps, rests)]
        T = max(lens) if T is None else T
        keep = max(need) if keep is None else keep
        B = len(tails)
        ids = [[0] * T for _ in range(B)]
        pos = [[m] * T for _ in range(B)]
        seg = [[-2] * T for _ in range(B)]  # -2 pad, -1 head, j candidate j
        fb, fw, ft, fc = [], [], [], []
        for b in range(B):
            h, (tok, cand, off), l, a = heads[b], rests[b], lcps[b], actions[b]
            st = T - lens[b]
            for i, x in enumerate(h):
                ids[b][st + i] = x
                pos[b][st + i] = m + i
                seg[b][st + i] = -1
            for q, (x, c, o) in enumerate(zip(tok, cand, off)):
                ids[b][st + len(h) + q] = x
                pos[b][st + len(h) + q] = m + len(h) + o
                seg[b][st + len(h) + q] = c
            w0 = T - keep  # row position of window index 0
            tail_last = st + len(tails[b]) - 1
            for i in range(l):
                fb.append(b), fw.append(tail_last + i - w0), ft.append(a[0][i]), fc.append(-1)
            for j, x in enumerate(a):
                fb.append(b), fw.append(st + len(h) - 1 - w0), ft.append(x[l]), fc.append(j)
            for q, (c, o) in enumerate(zip(cand, off)):
                fb.append(b), fw.append(st + len(h) + q - w0), ft.append(a[c][l + o + 1]), fc.append(c)
        return ids, pos, seg, (fb, fw, ft, fc), T, keep

    def _mask(self, seg, m: int, P: int | None = None):
        """Additive 4D mask [B, 1, T, P + T]: every row sees prefix columns < m, then the block rule in the row."""
        torch = self._torch
        P = m if P is None else P
        seg = seg if isinstance(seg, torch.Tensor) else torch.tensor(seg, dtype=torch.long, device=self.device)
        B, T = seg.shape
        idx = torch.arange(T, device=seg.device)
        causal = idx[:, None] >= idx[None, :]
        q, k = seg[:, :, None], seg[:, None, :]
        allowed = causal & (((k == -1) & (q >= -1)) | ((q >= 0) & (q == k)))
        allowed |= (idx[:, None] == idx[None, :]) & (q == -2)
        pre = (torch.arange(P, device=seg.device) < m)[None, None, :].expand(B, T, P)
        full = torch.cat([pre, allowed], dim=-1)[:, None]
        mask = torch.zeros(full.shape, dtype=self.dtype, device=seg.device)
        return mask.masked_fill_(~full, torch.finfo(self.dtype).min)

    @staticmethod
    def _sums(vals: list[float], flat, n_rows: int, n_cands: list[int]):
        fb, _fw, _ft, fc = flat
        common = [0.0] * n_rows
        out = [[0.0] * n for n in n_cands]
        for v, b, c in zip(vals, fb, fc):
            if c < 0:
                common[b] += v
            else:
                out[b][c] += v
        return [[common[b] + x for x in out[b]] for b in range(n_rows)]

    def _gather(self, logits, fb, fw, ft):
        torch = self._torch
        vals = logits[fb, fw, ft].float()
        lse = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], 8):
            lse[i : i + 8] = torch.logsumexp(logits[i : i + 8].float(), dim=-1)
        return vals - lse[fb, fw]

    def _score_eager(self, entry: PrefixEntry, m: int, tails, actions):
        torch = self._torch
        dev = self.device
        ids, pos, seg, flat, T, keep = self._layout(m, tails, actions)
        B = len(tails)
        layers = [(k[..., :m, :], v[..., :m, :]) for k, v in entry.layers]
        with torch.inference_mode():
            mask = self._mask(seg, m)
            out = self.model(
                input_ids=torch.tensor(ids, device=dev), attention_mask=mask,
                position_ids=torch.tensor(pos, device=dev), past_key_values=make_dynamic_cache(layers, B),
                use_cache=True, logits_to_keep=keep,
            )
            fb, fw, ft, _ = (torch.tensor(x, device=dev) for x in flat)
            vals = self._gather(out.logits, fb, fw, ft).tolist()
        return self._sums(vals, flat, B, [len(a) for a in actions])

    def _score_flex(self, entry: PrefixEntry, m: int, tails, actions):
        from .flex_scoring import score_packed

        return score_packed(self.model, entry, m, tails, actions, make_dynamic_cache)

    # -- CUDA graphs (batch 1) ------------------------------------------------------------------------------------

    @staticmethod
    def _sizes(tails, actions) -> tuple[int, int, int]:
        """(row length, logits window, gathered positions) of ``_layout``'s rows, without building them."""
        T = keep = n = 0
        for t, a in zip(tails, actions):
            l = _actions_lcp(a)
            rest = sum(len(x) - l - 1 for x in a)
            T, keep = max(T, len(t) + l + rest), max(keep, l + 1 + rest)
            n += l + len(a) + rest
        return T, keep, n

    def _score_graph(self, entry: PrefixEntry, m: int, tails, actions):
        T0, keep0, n0 = self._sizes(tails, actions)
        P, T = _bucket(m, 256), _bucket(T0, 64)
        keep, F = min(T, _bucket(keep0, 32)), _bucket(n0, 64)
        ids, pos, seg, flat, _, _ = self._layout(m, tails, actions, T=T, keep=keep)
        key = (P, T, keep, F)
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(entry, P, T, keep, F)
            self._graphs[key] = g
        kv = self._static_kv[P]
        if self._static_kv_owner.get(P) != (entry.ids, m):
            for (sk, sv), (k, v) in zip(kv, entry.layers):
                sk[..., :m, :].copy_(k[..., :m, :])
                sv[..., :m, :].copy_(v[..., :m, :])
            self._static_kv_owner[P] = (entry.ids, m)
        n = len(flat[0])
        pad = [0] * (F - n)
        # ONE host-to-device copy of every input (ids, positions, segments, window indices, targets, prefix length);
        # the mask is built inside the graph from the segments
        g["host"].numpy()[:] = ids[0] + pos[0] + seg[0] + flat[1] + pad + flat[2] + pad + [m]
        g["static"]["inp"].copy_(g["host"], non_blocking=True)
        g["graph"].replay()
        vals = g["out"][:n].tolist()
        return self._sums(vals, flat, 1, [len(a) for a in actions])

    def _capture(self, entry: PrefixEntry, P: int, T: int, keep: int, F: int):
        torch = self._torch
        dev = self.device
        if P not in self._static_kv:
            self._static_kv[P] = [
                (torch.zeros((1, k.shape[1], P, k.shape[3]), dtype=k.dtype, device=dev),
                 torch.zeros((1, v.shape[1], P, v.shape[3]), dtype=v.dtype, device=dev))
                for k, v in entry.layers
            ]
        kv = self._static_kv[P]
        inp = torch.zeros((3 * T + 2 * F + 1,), dtype=torch.long, device=dev)
        inp[:T] = self.pad_id
        inp[2 * T : 3 * T] = -2
        host = torch.empty(inp.shape, dtype=torch.long, pin_memory=dev.type == "cuda")
        zeros = torch.zeros((F,), dtype=torch.long, device=dev)
        idx_t = torch.arange(T, device=dev)
        idx_p = torch.arange(P, device=dev)
        cache = make_dynamic_cache(kv, 1)  # built outside the capture (its lazy init allocates from the host)
        lo = torch.finfo(self.dtype).min

        def run():
            ids, pos, seg = inp[:T][None], inp[T : 2 * T][None], inp[2 * T : 3 * T][None]
            fw, ft, m = inp[3 * T : 3 * T + F], inp[3 * T + F : 3 * T + 2 * F], inp[-1]
            causal = idx_t[:, None] >= idx_t[None, :]
            q, k = seg[:, :, None], seg[:, None, :]
            allowed = causal & (((k == -1) & (q >= -1)) | ((q >= 0) & (q == k)))
            allowed = allowed | ((idx_t[:, None] == idx_t[None, :]) & (q == -2))
            pre = (idx_p < m)[None, None, :].expand(1, T, P)
            full = torch.cat([pre, allowed], dim=-1)[:, None]
            mask = torch.zeros(full.shape, dtype=self.dtype, device=dev).masked_fill(~full, lo)
            for layer, (kk, vv) in zip(cache.layers, kv):  # the static buffers, before this forward appends to them
                layer.keys, layer.values = kk, vv
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=keep)
            logits = out.logits
            return logits[zeros, fw, ft].float() - torch.logsumexp(logits[0].float(), dim=-1)[fw]

        alive = (inp, host, zeros, idx_t, idx_p, cache, run)
        if dev.type != "cuda":  # the same computation without a graph (lets the CPU tests check this path)
            box: dict[str, Any] = {}

            class _Replay:
                def replay(self_inner):
                    box["out"] = run()

            res = {"graph": _Replay(), "static": {"inp": inp}, "host": host, "alive": alive}

            class _Out:
                def __getitem__(self_inner, sl):
                    return box["out"][sl]

            res["out"] = _Out()
            return res
        with torch.inference_mode():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    run()
            torch.cuda.current_stream().wait_stream(s)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = run()
        # everything the graph reads must outlive it: a freed input's memory would be reused by other tensors
        return {"graph": graph, "static": {"inp": inp}, "host": host, "out": out, "alive": alive}
