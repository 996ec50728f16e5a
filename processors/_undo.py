"""An undo log for a processor's in-memory state, so that one message is applied whole or not at all.

A processor records every change it makes while applying a message in a :class:`Journal`; if the
message is refused anywhere (here or downstream), :meth:`Journal.rollback` undoes the changes newest
first and the state is exactly what it was before. Commit-time work (counters, histograms) waits in
:meth:`Journal.later` until the message is accepted.

:class:`Recency` is an ordered map (oldest first) for idle sweeps whose every change, moving an entry
to the end included, can be undone in place, which an ``OrderedDict`` cannot do.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()


class Journal:
    """The changes of one message, and what to do once it is accepted.

    An undo record is a tuple ``(fn, *args)``, undone by ``fn(*args)``, and a commit-time entry a pair
    ``(fn, args)``: a tuple costs less than a closure, and most messages are accepted, so the records
    are made far more often than they are run."""

    __slots__ = ("_kept", "_later", "_undo")

    def __init__(self) -> None:
        self._undo: list[tuple[Any, ...]] = []
        self._later: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._kept: builtins.set[int] | None = None

    def record(self, undo: Callable[..., None], *args: Any) -> None:
        """Undo a change with ``undo(*args)`` if the message is refused."""
        self._undo.append((undo, *args))

    def later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` when the message is accepted (:meth:`commit`); forgotten on rollback."""
        self._later.append((fn, args))

    def set(self, table: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        old = table.get(key, _MISSING)
        table[key] = value
        if old is _MISSING:
            self._undo.append((_discard, table, key))
        elif old is not value:
            self._undo.append((operator.setitem, table, key, old))

    def pop(self, table: MutableMapping[Any, Any], key: Any) -> Any:
        """Remove ``key`` if present (undo puts it back, at the end of the table's order)."""
        old = table.pop(key, _MISSING)
        if old is _MISSING:
            return None
        self._undo.append((operator.setitem, table, key, old))
        return old

    def keep(self, table: dict[Any, Any]) -> None:
        """Before changing a small table whose order matters: undo restores it whole, order included.

        Only the first call per table copies it (the table must outlive the journal, which it does:
        a journal lives for one message)."""
        kept = self._kept
        if kept is None:
            kept = self._kept = builtins.set()
        elif id(table) in kept:
            return
        kept.add(id(table))
        self._undo.append((_restore, table, dict(table)))

    def attr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        if old is value or (type(old) is type(value) and old == value):
            return
        setattr(obj, name, value)
        self._undo.append((setattr, obj, name, old))

    def stamp(self, obj: Any, last_seen: float, last_ts: int) -> None:
        """Set ``obj.last_seen`` and ``obj.last_ts`` (the most frequent change) with one undo."""
        seen, ts = obj.last_seen, obj.last_ts
        if seen == last_seen and ts == last_ts:
            return
        obj.last_seen = last_seen
        obj.last_ts = last_ts
        self._undo.append((_restamp, obj, seen, ts))

    def stamp_all(self, objs: Iterable[Any], last_seen: float, last_ts: int) -> None:
        """Set ``last_seen`` and ``last_ts`` of each of ``objs`` (distinct objects), with one undo for
        those that changed and none if none did."""
        old = []
        for obj in objs:
            seen, ts = obj.last_seen, obj.last_ts
            if seen != last_seen or ts != last_ts:
                old.append((obj, seen, ts))
                obj.last_seen = last_seen
                obj.last_ts = last_ts
        if old:
            self._undo.append((_restamp_all, old))

    def add(self, items: builtins.set[Any], item: Any) -> None:
        if item not in items:
            items.add(item)
            self._undo.append((builtins.set.discard, items, item))

    def append(self, items: list[Any], item: Any) -> None:
        items.append(item)
        self._undo.append((list.pop, items))

    def rollback(self) -> None:
        """Undo every recorded change, newest first."""
        undo, self._undo, self._later = self._undo, [], []
        self._kept = None
        for entry in reversed(undo):
            entry[0](*entry[1:])

    def commit(self) -> None:
        """The message was accepted: keep the changes, run what waited for it."""
        self._undo.clear()
        self._kept = None
        later = self._later
        if later:
            self._later = []
            for fn, args in later:
                fn(*args)


def _discard(table: MutableMapping[Any, Any], key: Any) -> None:
    table.pop(key, None)


def _restore(table: dict[Any, Any], saved: dict[Any, Any]) -> None:
    table.clear()
    table.update(saved)


def _restamp(obj: Any, last_seen: float, last_ts: int) -> None:
    obj.last_seen = last_seen
    obj.last_ts = last_ts


def _restamp_all(old: list[tuple[Any, float, int]]) -> None:
    for obj, seen, ts in old:
        obj.last_seen = seen
        obj.last_ts = ts


class Recency(Generic[K, V]):
    """A map ordered by last use (oldest first): a dict of keys to the nodes of a doubly linked list.

    A node is ``[prev, next, key, value]``. Moves and removals take a :class:`Journal` and undo in
    place: a removed or moved node remembers its neighbours, which are its neighbours again once the
    changes made after it were undone.
    """

    __slots__ = ("_nodes", "_root")

    def __init__(self) -> None:
        self._nodes: dict[K, list[Any]] = {}
        root: list[Any] = [None, None, None, None]
        root[0] = root[1] = root
        self._root = root

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def get(self, key: K) -> V | None:
        node = self._nodes.get(key)
        return None if node is None else node[3]

    def first(self) -> tuple[K, V] | None:
        node = self._root[1]
        return None if node is self._root else (node[2], node[3])

    def values(self) -> Iterator[V]:
        return (node[3] for node in self._walk())

    def __iter__(self) -> Iterator[K]:
        return self.keys()

    def keys(self) -> Iterator[K]:
        return (node[2] for node in self._walk())

    def _walk(self) -> Iterator[list[Any]]:
        """The nodes, oldest first; the current one may be removed while walking."""
        root = self._root
        node = root[1]
        while node is not root:
            nxt = node[1]
            yield node
            node = nxt

    def _append(self, node: list[Any]) -> None:
        root = self._root
        last = root[0]
        node[0], node[1] = last, root
        last[1] = node
        root[0] = node

    @staticmethod
    def _unlink(node: list[Any]) -> None:
        prev, nxt = node[0], node[1]
        prev[1] = nxt
        nxt[0] = prev

    @staticmethod
    def _relink(node: list[Any]) -> None:
        node[0][1] = node
        node[1][0] = node

    def set(self, key: K, value: V, journal: Journal) -> None:
        """Set ``key``: a new key goes to the end, a known one keeps its place."""
        known = self._nodes.get(key)
        if known is not None:
            journal.record(operator.setitem, known, 3, known[3])
            known[3] = value
            return
        node: list[Any] = [None, None, key, value]
        self._append(node)
        self._nodes[key] = node
        journal.record(_unappend, self._nodes, node)

    def move_to_end(self, key: K, journal: Journal) -> None:
        node = self._nodes[key]
        if self._root[0] is node:
            return
        journal.record(_unmove, node, node[0], node[1])
        self._to_end(node)

    def replace(self, key: K, value: V, journal: Journal) -> None:
        """Set a known ``key`` to ``value`` and move it to the end, with one undo for both."""
        node = self._nodes[key]
        journal.record(_unreplace, node, node[0], node[1], node[3])
        node[3] = value
        if self._root[0] is not node:
            self._to_end(node)

    def _to_end(self, node: list[Any]) -> None:
        """Move a linked node that is not the last to the end."""
        prev, nxt = node[0], node[1]
        prev[1] = nxt
        nxt[0] = prev
        root = self._root
        last = root[0]
        node[0], node[1] = last, root
        last[1] = node
        root[0] = node

    def pop(self, key: K, journal: Journal) -> V | None:
        node = self._nodes.pop(key, None)
        if node is None:
            return None
        self._unlink(node)  # the node keeps its neighbours: undo links it between them again
        journal.record(_repop, self._nodes, node)
        return node[3]

    def clear(self) -> None:
        self._nodes.clear()
        self._root[0] = self._root[1] = self._root


def _unappend(nodes: dict[Any, list[Any]], node: list[Any]) -> None:
    """Undo :meth:`Recency.set` of a new key."""
    Recency._unlink(node)
    del nodes[node[2]]


def _unmove(node: list[Any], prev: list[Any], nxt: list[Any]) -> None:
    """Undo :meth:`Recency.move_to_end`: back between its old neighbours (theirs again by then)."""
    Recency._unlink(node)
    node[0], node[1] = prev, nxt
    Recency._relink(node)


def _unreplace(node: list[Any], prev: list[Any], nxt: list[Any], value: Any) -> None:
    """Undo :meth:`Recency.replace`."""
    _unmove(node, prev, nxt)
    node[3] = value


def _repop(nodes: dict[Any, list[Any]], node: list[Any]) -> None:
    """Undo :meth:`Recency.pop`."""
    Recency._relink(node)
    nodes[node[2]] = node
