"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, for tests and benchmarks.

It stands in for every provider (no LLM API is reachable here): litellm is pointed at it with ``api_base``.
It can answer, be slow, fail with 429/500 (optionally with ``Retry-After``), drop the connection, or hang.

Behaviour is set over HTTP (so the server can live in another process)::

    POST /_control  {"latency_s": 0.2,
                     "answers": {"model-a": "The answer is 72."},      # default: "#### 42"
                     "script": {"model-a": ["429", "500", "ok"]},      # consumed in order, then "ok"
                     "usage": {"prompt_tokens": 50, "completion_tokens": 10},
                     "tool_calls": {"model-a": [{"id": "call_1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}}
    GET  /_stats    {"requests": 12, "by_model": {...}, "last_body": {model: the last request body it got}}

A model with ``tool_calls`` set answers a request that carries ``tools`` with those calls (``content: null``,
``finish_reason: "tool_calls"``); streamed, each call comes as deltas: its id, type and name first, then its
arguments in pieces, as OpenAI streams them. Without ``tools`` in the request it answers text as usual.

Script steps: ``ok``, ``429``, ``429:<retry-after-seconds>``, ``500``, ``503``, ``400``, ``401``, ``hang``
(sleeps far longer than any client time-out), ``drop`` (closes the connection without an answer),
``slow:<seconds>``.

Batch API (OpenAI's ``/v1/files`` + ``/v1/batches``, for ``xrouter-lite cache --batch``): ``POST /v1/files``
(multipart, purpose ``batch``), ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches`` (list),
``POST /v1/batches/{id}/cancel``, ``GET /v1/files/{id}/content``. A batch stays ``in_progress`` for
``batch_delay_s`` after its creation (control, read at each poll; default 0) and then completes: every line is answered as a chat completion would be
(same answers, usage and scripts; a script step other than ``ok`` becomes that line's error). ``/_stats`` counts
the batch lines per model in ``by_model`` too, and the batches created in ``batches``.

Run it: ``python -m xrouter_lite.fake_upstream --port 9000`` or, in code, ``with FakeUpstream() as up: up.base_url``.
"""



import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import time
import uuid
from collections import defaultdict, deque
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _DroppedResponse:
    """An ASGI response that promises a body, sends half of it and ends: uvicorn then closes the connection, so
    the client sees a connection dropped mid-answer (a plain exception would become a clean HTTP 500)."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-dropped", ', "more_body": True})


def build_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()
    state: dict[str, Any] = {
        "latency_s": 0.0,
        "answers": {},
        "script": defaultdict(deque),
        "usage": None,
        "requests": 0,
        "by_model": defaultdict(int),
        "tool_calls": {},
        "last_body": {},
        "batch_delay_s": 0.0,
        "files": {},
        "batches": {},
    }

    @app.post("/_control")
    async def control(req: Request):
        body = await req.json()
        if "latency_s" in body:
            state["latency_s"] = float(body["latency_s"])
        if "answers" in body:
            state["answers"].update(body["answers"])
        if "script" in body:
            for model, steps in body["script"].items():
                state["script"][model] = deque(steps)
        if "usage" in body:
            state["usage"] = body["usage"]
        if "tool_calls" in body:
            state["tool_calls"] = dict(body["tool_calls"] or {})
        if "batch_delay_s" in body:
            state["batch_delay_s"] = float(body["batch_delay_s"])
        if body.get("reset_stats"):
            state["requests"] = 0
            state["by_model"].clear()
            state["last_body"].clear()
        return {"ok": True}

    @app.get("/_stats")
    async def stats():
        return {"requests": state["requests"], "by_model": dict(state["by_model"]), "last_body": state["last_body"],
                "batches": len(state["batches"])}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        return {"object": "list", "data": []}

    def err(status: int, msg: str, headers: dict[str, str] | None = None):
        kind = {429: "rate_limit_error", 400: "invalid_request_error", 401: "authentication_error"}.get(status, "server_error")
        return JSONResponse({"error": {"message": msg, "type": kind, "code": status}}, status_code=status, headers=headers)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        model = str(body.get("model", ""))
        state["requests"] += 1
        state["by_model"][model] += 1
        state["last_body"][model] = body
        q = state["script"].get(model)
        step = q.popleft() if q else "ok"
        latency = state["latency_s"]
        if step == "hang":
            await asyncio.sleep(3600)
        if step == "drop":
            return _DroppedResponse()
        if step.startswith("slow:"):
            latency = float(step.split(":", 1)[1])
            step = "ok"
        if latency:
            await asyncio.sleep(latency)
        if step.startswith("429"):
            ra = step.split(":", 1)[1] if ":" in step else None
            return err(429, "rate limited (fake upstream)", {"retry-after": ra} if ra else None)
        if step in ("500", "502", "503"):
            return err(int(step), "upstream exploded (fake upstream)")
        if step == "400":
            return err(400, "bad request (fake upstream)")
        if step == "401":
            return err(401, "invalid api key (fake upstream)")
        text = state["answers"].get(model, state["answers"].get("*", "#### 42"))
        msgs = body.get("messages") or []
        prompt_chars = sum(len(str(m.get("content", ""))) for m in msgs)
        usage = state["usage"] or {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": max(1, len(text) // 4),
        }
        usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        calls = state["tool_calls"].get(model) if body.get("tools") else None
        if calls:
            return _tool_call_answer(cid, created, model, calls, usage, bool(body.get("stream")))
        if body.get("stream"):

            async def gen():
                pieces = [text[i : i + 16] for i in range(0, len(text), 16)] or [""]
                first = {"role": "assistant", "content": ""}
                for i, p in enumerate([None] + pieces):
                    delta = first if p is None else {"content": p}
                    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                last = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }

    _add_batch_endpoints(app, state)
    return app


def _tool_call_answer(cid: str, created: int, model: str, calls: list[dict[str, Any]], usage: dict[str, int],
                      stream: bool):
    from fastapi.responses import StreamingResponse

    if not stream:
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                             "finish_reason": "tool_calls"}],
                "usage": usage}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                      **extra}) + "\n\n"

    async def gen():
        yield chunk({"role": "assistant", "content": None})
        for i, c in enumerate(calls):
            fn = c.get("function") or {}
            yield chunk({"tool_calls": [{"index": i, "id": c.get("id"), "type": c.get("type", "function"),
                                         "function": {"name": fn.get("name"), "arguments": ""}}]})
            args = fn.get("arguments") or ""
            for j in range(0, len(args), 8):
                yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 8]}}]})
        yield chunk({}, "tool_calls", usage=usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")
def _answer_body(state: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, body) of one non-streamed chat completion, as ``/v1/chat/completions`` answers it (no latency)."""
    model = str(body.get("model", ""))
    q = state["script"].get(model)
    step = q.popleft() if q else "ok"
    if step.startswith("slow:"):
        step = "ok"
    if step != "ok":
        code = int(step.split(":", 1)[0]) if step.split(":", 1)[0].isdigit() else 500
        return code, {"error": {"message": f"fake upstream: {step}", "type": "server_error", "code": code}}
    text = state["answers"].get(model, state["answers"].get("*", "#### 42"))
    msgs = body.get("messages") or []
    prompt_chars = sum(len(str(m.get("content", ""))) for m in msgs)
    usage = state["usage"] or {"prompt_tokens": max(1, prompt_chars // 4), "completion_tokens": max(1, len(text) // 4)}
    usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
    return 200, {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion", "created": int(time.time()),
                 "model": model, "usage": usage,
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """Fields of a multipart/form-data body (the stdlib's email parser; no python-multipart needed)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[name] = part.get_payload(decode=True) or b""
    return out


def _add_batch_endpoints(app, state: dict[str, Any]) -> None:
    """OpenAI's batch API: files upload, batch create / retrieve / list / cancel, file content."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    def not_found(what: str):
        return JSONResponse({"error": {"message": f"{what} not found", "type": "invalid_request_error"}}, status_code=404)

    def view(b: dict[str, Any]) -> dict[str, Any]:
        if b["status"] == "in_progress" and time.time() >= b["ready_at"] + state["batch_delay_s"]:
            _finish_batch(state, b)
        return {k: v for k, v in b.items() if k not in ("ready_at",)}

    @app.post("/v1/files")
    @app.post("/files")
    async def upload(req: Request):
        fields = _parse_multipart(req.headers.get("content-type", ""), await req.body())
        if "file" not in fields:
            return JSONResponse({"error": {"message": "no file", "type": "invalid_request_error"}}, status_code=400)
        fid = "file-" + uuid.uuid4().hex[:24]
        state["files"][fid] = fields["file"]
        return {"id": fid, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                "filename": "batch.jsonl", "purpose": (fields.get("purpose") or b"batch").decode()}

    @app.get("/v1/files/{fid}/content")
    @app.get("/files/{fid}/content")
    async def content(fid: str):
        if fid not in state["files"]:
            return not_found(f"file {fid}")
        return Response(state["files"][fid], media_type="application/octet-stream")

    @app.post("/v1/batches")
    @app.post("/batches")
    async def create(req: Request):
        body = await req.json()
        fid = body.get("input_file_id")
        if fid not in state["files"]:
            return not_found(f"input file {fid}")
        bid = "batch_" + uuid.uuid4().hex[:24]
        now = time.time()
        b = state["batches"][bid] = {
            "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": fid,
            "completion_window": body.get("completion_window", "24h"), "status": "in_progress",
            "output_file_id": None, "error_file_id": None, "created_at": int(now),
            "metadata": body.get("metadata") or {}, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "ready_at": now,  # + the current batch_delay_s (a test may shorten it while a job runs)
        }
        return view(b)

    @app.get("/v1/batches/{bid}")
    @app.get("/batches/{bid}")
    async def retrieve(bid: str):
        b = state["batches"].get(bid)
        return view(b) if b else not_found(f"batch {bid}")

    @app.get("/v1/batches")
    @app.get("/batches")
    async def list_batches(limit: int = 100):
        data = [view(b) for b in sorted(state["batches"].values(), key=lambda b: -b["created_at"])][:limit]
        return {"object": "list", "data": data, "has_more": False}

    @app.post("/v1/batches/{bid}/cancel")
    @app.post("/batches/{bid}/cancel")
    async def cancel(bid: str):
        b = state["batches"].get(bid)
        if not b:
            return not_found(f"batch {bid}")
        if b["status"] == "in_progress":
            b["status"] = "cancelled"
        return view(b)


def _finish_batch(state: dict[str, Any], b: dict[str, Any]) -> None:
    """Answer every line of a batch's input file; write its output (and error) file."""
    out, err = [], []
    for line in state["files"][b["input_file_id"]].decode("utf-8").splitlines():
        if not line.strip():
            continue
        req = json.loads(line)
        body = req.get("body") or {}
        state["by_model"][str(body.get("model", ""))] += 1
        status, resp = _answer_body(state, body)
        row = {"id": "batch_req_" + uuid.uuid4().hex[:16], "custom_id": req.get("custom_id"),
               "response": {"status_code": status, "request_id": uuid.uuid4().hex[:12], "body": resp}, "error": None}
        (out if status == 200 else err).append(json.dumps(row))
    b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
    if out:
        fid = "file-" + uuid.uuid4().hex[:24]
        state["files"][fid] = ("\n".join(out) + "\n").encode()
        b["output_file_id"] = fid
    if err:
        fid = "file-" + uuid.uuid4().hex[:24]
        state["files"][fid] = ("\n".join(err) + "\n").encode()
        b["error_file_id"] = fid
    b["status"] = "completed"
    b["completed_at"] = int(time.time())


def serve(port: int, host: str = "127.0.0.1") -> None:
    import uvicorn

    uvicorn.run(build_app(), host=host, port=port, log_level="warning", access_log=False, backlog=2048)


class FakeUpstream:
    """Start the fake provider in its own process; ``base_url`` ends in ``/v1``."""

    def __init__(self, port: int | None = None, **control: Any):
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._root = f"http://127.0.0.1:{self.port}"
        self._proc: mp.Process | None = None
        self._initial = control

    def start(self) -> "FakeUpstream":
        ctx = mp.get_context("spawn")
        self._proc = ctx.Process(target=serve, args=(self.port,), daemon=True)
        self._proc.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(self._root + "/_stats", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("fake upstream did not start")
        if self._initial:
            self.control(**self._initial)
        return self

    def control(self, **body: Any) -> None:
        httpx.post(self._root + "/_control", json=body, timeout=5.0).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self._root + "/_stats", timeout=5.0).json()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=9000)
    serve(ap.parse_args().port)
