"""Fused elementwise kernels for the decision forward on CUDA (issue 13: the batch-1 decision is GPU-bound, and a
third of its kernel time is small elementwise kernels: each RMSNorm is ~7 kernels (casts, pow, mean, rsqrt, muls),
each MLP's SiLU-times-up 2, each rotary embedding ~10).

``fuse_elementwise(model)`` replaces, on one Llama/Qwen2-style model, every RMSNorm's forward and every gated MLP's
activation product by ``torch.compile``d functions of the same arithmetic (fp32 normalisation, then the weight in the
input dtype, exactly as transformers' Qwen2RMSNorm); with ``rotary=True`` also the modeling module's
``apply_rotary_pos_emb`` (a module-level function: every model of that architecture in the process). Shapes are
dynamic, so each function compiles once, here, on small tensors of the model's dtype (before any CUDA graph is
captured); if that fails nothing is patched. The result is the same computation up to bf16 rounding: scores move as
much as they already differ between two exact paths of the plain kernels (0.2-1 nats on sums of ~15 token
log-probs; docs/BENCHMARKS.md, tests/test_router.py). CUDA only: on the CPU it does nothing and returns 0."""

from __future__ import annotations

import sys
from typing import Any

_FNS: dict[str, Any] = {}


def _compiled(name: str):
    import torch
    import torch.nn.functional as F

    if name not in _FNS:
        if name == "rms":
            def rms(x, w, eps: float):
                dt = x.dtype
                h = x.to(torch.float32)
                h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
                return w * h.to(dt)
            fn = rms
        else:
            def swiglu(g, u):
                return F.silu(g) * u
            fn = swiglu
        _FNS[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _FNS[name]


def fuse_elementwise(model, rotary: bool = False) -> int:
    """Patch ``model`` in place (see the module); returns the number of modules patched (0 off CUDA)."""
    import torch

    dev = next(model.parameters()).device
    if dev.type != "cuda":
        return 0
    rms, swiglu = _compiled("rms"), _compiled("swiglu")
    norm = next((m for m in model.modules() if type(m).__name__.endswith("RMSNorm")), None)
    dt = norm.weight.dtype if norm is not None else torch.bfloat16  # the activations' dtype (4-bit weights are uint8)
    rope = []
    if rotary:
        for name, m in list(sys.modules.items()):
            if name.startswith("transformers.models.") and name.endswith(("modeling_qwen2", "modeling_llama")):
                f = getattr(m, "apply_rotary_pos_emb", None)
                if f is not None and not getattr(f, "_xrouter_fused", False):
                    rope.append((m, f, torch.compile(f, dynamic=True, fullgraph=True)))
    try:  # compile now (dynamic shapes: once), in the model's dtype, so that a machine without a working Triton
        for T in (3, 2):  # (or with a kernel it cannot build) keeps the plain kernels
            x = torch.ones((2, T, 8), dtype=dt, device=dev)
            rms(x, torch.ones(8, dtype=dt, device=dev), 1e-6), swiglu(x, x)
            q = torch.ones((1, 2, T, 8), dtype=dt, device=dev)
            cs = torch.ones((1, T, 8), dtype=dt, device=dev)
            for _m, _f, g in rope:
                g(q, q, cs, cs)
    except Exception as e:  # noqa: BLE001 - any compiler failure: unfused, said once
        print(f"xrouter-lite: fused kernels unavailable ({type(e).__name__}: {e}); using the plain ones", file=sys.stderr)
        return 0
    n = 0
    for mod in model.modules():
        cls = type(mod).__name__
        if cls.endswith("RMSNorm") and hasattr(mod, "variance_epsilon") and getattr(mod, "weight", None) is not None:
            mod.forward = (lambda m: (lambda x: rms(x, m.weight, m.variance_epsilon)))(mod)
            n += 1
        elif cls.endswith("MLP") and all(hasattr(mod, k) for k in ("gate_proj", "up_proj", "down_proj")):
            act = getattr(mod, "act_fn", None)
            if act is not None and type(act).__name__ in ("SiLU", "SiLUActivation"):
                mod.forward = (lambda m: (lambda x: m.down_proj(swiglu(m.gate_proj(x), m.up_proj(x)))))(mod)
                n += 1
    for m, _f, g in rope:
        g._xrouter_fused = True
        m.apply_rotary_pos_emb = g
    return n
