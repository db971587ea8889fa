"""Dynamic batching: requests that arrive close together share one forward pass.

One worker task takes the oldest request, waits until ``max_batch`` images are queued or
``max_wait_ms`` has passed since that request arrived, runs the model on them in a thread (the
event loop keeps accepting meanwhile) and hands each request its own rows of the output. Under
load the worker is busy while requests queue, so the next batch fills without waiting: throughput
grows with concurrency. The wait is only for requests known to be on their way (inside
:meth:`Batcher.arriving`: body being read, images decoded): a request alone runs at once instead of
paying ``max_wait_ms`` for company that is not coming. The queue is bounded in images: a full queue refuses at once
(:class:`QueueFull`, answered 503 with Retry-After) rather than letting latency grow without bound.
:meth:`Batcher.close` stops accepting, finishes everything already queued, then ends the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InputError


class QueueFull(Exception):
    """The queue holds ``queue_size`` images already; try again later."""


class Closed(Exception):
    """The batcher is shutting down (or was never started) and takes no new work."""


@dataclass(eq=False)  # identity: `job in queue` must not compare tensors
class _Job:
    x: torch.Tensor  # (n, C, H, W): one request's images, kept together
    future: asyncio.Future
    arrived: float


class Batcher:
    """Feeds ``fn`` (a batch ``(N, ...) -> (N, ...)``, run in a worker thread) from a bounded queue.

    ``batching=False`` runs each request alone, as a server without batching would (the
    benchmark's baseline). ``batch_sizes`` keeps the images per forward pass, newest last;
    ``on_batch(images, seconds)``, if given, is told of each forward pass as it ends (from the
    worker thread: the ``/metrics`` histograms, issue 17).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, queue_size: int = 256, batching: bool = True, history: int = 4096,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise InputError(f"need max_batch >= 1, queue_size >= 1, max_wait_ms >= 0; got {max_batch}, "
                             f"{queue_size}, {max_wait_ms}")
        self.fn, self.max_batch, self.queue_size, self.batching = fn, max_batch, queue_size, batching
        self.on_batch = on_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batch_sizes: deque[int] = deque(maxlen=history)
        self._pending: deque[_Job] = deque()
        self._queued = 0  # images in _pending
        self._incoming = 0  # requests inside arriving(), not yet submitted
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._work(), name="resnets-batcher")

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's reading and decoding, before :meth:`submit`: the worker may wait
        (up to ``max_wait_ms``) for it to join the batch being gathered."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            # Wake the worker to look again: the request is submitted now (nothing awaits between
            # here and submit's enqueue), or it failed and nobody is coming.
            self._arrived.set()

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for the images ``x`` (n, ...). Cancelling the caller (a timeout, a
        client gone) takes the request out of the queue if it has not run yet."""
        if not self._accepting:
            raise Closed("the server is shutting down")
        n = len(x)
        if self._queued + n > self.queue_size:
            raise QueueFull(f"{self._queued} images queued; the queue holds {self.queue_size} (--queue-size)")
        loop = asyncio.get_running_loop()
        job = _Job(x, loop.create_future(), loop.time())
        self._pending.append(job)
        self._queued += n
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._pending:
                self._pending.remove(job)
                self._queued -= n
            raise

    async def close(self) -> None:
        """Refuse new work, finish what is queued or running, then stop the worker."""
        self._accepting = False
        self._arrived.set()
        if self._task is not None:
            await self._task

    async def _work(self) -> None:
        while True:
            jobs = await self._collect()
            if jobs is None:
                return
            jobs = [j for j in jobs if not j.future.done()]  # their callers gave up
            if not jobs:
                continue
            x = torch.cat([j.x for j in jobs]) if len(jobs) > 1 else jobs[0].x
            try:
                out = await asyncio.to_thread(self._run, x)
            except Exception as exc:  # the callers answer it; the worker carries on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(out[start:start + len(j.x)])
                start += len(j.x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # A single request may hold more than max_batch images; the model never sees more at once.
        outs = []
        for chunk in x.split(self.max_batch):
            start = time.perf_counter()
            outs.append(self.fn(chunk))
            self.batch_sizes.append(len(chunk))
            if self.on_batch is not None:
                self.on_batch(len(chunk), time.perf_counter() - start)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    async def _collect(self) -> list[_Job] | None:
        """The next jobs to run together; ``None`` once closed with nothing left."""
        while not self._pending:
            if not self._accepting:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        if self.batching:
            # Counted from the oldest request's arrival: a request that already waited while the
            # previous batch ran does not wait again.
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._queued < self.max_batch and self._accepting and self._incoming:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
        limit = self.max_batch if self.batching else 1
        jobs, n = [], 0
        while self._pending and (not jobs or n + len(self._pending[0].x) <= limit):
            job = self._pending.popleft()
            jobs.append(job)
            n += len(job.x)
        self._queued -= n
        return jobs
