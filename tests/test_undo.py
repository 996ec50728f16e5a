"""The undo journal: :meth:`Journal.stamp_all` stamps many objects with one undo, and only real changes."""

from __future__ import annotations

from webrtc_observer.processors._undo import Journal


class _Stamped:
    def __init__(self, last_seen: float, last_ts: int) -> None:
        self.last_seen = last_seen
        self.last_ts = last_ts


def test_stamp_all_is_undone_whole() -> None:
    a, b, same = _Stamped(1.0, 10), _Stamped(2.0, 20), _Stamped(5.0, 50)
    j = Journal()
    j.stamp_all([a, b, same], 5.0, 50)
    assert [(o.last_seen, o.last_ts) for o in (a, b, same)] == [(5.0, 50)] * 3
    j.rollback()
    assert [(o.last_seen, o.last_ts) for o in (a, b, same)] == [(1.0, 10), (2.0, 20), (5.0, 50)]


def test_stamp_all_records_nothing_when_nothing_changes() -> None:
    j = Journal()
    j.stamp_all([_Stamped(5.0, 50)], 5.0, 50)
    j.stamp_all([], 5.0, 50)
    assert j._undo == []


def test_stamp_all_undoes_in_order_with_other_changes() -> None:
    obj = _Stamped(1.0, 10)
    table: dict[str, int] = {}
    j = Journal()
    j.stamp(obj, 2.0, 20)
    j.set(table, "k", 1)
    j.stamp_all([obj], 3.0, 30)
    j.rollback()
    assert (obj.last_seen, obj.last_ts) == (1.0, 10)
    assert table == {}
