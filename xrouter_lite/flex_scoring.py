"""Batched decisions as ONE packed sequence over ONE copy of the cached prefix (FlexAttention), for GPU throughput.

``PrefixScorer._score_eager`` gives every decision of a batch its own left-padded row over the prefix KV expanded
to the batch: SDPA with a 4D mask then repeats the grouped keys per row and the cache concatenates the prefix per
row. A profile of 256 decisions (Qwen2.5-1.5B shape, 11 models, H100) spent 22% of the GPU time copying repeated
keys, 9% concatenating the cache and 14% in the lm_head as a strided batched matmul (docs/BENCHMARKS.md). Here the
batch's rows (the same tokens, positions and candidate blocks as ``_layout``) are laid one after another in a
single sequence; a block-sparse ``BlockMask`` says who sees whom (every token: the prefix; within its own decision,
the causal rule of ``PrefixScorer._mask``: the question and shared action head to all, a candidate's tokens to that
candidate only), FlexAttention reads the prefix keys once for all decisions (grouped-query heads natively), and the
lm_head runs only at the positions whose log-probabilities are gathered. Same tokens, same positions, same scores
up to float rounding (``tests/test_router.py`` compares this path with the eager one).
"""

from __future__ import annotations

import functools

ATTN_NAME = "xrouter_flex_or_sdpa"
BLOCK = 128
CHUNK = 512  # positions per lm_head chunk: 512 x 151,936 fp32 log-probs = 0.3 GB


def available(device) -> bool:
    """FlexAttention is usable: CUDA (compiled kernels) and a torch that has it."""
    if getattr(device, "type", str(device)) != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=2)
