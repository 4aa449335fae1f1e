"""The server's opt-in decision log: one JSON line per routed request, read back by ``xrouter-lite calibrate
--from-log`` to choose tau from real traffic.

Turn it on with ``decision_log: PATH`` in the serve config (``--decision-log PATH``). Each line::

    {"time": "2026-11-26T12:00:00.123Z", "request_id": "chatcmpl-xr...", "router": "knn", "tau": 0.5,
     "offered": ["a", "b"], "scores": {"a": 0.8, "b": 0.6}, "costs": {"a": 1.0, "b": 0.1},
     "chosen": "a", "model_used": "a", "cost_usd": 0.0012, "strategy": "delegate_to_model"}

``scores`` are the router's scores BEFORE cost (its base scores), ``costs`` the normalised costs tau multiplied,
so the decision at any other tau is ``argmax(scores - tau * costs)``. ``chosen`` is null when the router failed
(the default model answered). The conversation (``messages``) is written only with ``decision_log_messages:
true``. Requests naming a pool model (bypass) are not routed and not logged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def decision_entry(
    request_id: str, router: Any, tau: float | None, offered: list[str], decision: Any, model_used: str | None,
    cost_usd: float | None, strategy: str | None = None, messages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One log line (see the module docstring) from what the server knows after answering."""
    base = {}
    costs = {}
    if decision is not None:
        base = dict(getattr(decision, "base_scores", None) or decision.scores)
        costs = dict(getattr(decision, "costs", None) or {})
    t = time.time()
    out = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
        "request_id": request_id,
        "router": getattr(router, "name", None),
        "tau": float(tau) if tau is not None else float(getattr(router, "tau", 0.0) or 0.0),
        "offered": list(offered),
        "scores": {m: float(v) for m, v in base.items()},
        "costs": {m: float(v) for m, v in costs.items()},
        "chosen": decision.model_id if decision is not None else None,
        "model_used": model_used,
        "cost_usd": cost_usd,
        "strategy": strategy,
    }
    if messages is not None:
        out["messages"] = messages
    return out


class DecisionLog:
    """Appends decision lines to ``path`` (created with its folder; every line flushed at once, so a crash loses
    at most the line being written)."""

    def __init__(self, path: str | Path, with_messages: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.with_messages = with_messages
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, entry: dict[str, Any]) -> None:
        if not self.with_messages:
            entry = {k: v for k, v in entry.items() if k != "messages"}
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_decision_log(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The usable lines of a decision log (routed, with scores and costs) and counts of the skipped ones. A torn
    last line (a server killed mid-write) is skipped and counted; any other malformed line is an error naming
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decision log not found: {path}")
    rows, skipped = [], {"router_failed": 0, "no_scores": 0, "torn_last_line": 0}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            if i == len(lines):
                skipped["torn_last_line"] += 1
                continue
            raise ValueError(f"{path}:{i}: not a JSON line") from None
        if not isinstance(d, dict) or not isinstance(d.get("offered"), list):
            raise ValueError(f"{path}:{i}: not a decision log line (no 'offered' list)")
        if d.get("chosen") is None:
            skipped["router_failed"] += 1
            continue
        if not d.get("scores") or not d.get("costs"):
            skipped["no_scores"] += 1
            continue
        rows.append(d)
    return rows, skipped
