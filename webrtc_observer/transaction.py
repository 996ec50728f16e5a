"""All or nothing for one accepted message: every stage applies it, or none keeps a trace of it.

A receiver hands a message to its pipelines inside :func:`run`. While the message travels down,
stages do not change anything for good:

- a processor that changes its state registers how to undo the change (:meth:`Transaction.on_abort`);
- an exporter reserves room for the records in its queue and registers the enqueue
  (:meth:`Transaction.on_commit`), or refuses with :class:`~webrtc_observer.component.RetryLater`;
- an exporter that only updates in-memory views defers the update with :func:`after_commit`.

When the whole graph took the message, the commits run (an exporter with a persistent queue makes
the records durable there) and the receiver answers 202. When any stage raised, the undo callbacks
run in reverse order and the reservations are released: a retry of the message yields exactly what
a first, accepted attempt would have.

The walk from :func:`run` to the last reservation must not suspend (no ``await`` that really waits):
then no other message can interleave with a half-applied one, and undo is exact. Stages that have to
wait (a peer worker, a network send) do so outside a transaction or in a commit callback.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from webrtc_observer.model import Batch

Undo = Callable[[], None]
Commit = Callable[[], "Awaitable[None] | None"]

_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("webrtc_observer_transaction", default=None)


class Transaction:
    """The undo and commit callbacks registered for one message."""

    __slots__ = ("_commits", "_undo", "done")

    def __init__(self) -> None:
        self._undo: list[Undo] = []
        self._commits: list[Commit] = []
        self.done = False

    def on_abort(self, undo: Undo) -> None:
        """Run ``undo`` if the message is refused anywhere; callbacks run last-registered first."""
        self._undo.append(undo)

    def on_commit(self, commit: Commit) -> None:
        """Run ``commit`` (a function or coroutine function) once every stage took the message."""
        self._commits.append(commit)

    def abort(self) -> None:
        """Undo every registered change, newest first. An undo that raises is a bug; the rest still run."""
        undo, self._undo, self._commits = self._undo, [], []
        self.done = True
        errors: list[BaseException] = []
        for fn in reversed(undo):
            try:
                fn()
            except Exception as exc:  # keep undoing: a half-undone state is worse
                errors.append(exc)
        if errors:
            raise errors[0]

    async def commit(self) -> None:
        """Run the commit callbacks in registration order. A commit that raises stops the rest."""
        commits, self._commits, self._undo = self._commits, [], []
        self.done = True
        for fn in commits:
            result = fn()
            if result is not None and inspect.isawaitable(result):  # most return None: no ABC check
                await result


def current() -> Transaction | None:
    """The transaction of the message being handled, or None outside one (timers, sweeps, tests)."""
    return _current.get()


def on_abort(undo: Undo) -> None:
    """Register ``undo`` with the current transaction; outside one a change is final, so nothing to do."""
    txn = _current.get()
    if txn is not None:
        txn.on_abort(undo)


async def after_commit(fn: Callable[[], Any]) -> None:
    """Run ``fn`` when the current transaction commits, or now when there is none."""
    txn = _current.get()
    if txn is None:
        result = fn()
        if inspect.isawaitable(result):
            await result
    else:
        txn.on_commit(fn)


async def run(consumer: Any, batch: Batch) -> None:
    """Hand ``batch`` to ``consumer`` as one transaction: commit if it was taken, undo if it raised.

    Nested calls (a transaction already open) join the open one.
    """
    if _current.get() is not None:
        await consumer.consume(batch)
        return
    txn = Transaction()
    token = _current.set(txn)
    try:
        try:
            await consumer.consume(batch)
        except BaseException:
            txn.abort()
            raise
    finally:
        _current.reset(token)
    await txn.commit()


class Transactional:
    """A consumer whose every ``consume`` is one transaction (what a receiver's entry point is)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def consume(self, batch: Batch) -> None:
        await run(self._inner, batch)
