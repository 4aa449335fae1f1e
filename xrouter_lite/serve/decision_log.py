"""The opt-in decision log (``--decision-log PATH``): one JSON line per routed request, the input of
``xrouter-lite calibrate --from-log``. Format (docs/SERVING.md "Decision log")::

    {"time": ISO-8601 UTC, "request_id", "router", "tau", "offered": [ids], "scores": {id: float},
     "costs": {id: float}, "chosen": id, "model_used": id | null, "cost_usd": float,
     "messages": [...]}          # only with --decision-log-messages

``scores`` are the router's scores before the cost term and ``costs`` the cost vector that ``tau`` multiplies,
so ``argmax(scores - tau * costs)`` gives the decision at any other tau. Each line is one ``write`` on a file
opened in append mode (whole lines, even with several servers on one file), not buffered."""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("xrouter_lite.serve")


def _floats(d: Any) -> dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


class DecisionLog:
    def __init__(self, path: str | Path, with_messages: bool = False):
        self.path = Path(path)
        self.with_messages = with_messages
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lines = 0

    def write(self, *, request_id: str, router: str | None, tau: float | None, offered: list[str],
              scores: Any, costs: Any, chosen: str | None, model_used: str | None, cost_usd: float,
              messages: list[dict[str, Any]] | None = None) -> None:
        rec: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": request_id, "router": router,
            "tau": float(tau) if tau is not None and math.isfinite(float(tau)) else None,
            "offered": list(offered), "scores": _floats(scores), "costs": _floats(costs),
            "chosen": chosen, "model_used": model_used, "cost_usd": float(cost_usd),
        }
        if self.with_messages and messages is not None:
            rec["messages"] = messages
        data = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            n = os.write(self._fd, data)
            if n != len(data):  # a full disk: a partial line would break the reader, so say so loudly
                log.error("decision log %s: short write (%d of %d bytes)", self.path, n, len(data))
            self.lines += 1
        except OSError as e:
            log.error("decision log %s: %s", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
