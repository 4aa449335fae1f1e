"""Micro-batching of router decisions: concurrent requests share one forward pass of the router."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..pool import ModelSpec
from ..router import BaseRouter, Decision

log = logging.getLogger("xrouter_lite.serve")


class QueueFullError(RuntimeError):
    pass


@dataclass
class _Pending:
    query: str
    offered: list[ModelSpec]
    tau: float | None
    future: asyncio.Future
    t0: float


class DecisionBatcher:
    """Gathers concurrent routing requests and decides them with one ``route_batch`` call per cost knob.

    ``decide`` puts the request on a bounded queue (``QueueFullError`` when full) and awaits the decision. One
    worker task takes the first waiting request, then everything that arrives within ``window_s`` (at most
    ``max_batch``), and runs ``router.route_batch`` in a dedicated single thread (one model, one forward pass at a
    time), so the event loop stays free while the model works. A router exception fails that batch's requests
    (their callers fall back to the default model).

    A router whose decisions cost microseconds (a rule, a constant) may set the attribute ``inline_ok = True``:
    it is then called on the event loop with no batch window, which saves the thread hand-off (~0.1-1 ms and
    GIL contention) and the wait."""

    def __init__(self, router: BaseRouter, max_batch: int = 16, window_s: float = 0.002, max_queue: int = 256):
        self.router = router
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrouter-router")
        self.inline = bool(getattr(router, "inline_ok", False))
        if self.inline:
            self.window_s = 0.0  # nothing to gain from batching a rule
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.decisions = 0
        self.max_seen_batch = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="xrouter-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RuntimeError("server shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self, offered: list[ModelSpec]) -> None:
        """Throw-away decisions before serving (``Router.warm_up``: the first forward pass is the slowest, and a
        GPU router compiles its batched kernels on its first batches), so that no request pays for them. A failure
        is logged, not fatal."""
        if self.inline:
            return
        t0 = time.perf_counter()
        try:
            # a duck-typed router (route_batch only) gets the interface's default: one decision
            warm = getattr(self.router, "warm_up", None) or functools.partial(BaseRouter.warm_up, self.router)
            await asyncio.get_running_loop().run_in_executor(self._executor, warm, list(offered))
            log.info("router warm-up took %.2f s", time.perf_counter() - t0)
        except Exception as e:
            log.warning("router warm-up failed (%s); requests will fall back if it keeps failing", type(e).__name__)

    async def decide(self, query: str, offered: list[ModelSpec], tau: float | None) -> Decision:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        try:
            self._queue.put_nowait(_Pending(query, offered, tau, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFullError("the router queue is full") from None
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # callers that timed out are skipped
            groups: dict[float | None, list[_Pending]] = {}
            for p in live:
                groups.setdefault(p.tau, []).append(p)
            for tau, items in groups.items():
                try:
                    args = ([p.query for p in items], [p.offered for p in items], tau)
                    if self.inline:
                        decisions = self.router.route_batch(*args)
                    else:
                        decisions = await loop.run_in_executor(self._executor, self.router.route_batch, *args)
                    if len(decisions) != len(items):
                        raise RuntimeError(f"route_batch returned {len(decisions)} decisions for {len(items)} queries")
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the callers fall back to the default model
                    for p in items:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                self.batches += 1
                self.decisions += len(items)
                self.max_seen_batch = max(self.max_seen_batch, len(items))
                for p, d in zip(items, decisions):
                    if not p.future.done():
                        p.future.set_result(d)


