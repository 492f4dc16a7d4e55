"""The embedded comparator: pair records from the in-process channel, labels from the API.

``consume`` and ``consume_labels`` only buffer; a flush task hands the buffer to the engine in
a worker thread (``asyncio.to_thread``) every ``flush_interval_s`` (or sooner when
``max_buffer`` records are waiting), commits it with the positions, and refreshes the verdicts.
The event loop never waits on SQLite or numpy for longer than it takes to swap a list.

Pending pairs and labels expire by the wall clock too: when no record has been committed for
``expire_interval_s``, the flush task asks the engine to expire what is due (``Engine.expire``),
so orphans are counted even when the stream goes quiet.

Positions in embedded mode are counts of records committed on partition 0 (pairs, labels):
after a crash, whoever feeds the comparator can resume from ``positions()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path

from shadowroute.comparator.assessor import Assessor, calls_recorded, needs_assessor
from shadowroute.comparator.engine import DeadLetter, Engine
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.statefile import check_state_file, record_fingerprint
from shadowroute.comparator.store import Positions, Store
from shadowroute.core.config import Config
from shadowroute.core.records import LabelRecord

__all__ = ["Comparator", "DeadLetters"]

log = logging.getLogger("shadowroute.comparator")


class DeadLetters:
    """Embedded dead-letter output: a count per reason and the latest records (bounded)."""

    def __init__(self, keep: int = 1000) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[DeadLetter] = deque(maxlen=keep)

    def __call__(self, items: Sequence[DeadLetter]) -> None:
        for item in items:
            self.counts[item[2]] += 1
            self.recent.append(item)


def _answer(waiters: list[tuple[int, int, asyncio.Future[list[str]]]], outcomes: list[str]) -> None:
    for start, end, fut in waiters:
        if not fut.done():
            fut.set_result(outcomes[start:end])


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Comparator:
    """Embedded comparator over one SQLite file (``config.comparator.state_path``)."""

    def __init__(
        self,
        config: Config,
        *,
        state_path: str | Path | None = None,
        clock: Callable[[], int] | None = wall_clock_ms,
        flush_interval_s: float = 0.2,
        expire_interval_s: float = 1.0,
        max_buffer: int = 20_000,
        dead_letters: Callable[[Sequence[DeadLetter]], None] | None = None,
    ) -> None:
        path = str(state_path or config.comparator.state_path)
        self.config = config
        self.dead_letters = DeadLetters()
        sink = dead_letters or self.dead_letters
        check_state_file(config, path)
        self.store = Store(path)
        self.engine = Engine(config, self.store, dead_letters=sink, clock=clock)
        self.view = StateView()
        self.view.update(self.engine.snapshot(), replace=True)
        self._history = Store(path)
        self.verdicts = Verdicts(config, self.view, self._history)
        self.reader = Reader(config, self.view, self.verdicts, self._history)
        self.flush_interval_s = flush_interval_s
        self.expire_interval_s = expire_interval_s
        self._expired_at = time.monotonic()
        """When expiry last ran (with a commit of records, or on its own)."""
        self.max_buffer = max_buffer
        self._pairs: list[tuple[bytes, bytes]] = []
        self._labels: list[LabelRecord] = []
        self._assessments: list[bytes] = []
        self.assessor: Assessor | None = None
        """Judge and embedding calls for routes that have them (``comparator.assessor``):
        it sees the pair records as they come and hands back assessment records."""
        if needs_assessor(config):
            self.assessor = Assessor(
                config, self.consume_assessments, spent=calls_recorded(self.engine.snapshot())
            )
            self.reader.assessor = self.assessor
        self._waiters: list[tuple[int, int, asyncio.Future[list[str]]]] = []
        """(start, end, future) of label batches whose sender waits for the commit."""
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.verdicts.refresh()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="comparator-flush")
            if self.assessor is not None:
                await self.assessor.start()

    async def close(self) -> None:
        """Flush what is buffered, then release the store."""
        if self._closed:
            return
        self._closed = True
        if self.assessor is not None:
            await self.assessor.close()  # its last assessments go with the final flush
        if self._task is not None:
            self._wake.set()
            await self._task
        await self.flush()
        self.store.close()
        self._history.close()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() - self._expired_at >= self.expire_interval_s:
                    await self.expire()
            except Exception:
                log.exception("comparator flush failed; the batch will be retried")

    async def expire(self) -> bool:
        """Expire what is due by the clock with no record to process (``Engine.expire``);
        True when something expired (the view and verdicts are then refreshed)."""
        async with self._flush_lock:
            self._expired_at = time.monotonic()
            return await asyncio.to_thread(self._expire)

    def _expire(self) -> bool:
        if not self.engine.expire(0):
            return False
        self.view.update(self.engine.snapshot())
        self.verdicts.refresh()
        return True

    async def reconfigure(self, config: Config) -> None:
        """Score the routes of a reloaded config (``Engine.reconfigure``): between two
        batches, so no record is processed under a mix of the two; the verdicts and the
        score API follow the new routes from the next read."""
        async with self._flush_lock:
            await asyncio.to_thread(self._reconfigure, config)

    def _reconfigure(self, config: Config) -> None:
        self.engine.reconfigure(config)
        record_fingerprint(self.store, config)
        self.config = self.verdicts.config = self.reader.config = config
        self.verdicts.refresh()

    # --- input ------------------------------------------------------------------------------

    async def consume(self, batch: Sequence[tuple[bytes, bytes]]) -> None:
        """Pair records (key, value) from the channel."""
        self._pairs.extend(batch)
        if self.assessor is not None:
            self.assessor.offer(batch)
        await self._maybe_flush()

    async def consume_assessments(self, records: Sequence[bytes]) -> None:
        """Assessment records from the assessor (committed with the next flush)."""
        self._assessments.extend(records)
        await self._maybe_flush()

    async def consume_labels(self, labels: Sequence[LabelRecord]) -> None:
        self._labels.extend(labels)
        await self._maybe_flush()

    async def commit_labels(self, labels: Sequence[LabelRecord]) -> list[str]:
        """Buffer labels and return once they are committed (with the next flush, which
        this wakes): what became of each, in order (``Engine.label_outcomes``, with
        ``waiting`` for an accepted label that matched no request seen so far). Raises if
        the commit failed; the labels are then not kept."""
        if not labels:
            return []
        start = len(self._labels)
        self._labels.extend(labels)
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiters.append((start, len(self._labels), done))
        self._wake.set()
        return await asyncio.shield(done)

    async def _maybe_flush(self) -> None:
        if len(self._pairs) + len(self._labels) + len(self._assessments) >= self.max_buffer:
            await self.flush()  # back-pressure: the producer waits for the commit

    async def flush(self) -> None:
        """Process and commit everything buffered so far."""
        async with self._flush_lock:
            pairs, labels, waiters = self._pairs, self._labels, self._waiters
            assessed = self._assessments
            if not pairs and not labels and not assessed:
                return
            self._pairs, self._labels, self._waiters = [], [], []
            self._assessments = []
            work = asyncio.ensure_future(asyncio.to_thread(self._commit, pairs, labels, assessed))
            try:
                # The worker thread cannot be interrupted: even when the caller is cancelled,
                # the store stays locked until the commit (or rollback) has finished.
                outcomes = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    outcomes = await work
                    _answer(waiters, outcomes)
                raise
            except Exception as exc:
                # Labels whose sender waits are answered with the failure (it resends them);
                # the others are kept for the next flush.
                kept = labels
                if waiters:
                    taken = {i for a, b, _ in waiters for i in range(a, b)}
                    kept = [lab for i, lab in enumerate(labels) if i not in taken]
                    for _, _, fut in waiters:
                        if not fut.done():
                            fut.set_exception(RuntimeError(f"labels not committed: {exc!r}"))
                self._pairs[:0] = pairs
                self._labels[:0] = kept
                self._assessments[:0] = assessed
                for n, (a, b, fut) in enumerate(self._waiters):
                    self._waiters[n] = (a + len(kept), b + len(kept), fut)
                raise
            finally:
                self._offer_embedding()
            _answer(waiters, outcomes)

    def _offer_embedding(self) -> None:
        """Texts the committed batches selected for embedding drift's endpoints, to the
        assessor."""
        jobs = self.engine.take_embed_jobs()
        if jobs and self.assessor is not None:
            self.assessor.offer_embedding(jobs)

    def _commit(
        self,
        pairs: list[tuple[bytes, bytes]],
        labels: list[LabelRecord],
        assessments: Sequence[bytes] = (),
    ) -> list[str]:
        self._expired_at = time.monotonic()  # the batch expires what is due
        self.engine.process(0, pairs, labels, assessments=assessments)
        outcomes = list(self.engine.label_outcomes)
        for i in self.engine.labels_kept_waiting:
            if outcomes[i] == "accepted":
                outcomes[i] = "waiting"  # kept, but matched no request seen so far
        self.view.update(self.engine.snapshot())
        gone = self.engine.take_evicted()
        if gone:
            self.view.remove(gone)
        self.verdicts.refresh()
        return outcomes

    # --- reading ----------------------------------------------------------------------------

    def positions(self) -> Positions:
        """Records committed so far (pairs, labels) and the watermarks."""
        p = self.engine.position(0)
        return Positions(p.pairs, p.labels, p.pairs_wm, p.labels_wm, p.assessments)

    def pending(self) -> int:
        """Pair instances waiting for a label (on disk)."""
        return self._history.pending_count() if not self._closed else 0
