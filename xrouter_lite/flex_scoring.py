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
    import numpy as np

    shared = np.array(a[0][:l], dtype=np.int64)
    nd = np.array(nodes, dtype=np.int64).reshape(-1, 3)
    g = np.array(gathers, dtype=np.int64).reshape(-1, 3)
    return shared, nd[:, 0], nd[:, 1], nd[:, 2], g[:, 0], g[:, 1], g[:, 2]


def _template(actions):
    """``_trie`` of a decision's action lists, memoised on the list object the router reuses per offered set."""
    from .prompting import identity_memo

    return identity_memo(_TEMPLATES, (actions,), lambda: _trie(tuple(tuple(x) for x in actions)))


_TEMPLATES: dict[tuple, tuple] = {}


def pack(m: int, tails, actions):
    """One sequence for a batch of decisions. Per decision: its question tail and the action tokens every candidate
    shares (a chain), then the candidates' remaining tokens as a TRIE in depth-first order: a token prefix that
    several candidates share (``mistralai/``, ``claude-``) is one node, run once. Every token gets the position
    it has in its own candidate's sequence and ``end``: the last index of its subtree (a chain token: the end of
    its decision), so "k is visible to q" is ``k <= q <= end[k]`` within one decision. Rounded up to BLOCK with
    padding tokens (decision -1). Returns numpy arrays: ids, positions, decision, end per token, and the gathered
    (decision, packed position, target token, candidate or -1 for the shared tokens)."""
    import numpy as np

    parts: dict[str, list] = {k: [] for k in ("ids", "pos", "row", "end", "fb", "fw", "ft", "fc")}
    s0 = 0
    for b, (t, a) in enumerate(zip(tails, actions)):
        shared, ntok, ndep, nend, gk, gt, gc = _template(a)
        t = np.asarray(t, dtype=np.int64)
        nh = len(t) + len(shared)
        n0 = s0 + nh  # first trie node
        size = nh + len(ntok)
        parts["ids"] += [t, shared, ntok]
        parts["pos"] += [np.arange(m, m + nh), m + nh + ndep]
        parts["row"].append(np.full(size, b))
        parts["end"] += [np.full(nh, s0 + size - 1), n0 + nend]
        tail_last = s0 + len(t) - 1  # the shared action tokens: the same log-prob for every candidate
        parts["fb"] += [np.full(len(shared) + len(gk), b)]
        parts["fw"] += [tail_last + np.arange(len(shared)), n0 + gk]  # gk -1: the last shared token
        parts["ft"] += [shared, gt]
        parts["fc"] += [np.full(len(shared), -1), gc]
        s0 += size
    out = {k: np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    pad = -s0 % BLOCK
    ids = np.concatenate([out["ids"], np.zeros(pad, np.int64)])
    pos = np.concatenate([out["pos"], np.full(pad, m)])
    row = np.concatenate([out["row"], np.full(pad, -1)])
    end = np.concatenate([out["end"], np.arange(s0, s0 + pad)])
    return ids, pos, row, end, (out["fb"], out["fw"], out["ft"], out["fc"])


def score_packed(model, entry, m: int, tails, actions, make_cache) -> list[list[float]]:
    """``sum log p`` of every candidate's scored tokens for every decision (``pack(m, tails, actions)``), computed
    as one packed sequence over the first ``m`` cached prefix positions of ``entry``."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    dev = entry.layers[0][0].device
    ids, pos, row_a, end_a, (fb, fw, ft, fc) = pack(m, tails, actions)
    L = len(ids)
    row = torch.from_numpy(row_a).to(dev)
    end = torch.from_numpy(end_a).to(dev)

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
    import numpy as np

    uniq, slot = np.unique(fw, return_inverse=True)  # the positions whose log-probs are read
    n_c = [len(a) for a in actions]
    C = max(n_c)
    try:
        cfg._attn_implementation = name
        with torch.inference_mode():
            h = decoder(
                input_ids=torch.from_numpy(ids)[None].to(dev), position_ids=torch.from_numpy(pos)[None].to(dev),
                attention_mask=mask, past_key_values=make_cache(layers, 1), use_cache=True,
            ).last_hidden_state[0]
            # the lm_head only where a log-prob is read, a chunk of positions at a time (bounded memory)
            gi = torch.from_numpy(slot.reshape(-1)).to(dev)
            tgt = torch.from_numpy(ft).to(dev)
            where = torch.from_numpy(uniq).to(dev)
            vals = torch.empty(len(fw), dtype=torch.float32, device=dev)
            for i in range(0, len(uniq), CHUNK):
                lp = head(h[where[i : i + CHUNK]]).float().log_softmax(-1)
                sel = ((gi >= i) & (gi < i + CHUNK)).nonzero().squeeze(1)
                vals[sel] = lp[gi[sel] - i, tgt[sel]]
            # per decision and candidate: its own tokens + the tokens every candidate shares
            fb_t, fc_t = torch.from_numpy(fb).to(dev), torch.from_numpy(fc).to(dev)
            own = fc_t >= 0
            sums = torch.zeros(len(tails) * C, dtype=torch.float32, device=dev)
            sums.index_add_(0, (fb_t * C + fc_t)[own], vals[own])
            common = torch.zeros(len(tails), dtype=torch.float32, device=dev).index_add_(0, fb_t[~own], vals[~own])
            res = (sums.view(len(tails), C) + common[:, None]).tolist()
            return [r[:n] for r, n in zip(res, n_c)]
    finally:
        cfg._attn_implementation = old
