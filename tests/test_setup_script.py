"""scripts/setup.sh's torch step (issue 11 item 12): without an NVIDIA driver the CPU build comes from the PyTorch
CPU wheel index; when that index cannot be reached the default index is used after a short probe (seconds, not
pip's minutes of retries). Run with --torch-only --dry-run: the decision and the pip command, nothing installed."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _setup(index_url: str, probe_s: str = "2") -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "TORCH_CPU_INDEX": index_url, "PROBE_TIMEOUT_S": probe_s, "PYTHON": sys.executable,
           "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    t = time.perf_counter()
    res = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--torch-only", "--dry-run"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    return res, time.perf_counter() - t


def test_an_unreachable_cpu_index_falls_back_to_the_default_index_within_seconds():
    with socket.socket() as s:  # accepts connections (the kernel's backlog) but never answers: a hanging index
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        res, took = _setup(f"http://127.0.0.1:{s.getsockname()[1]}/whl/cpu")
    assert res.returncode == 0, res.stderr
    assert "unreachable" in res.stderr
    cmd = [line for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert len(cmd) == 1 and "torch==2.13.0" in cmd[0] and "--index-url" not in cmd[0] and "-c constraints.txt" in cmd[0]
    assert took < 10, took


def test_a_reachable_cpu_index_is_used_for_the_cpu_build(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        res, _ = _setup(url)
    finally:
        httpd.shutdown()
    assert res.returncode == 0, res.stderr
    cmd = [line for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert len(cmd) == 1 and f"--index-url {url}" in cmd[0] and "torch==2.13.0+cpu" in cmd[0], res.stdout
