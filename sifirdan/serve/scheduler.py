"""The bridge between the HTTP handlers (asyncio) and the one running batch (a worker thread).

    scheduler = Scheduler(engine, max_batch=32, max_queue=128)
    scheduler.start(asyncio.get_running_loop())
    ticket = scheduler.submit([Row(ids, config), ...])      # QueueFull when max_queue requests wait already
    async for ev in ticket: ...                            # ChoiceEvent(index, text, finished, ...)
    ticket.cancel()                                        # the client left: its rows leave at the next step

One worker thread owns the ``ContinuousBatcher``: it takes new requests between steps, runs a step, and hands
the step's events to the event loop in one ``call_soon_threadsafe``. PyTorch releases the GIL inside its
kernels, so the handlers keep running while a step computes. The queue is bounded: a request waits (counted
in ``max_queue``) from ``submit`` until all its rows are in the batch; when ``max_queue`` requests wait,
``submit`` refuses at once (the server answers 429 with Retry-After) instead of growing without limit.

Fair shares. A request's rows (prompts x n) do not join the batch's queue all at once: the worker hands the
batch one row at a time, only while it has a free slot, and each free slot goes to the waiting request that
holds the fewest rows in the batch now (ties: the one that came first). So one request with n = 16 cannot make
the requests behind it wait until all 16 are done: a later request gets the next free slot, and rows of
requests that hold the batch together alternate.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from sifirdan.generate.continuous import ContinuousBatcher, Row

log = logging.getLogger("sifirdan.serve")


class QueueFull(Exception):
    pass


@dataclass
class ChoiceEvent:
    index: int  # which choice of the request
    text: str
    finished: bool = False
    finish_reason: str | None = None
    completion_tokens: int = 0  # so far
    error: str | None = None  # the worker failed: the request ends with a 500
    gone: bool = False  # the client left (Ticket.abandon): stop reading


class Ticket:
    """One request: its rows (choice i is rows[i]) and the events for it, read on the event loop."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.events: asyncio.Queue[ChoiceEvent] = asyncio.Queue()
        self.unadmitted = len(rows)  # touched by the worker thread only, as are the next two
        self.next_row = 0  # rows[:next_row] were handed to the batch
        self.held = 0  # of those, the rows still in the batch (queued in it or running)
        self.open = len(rows)  # choices not finished yet (event-loop side)
        self.abandoned = False
        for i, r in enumerate(rows):
            r.tag = (self, i)

    def cancel(self) -> None:
        for r in self.rows:
            r.cancel()

    def abandon(self) -> None:
        """The client left (call on the event loop): cancel the rows and wake the reader of the events."""
        self.cancel()
        if not self.abandoned:
            self.abandoned = True
            self.events.put_nowait(ChoiceEvent(-1, "", gone=True))


class Scheduler:
    # how often the worker re-decides its thread count when it shares the CPU: /proc/stat needs a while
    # between two looks to say anything, and a decode step is milliseconds
    SHARE_CPU_EVERY = 1.0  # seconds

    def __init__(self, engine, max_batch: int = 32, max_queue: int = 128, share_cpu: bool = False):
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batcher = ContinuousBatcher(engine, max_batch)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[Ticket] = []  # tickets with rows not yet handed to the batch, oldest first
        self.loop: asyncio.AbstractEventLoop | None = None
        self.steps = 0
        self.failures = 0
        import torch

        self.threads = torch.get_num_threads()  # the worker thread sets the creator's count (OpenMP's is per thread)
        self.share_cpu = share_cpu

    # ----------------------------------------------------------------------------------- event-loop side
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread = threading.Thread(target=self._run, name="sifirdan-batch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, rows: list[Row]) -> Ticket:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull
            self._waiting += 1
        ticket = Ticket(rows)
        self._inbox.put(ticket)
        return ticket

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self.batcher.running

    def stats(self) -> dict:
        return {"running": self.running, "queued": self.queued, "max_batch": self.max_batch,
                "max_queue": self.max_queue, "steps": self.steps}

    def _deliver(self, items: list[tuple[Ticket, ChoiceEvent]]) -> None:
        for ticket, ev in items:
            ticket.events.put_nowait(ev)

    # ----------------------------------------------------------------------------------- worker thread
    def _left_queue(self, rows) -> None:
        for r in rows:
            ticket = r.tag[0]
            ticket.unadmitted -= 1
            if ticket.unadmitted == 0:
                with self._lock:
                    self._waiting -= 1

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._pending.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _fill(self) -> None:
        """Hand rows to the batch while it has free slots: each to the waiting request holding the fewest."""
        free = self.max_batch - self.batcher.running - self.batcher.queued
        while free > 0 and self._pending:
            ticket = min(self._pending, key=lambda t: t.held)  # min keeps the first of equals: the oldest
            row = ticket.rows[ticket.next_row]
            ticket.next_row += 1
            if ticket.next_row == len(ticket.rows):
                self._pending.remove(ticket)
            if row.cancelled:  # the client left while it waited: it never joins
                self._left_queue([row])
                continue
            self.batcher.add(row)
            ticket.held += 1
            free -= 1

    def _release(self, rows) -> None:
        for r in rows:
            r.tag[0].held -= 1

    def _post(self, items) -> None:
        if items and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._deliver, items)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

    def _run(self) -> None:
        import time

        import torch

        torch.set_num_threads(self.threads)
        share, looked = None, time.monotonic()
        if self.share_cpu:
            from sifirdan.train.runtime import CpuShare

            share = CpuShare()  # made here: it sets the thread count of the thread that calls adjust()
            share = share if share.available else None
        while not self._stop.is_set():
            self._take_inbox(block=not self.batcher.busy and not self._pending)
            self._fill()
            if not self.batcher.busy:
                continue
            if share is not None and time.monotonic() - looked >= self.SHARE_CPU_EVERY:
                share.adjust()
                looked = time.monotonic()
            try:
                res = self.batcher.step()
            except Exception as e:  # a bug or out of memory: fail the requests in flight, keep serving
                log.exception("generation step failed")
                self.failures += 1
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                continue
            self.steps += 1
            self._left_queue(res.admitted)
            self._left_queue([r for r in res.dropped if r.pending is None])
            self._release(res.dropped)
            self._release([ev.row for ev in res.events if ev.finished])
            self._post([(ev.row.tag[0], ChoiceEvent(ev.row.tag[1], ev.text, ev.finished, ev.finish_reason,
                                                     ev.row.seq.completion_tokens))
                        for ev in res.events])
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        b = self.batcher
        rows = list(b.rows) + list(b._recrop) + list(b.waiting)
        for t in self._pending:
            rows += t.rows[t.next_row:]
        self._pending = []
        try:
            while True:
                item = self._inbox.get_nowait()
                if item is not None:
                    rows += item.rows
        except queue.Empty:
            pass
        self._left_queue([r for r in rows if r.pending is None])
        self.batcher = ContinuousBatcher(self.engine, self.max_batch)  # a fresh, empty batch
        self._post([(r.tag[0], ChoiceEvent(r.tag[1], "", True, None, 0, error=message)) for r in rows])