def _flex(cuda: bool):
    """Compiled FlexAttention on CUDA; the uncompiled reference elsewhere (the CPU tests: inductor's CPU code for
    this mask does not compile, and the tests need the arithmetic, not the speed)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if cuda else flex_attention


@functools.lru_cache(maxsize=1)
def _register() -> str:
    """Register the attention function (flex for a BlockMask, transformers' SDPA otherwise) under ATTN_NAME."""
    from torch.nn.attention.flex_attention import BlockMask
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if isinstance(attention_mask, BlockMask):
            out = _flex(query.device.type == "cuda")(query, key, value, block_mask=attention_mask, scale=scaling,
                                   enable_gqa=query.shape[1] != key.shape[1])
            return out.transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    AttentionInterface.register(ATTN_NAME, attention)
    return ATTN_NAME


@functools.lru_cache(maxsize=256)
def _trie(actions: tuple[tuple[int, ...], ...]):
    """The per-offered-set part of ``pack``: the shared action tokens, the trie nodes in depth-first order as
    (token, depth, subtree end relative to the first node), and the candidates' gathers as (node relative index,
    or -1 for the last shared token, target token, candidate)."""
    from .prefix_cache import _actions_lcp

    a = [list(x) for x in actions]
    l = _actions_lcp(a)
    nodes: list[list[int]] = []  # [token, depth, end]
    index: dict[tuple, int] = {}

    def visit(prefix: tuple, members: list[int], depth: int) -> None:
        order: list[int] = []
        groups: dict[int, list[int]] = {}
        for j in members:
            r = a[j][l:]
            if len(r) > depth + 1:  # a node for every prefix followed by another token
                x = r[depth]
                if x not in groups:
                    groups[x] = []
                    order.append(x)
                groups[x].append(j)
        for x in order:
            k = len(nodes)
            nodes.append([x, depth, -1])
            index[prefix + (x,)] = k
            visit(prefix + (x,), groups[x], depth + 1)
            nodes[k][2] = len(nodes) - 1

    visit((), list(range(len(a))), 0)
    gathers = []
    for j, x in enumerate(a):
        r = x[l:]
        for i in range(len(r)):
            gathers.append((-1 if i == 0 else index[tuple(r[:i])], r[i], j))
    return tuple(a[0][:l]), tuple(map(tuple, nodes)), tuple(gathers)


def pack(m: int, tails, actions):
    """One sequence for a batch of decisions. Per decision: its question tail and the action tokens every candidate
    shares (a chain), then the candidates' remaining tokens as a TRIE in depth-first order: a token prefix that
    several candidates share (``mistralai/``, ``claude-``) is one node, run once. Every token gets the position
    it has in its own candidate's sequence and ``end``: the last index of its subtree (a chain token: the end of
    its decision), so "k is visible to q" is ``k <= q <= end[k]`` within one decision. Rounded up to BLOCK with
    padding tokens (decision -1). Returns ids, positions, decision, end per token, and the gathered
    (decision, packed position, target token, candidate or -1 for the shared tokens)."""
    ids, pos, row, end = [], [], [], []
    fb, fw, ft, fc = [], [], [], []
    for b, (t, a) in enumerate(zip(tails, actions)):
        shared, nodes, gathers = _trie(tuple(tuple(x) for x in a))
        s0 = len(ids)
        nh = len(t) + len(shared)
        n0 = s0 + nh  # first node
        last = n0 + len(nodes) - 1
        ids.extend(t)
        ids.extend(shared)
        ids.extend(x for x, _d, _e in nodes)
        pos.extend(range(m, m + nh))
        pos.extend(m + nh + d for _x, d, _e in nodes)
        row.extend([b] * (nh + len(nodes)))
        end.extend([last] * nh)
        end.extend(n0 + e for _x, _d, e in nodes)
        tail_last = s0 + len(t) - 1
        for i, x in enumerate(shared):  # the shared action tokens: the same log-prob for every candidate
            fb.append(b), fw.append(tail_last + i), ft.append(x), fc.append(-1)
        for k, x, j in gathers:
            fb.append(b), fw.append(n0 - 1 if k < 0 else n0 + k), ft.append(x), fc.append(j)
    n = len(ids)
    pad = -n % BLOCK
    ids += [0] * pad
    pos += [m] * pad
    row += [-1] * pad
    end += list(range(n, n + pad))
    return ids, pos, row, end, (fb, fw, ft, fc)


def score_packed(model, entry, m: int, tails, actions, make_cache) -> tuple[list[float], tuple]:
    """Log-probabilities of every gathered target of ``pack(m, tails, actions)`` (and the gather list), computed as
    one packed sequence over the first ``m`` cached prefix positions of ``entry``."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    dev = entry.layers[0][0].device
    ids, pos, row_l, end_l, flat = pack(m, tails, actions)
    fb, fw, ft, fc = flat
    L = len(ids)
    row = torch.tensor(row_l, device=dev)
    end = torch.tensor(end_l, device=dev)

    def visible(b, h, q, kv):
        k = (kv - m).clamp(min=0)
        own = (kv >= m) & (row[k] == row[q]) & (k <= q) & (q <= end[k])
        return (kv < m) | own

    # compiled on CUDA: evaluated block by block, never materialised as L x (m + L) (the CPU, used by the tests
    # with short sequences, builds it whole: inductor's CPU code for this mask does not compile)
    mask = create_block_mask(visible, None, None, L, m + L, device=dev, BLOCK_SIZE=BLOCK, _compile=dev.type == "cuda")
    layers = [(k[..., :m, :], v[..., :m, :]) for k, v in entry.layers]
    cfg = model.config
    old = cfg._attn_implementation
    name = _register()
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    try:
        cfg._attn_implementation = name
        with torch.inference_mode():
            h = decoder(
                input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([pos], device=dev),
                attention_mask=mask, past_key_values=make_cache(layers, 1), use_cache=True,
            ).last_hidden_state[0]
            # the lm_head only where a log-prob is read, a chunk of positions at a time (bounded memory)
            uniq = sorted(set(fw))
            slot = {p: i for i, p in enumerate(uniq)}
            gi = torch.tensor([slot[p] for p in fw], device=dev)
            tgt = torch.tensor(ft, device=dev)
            where = torch.tensor(uniq, device=dev)
            vals = torch.empty(len(fw), dtype=torch.float32, device=dev)
            for i in range(0, len(uniq), CHUNK):
                lp = head(h[where[i : i + CHUNK]]).float().log_softmax(-1)
                sel = ((gi >= i) & (gi < i + CHUNK)).nonzero().squeeze(1)
                vals[sel] = lp[gi[sel] - i, tgt[sel]]
            return vals.tolist(), flat
    finally:
        cfg._attn_implementation = old
