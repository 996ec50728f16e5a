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
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()


class Journal:
    """The changes of one message, and what to do once it is accepted."""

    __slots__ = ("_kept", "_later", "_undo")

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._later: list[Callable[[], None]] = []
        self._kept: builtins.set[int] = builtins.set()

    def record(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def later(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the message is accepted (:meth:`commit`); forgotten on rollback."""
        self._later.append(fn)

    def set(self, table: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        old = table.get(key, _MISSING)
        table[key] = value
        if old is _MISSING:
            self._undo.append(lambda: table.pop(key, None))
        elif old is not value:
            self._undo.append(lambda: table.__setitem__(key, old))

    def pop(self, table: MutableMapping[Any, Any], key: Any) -> Any:
        """Remove ``key`` if present (undo puts it back, at the end of the table's order)."""
        old = table.pop(key, _MISSING)
        if old is _MISSING:
            return None
        self._undo.append(lambda: table.__setitem__(key, old))
        return old

    def keep(self, table: dict[Any, Any]) -> None:
        """Before changing a small table whose order matters: undo restores it whole, order included.

        Only the first call per table copies it (the table must outlive the journal, which it does:
        a journal lives for one message)."""
        if id(table) in self._kept:
            return
        self._kept.add(id(table))
        saved = dict(table)

        def restore() -> None:
            table.clear()
            table.update(saved)

        self._undo.append(restore)

    def attr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)
        if old is value or (type(old) is type(value) and old == value):
            return
        setattr(obj, name, value)
        self._undo.append(lambda: setattr(obj, name, old))

    def stamp(self, obj: Any, last_seen: float, last_ts: int) -> None:
        """Set ``obj.last_seen`` and ``obj.last_ts`` (the most frequent change) with one undo."""
        self.stamp_all((obj,), last_seen, last_ts)

    def stamp_all(self, objs: Iterable[Any], last_seen: float, last_ts: int) -> None:
        """Set ``last_seen`` and ``last_ts`` of each of ``objs`` (distinct objects), with one undo for
        those that changed and none if none did."""
        old = [(obj, obj.last_seen, obj.last_ts) for obj in objs if obj.last_seen != last_seen or obj.last_ts != last_ts]
        if not old:
            return
        for obj, _, _ in old:
            obj.last_seen = last_seen
            obj.last_ts = last_ts

        def undo() -> None:
            for obj, seen, ts in old:
                obj.last_seen = seen
                obj.last_ts = ts

        self._undo.append(undo)

    def add(self, items: builtins.set[Any], item: Any) -> None:
        if item not in items:
            items.add(item)
            self._undo.append(lambda: items.discard(item))

    def append(self, items: list[Any], item: Any) -> None:
        items.append(item)
        self._undo.append(items.pop)

    def rollback(self) -> None:
        """Undo every recorded change, newest first."""
        undo, self._undo, self._later = self._undo, [], []
        self._kept.clear()
        for fn in reversed(undo):
            fn()

    def commit(self) -> None:
        """The message was accepted: keep the changes, run what waited for it."""
        later, self._later, self._undo = self._later, [], []
        self._kept.clear()
        for fn in later:
            fn()


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
            old = known[3]
            known[3] = value
            journal.record(lambda: known.__setitem__(3, old))
            return
        node: list[Any] = [None, None, key, value]
        self._append(node)
        self._nodes[key] = node

        def undo() -> None:
            self._unlink(node)
            del self._nodes[key]

        journal.record(undo)

    def move_to_end(self, key: K, journal: Journal) -> None:
        node = self._nodes[key]
        if self._root[0] is node:
            return
        prev, nxt = node[0], node[1]
        self._unlink(node)
        self._append(node)

        def undo() -> None:
            self._unlink(node)
            node[0], node[1] = prev, nxt
            self._relink(node)

        journal.record(undo)

    def pop(self, key: K, journal: Journal) -> V | None:
        node = self._nodes.pop(key, None)
        if node is None:
            return None
        self._unlink(node)  # the node keeps its neighbours: undo links it between them again

        def undo() -> None:
            self._relink(node)
            self._nodes[key] = node

        journal.record(undo)
        return node[3]

    def clear(self) -> None:
        self._nodes.clear()
        self._root[0] = self._root[1] = self._root
