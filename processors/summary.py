"""Processor ``summary``: one ``CALL_SUMMARY`` report per ended call, and per-call quality metrics.

While a call is in progress it accumulates, per client of the call:

* from :attr:`Batch.quality <webrtc_observer.model.Batch>` (the ``quality`` processor's numbers, the
  same as the ``observertc_quality_*`` histograms): the MOS of received tracks (mean and minimum,
  audio and video alike), the loss of received packets (``Σlost / Σexpected``, where an interval with
  fraction lost ``f`` and ``n`` packets received expected ``n / (1 − f)``; an interval that lost
  everything counts as lost the client's mean expected packets per interval), the round-trip time
  of every track (mean, and the 95th percentile from a fixed histogram of :data:`RTT_BOUNDS_MS`,
  interpolated within its bucket), the jitter of received tracks (mean), and the payload bytes sent
  and received per media kind;
* from the client samples: whether a selected (else nominated and succeeded) ICE candidate pair has
  a ``relay`` local candidate, i.e. TURN was used. Local candidates are usually sent once, so the
  relay candidate ids a client announced are remembered (a few per client);
* from the ``CALL_EVENT`` reports of the ``correlation`` processor: time in the call (``CLIENT_JOINED``
  → ``CLIENT_LEFT``, summed over rejoins; a client still in the call at its end counts until
  ``CALL_ENDED``), how many clients were in it at once (peak) and in all (total), and the duration
  (``CALL_STARTED`` → ``CALL_ENDED``). Every time is a sample timestamp as those events carry it;
* from the ``OBSERVER_EVENT`` ``CLIENT_ISSUE`` reports of the ``issues`` processor: the issues raised
  per client, by type, and the worst severity (``CLIENT_ISSUE_RESOLVED`` is not counted). They are
  read before the lifecycle events of their batch, so an issue raised in the batch that ends its
  call, wherever it sits in the batch, is in the summary.

When a batch carries a call's ``CALL_ENDED``, the processor puts one ``OBSERVER_EVENT`` report right
after it: ``name`` ``CALL_SUMMARY``, ``callId``, ``roomId``, ``serviceId`` and ``mediaUnitId`` of the
call, ``timestamp`` that of ``CALL_ENDED``, and ``attachments`` a JSON object::

    {"durationSeconds", "peakParticipants", "totalParticipants",
     "clients": [{"clientId", "userId", "secondsInCall", "mos": {"mean", "min"}, "lossPercent",
                  "rtt": {"meanMs", "p95Ms"}, "jitterMs",
                  "bytes": {"audio": {"sent", "received"}, "video": {"sent", "received"}},
                  "turnUsed", "issues": {type: count}, "worstSeverity"}]}

A value that was never measured is ``null``; ``untrackedClients`` is added when ``max_clients_per_call``
left clients out. Then the call is forgotten. At commit it observes the histogram ``call_mos`` (the
mean MOS of every track received in the call, label ``service_id``; calls without a measured MOS give
none) and counts the call in ``calls_with_issues`` (``service_id``) if an issue above ``info`` was
raised in it.

Data of a call that arrives before its ``CALL_STARTED`` or ``CLIENT_JOINED`` (the same batch carries
them after the quality) starts the call or the client at that sample's timestamp; the event then
sets the real start. Data for a call without a call id (not correlated) is ignored.

A message is applied whole or not at all: a call the message changes is copied before its first
change (its clients likewise), and the copy replaces it in the table with an undo record
(:mod:`._undo`); a message refused here or downstream puts the originals back, so a retry yields the
same summary a first, accepted attempt would have. Metrics wait for the commit.

State is kept per input partition (:mod:`webrtc_observer.state`) with one entry per call, keyed by
the msgpack of ``("call", service_id, call_id)``, and one for the partition's stream time,
``("clock", "", "")``; an ended or forgotten call gives a tombstone. Time is stream time (the highest
``Batch.time`` or sample receive time seen in the partition); :data:`~webrtc_observer.state.LOCAL`
input (HTTP, WebSocket) also follows the wall clock. State is bounded:

* at most ``max_calls`` calls, all partitions together; a call that starts while the table is full
  is not followed (counted in ``summary_dropped{reason="max_calls"}``) and gets no summary, or one
  from its data after room was made. Calls in progress are never evicted;
* at most ``max_clients_per_call`` clients per call; the others are counted in the call's total
  and peak, and in ``summary_dropped{reason="max_clients"}``, but have no entry of their own;
* a call without any data for ``call_idle_timeout`` (its ``CALL_ENDED`` was lost: a correlation
  processor restarted without its state) is forgotten without a summary, counted in
  ``summary_dropped{reason="idle"}``. Checked on each batch of its partition, oldest first.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import orjson

from webrtc_observer import state, transaction
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.config import Duration
from webrtc_observer.model import Batch, ClientSample, Report, Stats, TrackQuality
from webrtc_observer.state import LOCAL, Changes, Partition

from ._report_schemas import SCHEMA_VERSION, build
from ._undo import Journal, Recency

MOS_BUCKETS = (1.5, 2.0, 2.58, 3.1, 3.6, 4.03, 4.2, 4.34, 4.4, 4.5)
"""As ``quality_mos``: the MOS of ITU-T G.109's user-satisfaction categories, then the ceiling."""
RTT_BOUNDS_MS = (
    5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 750,
    1000, 1500, 2000, 3000, 5000, 10000, 60000,
)  # fmt: skip
"""Upper bounds (ms) of the round-trip-time histogram kept per client for the 95th percentile."""
_RTT_BOUNDS = tuple(float(bound) for bound in RTT_BOUNDS_MS)
"""The same bounds as floats, for the bucket search: ``bisect`` compares an RTT with them faster."""
_MAX_COUNT = 2**32 - 1
"""Where a bucket's count stops (decades of samples)."""
_MAX_BYTES = 2**63 - 1
"""Where a client's byte count stops (a client may claim any counter: its 64-bit slot never overflows)."""
SEVERITIES = ("info", "minor", "major", "critical")
"""Issue severities, least severe first."""
MAX_RELAY_CANDIDATES = 8
"""Relay local candidate ids remembered per client (to tell TURN use from a later candidate pair)."""


@dataclass
class SummaryConfig:
    NEEDS_UPSTREAM: ClassVar[tuple[str, ...]] = ("correlation", "quality")

    max_calls: int = 100_000
    """Calls accumulated at once, all partitions together; a call started past it gets no summary."""
    max_clients_per_call: int = 1000
    """Clients with their own entry per call; the others count in the participants only."""
    call_idle_timeout: Duration = Duration(3600)
    """A call without data for this long is forgotten without a summary (its end was never seen)."""

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        for name in ("max_calls", "max_clients_per_call"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                issues.append((name, "must be a whole number, at least 1"))
        if self.call_idle_timeout <= 0:
            issues.append(("call_idle_timeout", "must be longer than 0"))
        return issues


# -- state -----------------------------------------------------------------------------------------


class _Client:
    """What is accumulated for one client of a call."""

    __slots__ = (
        "bytes",
        "expected",
        "in_call_ms",
        "intervals",
        "issues",
        "jitter_n",
        "jitter_sum",
        "joined_at",
        "lazy",
        "lost",
        "mos_min",
        "mos_n",
        "mos_sum",
        "present",
        "relay_ids",
        "rtt_hist",
        "rtt_max",
        "rtt_n",
        "rtt_sum",
        "turn",
        "used_locals",
        "user_id",
        "worst",
    )

    def __init__(self, user_id: str | None = None) -> None:
        self.user_id = user_id
        self.present = False
        """In the call now (joined, not left)."""
        self.lazy = False
        """Present since data came before its CLIENT_JOINED: the event sets ``joined_at`` again."""
        self.joined_at = 0
        self.in_call_ms = 0
        self.mos_sum = 0.0
        self.mos_n = 0
        self.mos_min = math.inf
        self.lost = 0.0
        self.expected = 0.0
        self.intervals = 0
        """Intervals whose expected packets are in ``expected`` (for an interval that lost them all)."""
        self.rtt_sum = 0.0
        self.rtt_n = 0
        self.rtt_max = 0.0
        self.rtt_hist = array("I", [0]) * (len(RTT_BOUNDS_MS) + 1)
        """RTTs per bucket of :data:`RTT_BOUNDS_MS` (the last: above it), 32-bit counts (200 bytes; a list took 296)."""
        self.jitter_sum = 0.0
        self.jitter_n = 0
        self.bytes = array("q", bytes(32))
        """audio sent, audio received, video sent, video received (64-bit, stopping at their maximum)."""
        self.turn = False
        self.relay_ids: tuple[str, ...] = ()
        """Ids of the client's relay local candidates (a few, newest last)."""
        self.used_locals: tuple[str, ...] = ()
        """Local candidate ids of used pairs whose type was not known yet (a few, newest last). Both are
        tuples: most clients have none (the empty tuple is shared), and a copy of the client shares them."""
        self.issues: dict[str, int] = {}
        self.worst = -1
        """Index in :data:`SEVERITIES` of the worst issue, -1 for none."""

    def clone(self) -> _Client:
        c = _Client.__new__(_Client)
        c.user_id = self.user_id
        c.present = self.present
        c.lazy = self.lazy
        c.joined_at = self.joined_at
        c.in_call_ms = self.in_call_ms
        c.mos_sum = self.mos_sum
        c.mos_n = self.mos_n
        c.mos_min = self.mos_min
        c.lost = self.lost
        c.expected = self.expected
        c.intervals = self.intervals
        c.rtt_sum = self.rtt_sum
        c.rtt_n = self.rtt_n
        c.rtt_max = self.rtt_max
        c.rtt_hist = self.rtt_hist[:]
        c.jitter_sum = self.jitter_sum
        c.jitter_n = self.jitter_n
        c.bytes = self.bytes[:]
        c.turn = self.turn
        c.relay_ids = self.relay_ids
        c.used_locals = self.used_locals
        c.issues = self.issues.copy()
        c.worst = self.worst
        return c


class _Call:
    __slots__ = (
        "call_id",
        "clients",
        "current",
        "media_unit_id",
        "peak",
        "room_id",
        "seen",
        "service_id",
        "started",
        "started_lazy",
        "untracked",
        "untracked_present",
    )

    def __init__(self, service_id: str, call_id: str, started: int, seen: int) -> None:
        self.service_id = service_id
        self.call_id = call_id
        self.room_id: str | None = None
        self.media_unit_id: str | None = None
        self.started = started
        self.started_lazy = True
        """``started`` is the first data's timestamp, not CALL_STARTED's."""
        self.seen = seen
        """Stream time (ms) of the last change, for ``call_idle_timeout``."""
        self.clients: dict[str, _Client] = {}
        self.current = 0
        """Clients in the call now, with an entry or not."""
        self.peak = 0
        self.untracked = 0
        """Clients left out by ``max_clients_per_call`` (joins counted)."""
        self.untracked_present = 0

    def clone(self) -> _Call:
        """A copy to change for one message; the clients are the same objects (copied when changed)."""
        c = _Call.__new__(_Call)
        c.service_id = self.service_id
        c.call_id = self.call_id
        c.room_id = self.room_id
        c.media_unit_id = self.media_unit_id
        c.started = self.started
        c.started_lazy = self.started_lazy
        c.seen = self.seen
        c.clients = self.clients.copy()
        c.current = self.current
        c.peak = self.peak
        c.untracked = self.untracked
        c.untracked_present = self.untracked_present
        return c


CallKey = tuple[str, str]


class _Part:
    """The calls of one partition."""

    __slots__ = ("calls", "clock", "clock_saved", "dirty", "journaled")

    def __init__(self) -> None:
        self.calls: Recency[CallKey, _Call] = Recency()
        """(service id, call id) → its accumulations, least recently changed first."""
        self.clock = 0
        self.clock_saved = 0
        self.dirty: set[CallKey] = set()
        self.journaled = False
        """Whether ``dirty`` is kept: from the first ``assign`` or ``changes`` of the partition on."""


class _Apply:
    """One message applied to one partition: the calls and clients copied for it so far."""

    __slots__ = ("fresh", "fresh_clients", "journal", "now", "part")

    def __init__(self, part: _Part, journal: Journal, now: int) -> None:
        self.part = part
        self.journal = journal
        self.now = now
        self.fresh: dict[CallKey, _Call] = {}
        self.fresh_clients: set[int] = set()


class SummaryProcessor:
    def __init__(
        self,
        settings: Settings,
        config: SummaryConfig,
        next_consumer: Consumer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: seconds, followed by :data:`~webrtc_observer.state.LOCAL` input only."""
        self._next = next_consumer
        self._max_calls = config.max_calls
        self._max_clients = config.max_clients_per_call
        self._idle_ms = int(float(config.call_idle_timeout) * 1000)
        self._clock = clock
        self._log = settings.logger
        self._label = str(settings.id)
        self._parts: dict[Partition, _Part] = {LOCAL: _Part()}
        t = settings.telemetry
        self._call_mos = t.histogram(
            "call_mos", "Mean MOS of the tracks received in each ended call", ("service_id",), MOS_BUCKETS
        )
        self._with_issues = t.counter("calls_with_issues", "Ended calls in which an issue above info was raised", ("service_id",))
        self._summaries = t.counter("call_summaries", "CALL_SUMMARY reports emitted", ("processor",))
        self._dropped = t.counter(
            "summary_dropped", "Calls or clients the summary processor left out, by reason", ("processor", "reason")
        )
        self._fields_dropped = t.counter(
            "report_fields_dropped",
            "Report fields left out because the 2.2.11 schema cannot represent their value",
            ("processor", "type", "field"),
        )
        t.gauge("summary_calls", "Calls the summary processor accumulates", (), callback=lambda: {(): float(self.calls)})

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    @property
    def calls(self) -> int:
        """Calls accumulated now, all partitions together."""
        return sum(len(part.calls) for part in self._parts.values())

    # -- consume ------------------------------------------------------------------------------------
    async def consume(self, batch: Batch) -> None:
        txn = transaction.current()
        if txn is None:  # called directly (a unit test, a tool): still all or nothing
            await transaction.run(self, batch)
            return
        journal = Journal()
        try:
            out = self._apply(batch, journal)
        except BaseException:
            journal.rollback()
            raise
        txn.on_abort(journal.rollback)  # refused downstream, now or after we returned
        txn.on_commit(journal.commit)
        await self._next.consume(out)

    def _apply(self, batch: Batch, journal: Journal) -> Batch:
        part = self._part(batch.partition)
        t = state.stream_time(batch)
        if batch.partition is LOCAL:
            wall = int(self._clock() * 1000)
            t = wall if t is None or wall > t else t
        if t is not None and t > part.clock:
            journal.attr(part, "clock", t)
        a = _Apply(part, journal, part.clock)
        self._expire(a)
        target: tuple[str, str, str] | None = None
        client: _Client | None = None
        for q in batch.quality:
            call_id = q.call_id
            if call_id is None:
                continue
            key = (q.service_id, call_id, q.client_id)
            if key != target:  # the tracks of a client sample come one after another: find the client once
                target, client = key, self._track_client(a, q)
            if client is not None:
                _accumulate(client, q)
        for sample in batch.samples:
            if isinstance(sample, ClientSample) and sample.correlated and sample.call_id is not None:
                self._sample(a, sample)
        if not batch.reports:
            return batch
        for report in batch.reports:  # first: an issue raised in the batch that ends its call counts
            if report.type == "OBSERVER_EVENT" and report.payload.get("name") == "CLIENT_ISSUE":
                self._issue(a, report.payload)
        out: list[Report] = []
        ended = False
        for report in batch.reports:
            out.append(report)
            summary = self._event_report(a, report)
            if summary is not None:
                out.append(summary)
                ended = True
        if not ended:
            return batch
        return msgspec.structs.replace(batch, reports=out)

    def _part(self, partition: Partition) -> _Part:
        part = self._parts.get(partition)
        if part is None:  # input of a partition nobody assigned (a receiver without assignments)
            part = self._parts[partition] = _Part()
        return part

    def _expire(self, a: _Apply) -> None:
        deadline = a.now - self._idle_ms
        calls = a.part.calls
        expired = 0
        while (first := calls.first()) is not None and first[1].seen <= deadline:
            calls.pop(first[0], a.journal)
            self._mark(a.part, first[0])
            expired += 1
        if expired:
            self._count_later(a.journal, expired, "idle")

    def _count_later(self, journal: Journal, n: int, reason: str) -> None:
        journal.later(lambda: self._dropped.add(n, self._label, reason))

    @staticmethod
    def _mark(part: _Part, key: CallKey) -> None:
        if part.journaled:  # a mark that is undone only writes the unchanged value again
            part.dirty.add(key)

    # -- finding (and copying) what a message changes ----------------------------------------------
    def _call(self, a: _Apply, service: str, call_id: str, ts: int, create: bool = True) -> _Call | None:
        key = (service, call_id)
        call = a.fresh.get(key)
        if call is not None:
            return call
        calls = a.part.calls
        known = calls.get(key)
        if known is not None:
            call = known.clone()
            calls.replace(key, call, a.journal)
        elif not create or self.calls >= self._max_calls:
            return None
        else:
            call = _Call(service, call_id, ts, a.now)
            calls.set(key, call, a.journal)
        call.seen = a.now
        a.fresh[key] = call
        self._mark(a.part, key)
        return call

    def _client(self, a: _Apply, call: _Call, client_id: str, ts: int, create: bool = True) -> _Client | None:
        client = call.clients.get(client_id)
        if client is not None:
            if id(client) not in a.fresh_clients:
                client = call.clients[client_id] = client.clone()  # the call is a copy already
                a.fresh_clients.add(id(client))
            return client
        if not create:
            return None
        if len(call.clients) >= self._max_clients:
            return None
        client = call.clients[client_id] = _Client()
        a.fresh_clients.add(id(client))
        client.present = client.lazy = True  # data before its CLIENT_JOINED: in the call from now
        client.joined_at = ts
        call.current += 1
        call.peak = max(call.peak, call.current)
        return client

    # -- accumulation -------------------------------------------------------------------------------
    def _track_client(self, a: _Apply, q: TrackQuality) -> _Client | None:
        """The client whose track ``q`` measured (its call and itself copied for the message, started if
        new); None if the call or the client is not followed."""
        assert q.call_id is not None
        call = self._call(a, q.service_id, q.call_id, q.timestamp)
        if call is None:
            return None
        if call.media_unit_id is None:
            call.media_unit_id = q.media_unit_id
        return self._client(a, call, q.client_id, q.timestamp)

    def _sample(self, a: _Apply, sample: ClientSample) -> None:
        assert sample.call_id is not None
        origin = sample.origin
        call = self._call(a, origin.service_id, sample.call_id, sample.timestamp)
        if call is None:
            return
        if call.media_unit_id is None:
            call.media_unit_id = origin.media_unit_id
        if call.room_id is None and sample.room_id is not None:
            call.room_id = sample.room_id
        client = self._client(a, call, sample.client_id, sample.timestamp)
        if client is None:
            return
        if client.user_id is None and sample.user_id is not None:
            client.user_id = sample.user_id
        if not client.turn and (sample.local_candidates or sample.candidate_pairs):
            _turn(client, sample)

    def _event_report(self, a: _Apply, report: Report) -> Report | None:
        """Apply one lifecycle report of the batch; the summary if it ended a call."""
        if report.type != "CALL_EVENT":
            return None
        p = report.payload
        name = p.get("name")
        if name not in _EVENTS:
            return None
        service, call_id, ts = p.get("serviceId"), p.get("callId"), p.get("timestamp")
        if not isinstance(service, str) or not isinstance(call_id, str) or not isinstance(ts, int):
            return None
        return self._event(a, name, service, call_id, ts, p)

    def _event(self, a: _Apply, name: str, service: str, call_id: str, ts: int, p: Any) -> Report | None:
        if name == "CALL_STARTED":
            call = self._call(a, service, call_id, ts)
            if call is None:
                if (service, call_id) not in a.part.calls:
                    self._count_later(a.journal, 1, "max_calls")
                return None
            if call.started_lazy:
                call.started, call.started_lazy = ts, False
            _identity(call, p)
            return None
        if name == "CALL_ENDED":
            call = self._call(a, service, call_id, ts, create=False)
            if call is None:
                return None
            _identity(call, p)
            return self._end(a, call, ts, p)
        client_id = p.get("clientId")
        if not isinstance(client_id, str):
            return None
        call = self._call(a, service, call_id, ts, create=name == "CLIENT_JOINED")
        if call is None:
            return None
        _identity(call, p)
        if name == "CLIENT_JOINED":
            client = self._client(a, call, client_id, ts)
            if client is None:
                if client_id not in call.clients:
                    call.untracked += 1
                    call.untracked_present += 1
                    call.current += 1
                    call.peak = max(call.peak, call.current)
                    self._count_later(a.journal, 1, "max_clients")
                return None
            user_id = p.get("userId")
            if isinstance(user_id, str):
                client.user_id = user_id
            if client.lazy:  # in the call since its first data, which came before this event
                client.lazy = False
                client.joined_at = min(client.joined_at, ts)
            elif not client.present:  # joins, or joins again
                client.present = True
                client.joined_at = ts
                call.current += 1
                call.peak = max(call.peak, call.current)
            return None
        # CLIENT_LEFT
        client = self._client(a, call, client_id, ts, create=False)
        if client is None:
            if client_id not in call.clients and call.untracked_present > 0:
                call.untracked_present -= 1
                call.current -= 1
            return None
        if client.present:
            client.in_call_ms += max(0, ts - client.joined_at)
            client.present = client.lazy = False
            call.current -= 1
        return None

    def _issue(self, a: _Apply, p: Any) -> None:
        service, call_id, client_id, issue = p.get("serviceId"), p.get("callId"), p.get("clientId"), p.get("value")
        if not (isinstance(service, str) and isinstance(call_id, str) and isinstance(client_id, str)):
            return
        call = self._call(a, service, call_id, 0, create=False)
        if call is None:
            return
        client = self._client(a, call, client_id, 0, create=False)
        if client is None:
            return
        issue = issue if isinstance(issue, str) and issue else "unknown"
        if issue not in client.issues and len(client.issues) >= _MAX_ISSUE_TYPES:
            issue = "other"
        client.issues[issue] = client.issues.get(issue, 0) + 1
        client.worst = max(client.worst, _severity(p.get("attachments")))

    # -- the end of a call ----------------------------------------------------------------------------
    def _end(self, a: _Apply, call: _Call, ts: int, p: Any) -> Report:
        key = (call.service_id, call.call_id)
        a.part.calls.pop(key, a.journal)
        del a.fresh[key]
        self._mark(a.part, key)
        for client_id, known in list(call.clients.items()):
            if known.present:  # still in at the end (an event was lost): until the call ended
                client = self._client(a, call, client_id, ts, create=False)
                assert client is not None
                client.in_call_ms += max(0, ts - client.joined_at)
                client.present = client.lazy = False
        attachments = _attachments(call, ts)
        mos_n = sum(c.mos_n for c in call.clients.values())
        mos = sum(c.mos_sum for c in call.clients.values()) / mos_n if mos_n else None
        issues = sum(sum(c.issues.values()) for c in call.clients.values())
        troubled = any(c.worst > 0 for c in call.clients.values())
        total = attachments["totalParticipants"]
        parts = [f"call ended after {attachments['durationSeconds']:g} s", _plural(total, "participant")]
        if mos is not None:
            parts.append(f"mean MOS {mos:.2f}")
        parts.append(_plural(issues, "issue"))
        fields: dict[str, Any] = {
            "serviceId": call.service_id,
            "mediaUnitId": p.get("mediaUnitId") or call.media_unit_id,
            "marker": p.get("marker"),
            "timestamp": ts,
            "callId": call.call_id,
            "roomId": call.room_id,
            "name": "CALL_SUMMARY",
            "message": ", ".join(parts),
            "attachments": orjson.dumps(attachments).decode(),
        }
        dropped: list[str] = []
        payload = build("OBSERVER_EVENT", fields, dropped)
        assert payload is not None  # serviceId, callId, timestamp and name are set and well typed
        service, label = call.service_id, self._label

        def observe() -> None:
            self._summaries.add(1, label)
            if mos is not None:
                self._call_mos.observe(mos, service)
            if troubled:
                self._with_issues.add(1, service)
            for field in dropped:
                self._fields_dropped.add(1, label, "OBSERVER_EVENT", field)

        a.journal.later(observe)
        return Report(type="OBSERVER_EVENT", payload=payload, schema_version=SCHEMA_VERSION)

    # -- state that moves with its partition (webrtc_observer.state) --------------------------------
    def changes(self, partition: Partition) -> Changes:
        """Every call changed or ended in ``partition`` since the last call, and its clock; see
        :class:`~webrtc_observer.state.Stateful`."""
        part = self._parts.get(partition)
        if part is None:
            return {}
        if not part.journaled:  # the first checkpoint of a partition that was not assigned: all of it
            part.journaled = True
            part.dirty.update(part.calls.keys())
        out: Changes = {}
        for service, call_id in sorted(part.dirty):
            call = part.calls.get((service, call_id))
            out[state.encode(("call", service, call_id))] = None if call is None else state.encode(_dump_call(call))
        part.dirty.clear()
        if part.clock != part.clock_saved:
            out[state.CLOCK_KEY] = state.encode(part.clock)
            part.clock_saved = part.clock
        return out

    def assign(self, partition: Partition, entries: Mapping[bytes, bytes]) -> None:
        """Own ``partition`` from ``entries``: its calls, in the order they last changed, and its clock."""
        self.revoke(partition)
        part = _Part()
        part.journaled = True
        calls: list[_Call] = []
        for key, value in state.decoded(entries):
            if key[0] == "clock":
                part.clock = part.clock_saved = int(value)
            elif key[0] == "call":
                calls.append(_load_call(value))
        calls.sort(key=lambda c: (c.seen, c.service_id, c.call_id))
        journal = Journal()  # restoring is not undone: the journal is dropped
        for call in calls:
            part.calls.set((call.service_id, call.call_id), call, journal)
        self._parts[partition] = part

    def revoke(self, partition: Partition) -> None:
        """Forget ``partition`` (another member owns it now); :data:`LOCAL` starts over empty."""
        self._parts.pop(partition, None)
        if partition is LOCAL:
            self._parts[LOCAL] = _Part()


_EVENTS = frozenset({"CALL_STARTED", "CALL_ENDED", "CLIENT_JOINED", "CLIENT_LEFT"})
_MAX_ISSUE_TYPES = 32
"""Issue types counted apart per client; more are counted as ``other``."""


def _identity(call: _Call, p: Any) -> None:
    room, media_unit = p.get("roomId"), p.get("mediaUnitId")
    if isinstance(room, str) and call.room_id is None:
        call.room_id = room
    if isinstance(media_unit, str) and call.media_unit_id is None:
        call.media_unit_id = media_unit


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _severity(attachments: Any) -> int:
    """The index in :data:`SEVERITIES` of an issue report's severity; unknown or absent counts as minor."""
    if isinstance(attachments, str):
        try:
            parsed = orjson.loads(attachments)
        except orjson.JSONDecodeError:
            parsed = None
        severity = parsed.get("severity") if isinstance(parsed, dict) else None
        if severity in SEVERITIES:
            return SEVERITIES.index(severity)
    return 1


def _percentile(client: _Client, share: float) -> float | None:
    """The ``share`` quantile of the client's RTTs (ms), linear within its histogram bucket."""
    n = client.rtt_n
    if not n:
        return None
    rank = share * n
    seen = 0
    for i, count in enumerate(client.rtt_hist):
        if count and seen + count >= rank:
            low = RTT_BOUNDS_MS[i - 1] if i > 0 else 0.0
            high = RTT_BOUNDS_MS[i] if i < len(RTT_BOUNDS_MS) else client.rtt_max
            value = low + (high - low) * (rank - seen) / count
            return min(value, client.rtt_max)
        seen += count
    return client.rtt_max


def _accumulate(client: _Client, q: TrackQuality) -> None:
    """Add what ``q`` measured on one track to its client's accumulations (each field read once)."""
    inbound = q.direction == "inbound"
    rtt, bytes_delta = q.rtt, q.bytes_delta
    if rtt is not None:
        ms = rtt * 1000.0
        client.rtt_sum += ms
        client.rtt_n += 1
        if ms > client.rtt_max:
            client.rtt_max = ms
        hist, i = client.rtt_hist, bisect_left(_RTT_BOUNDS, ms)
        if hist[i] < _MAX_COUNT:
            hist[i] += 1
    if bytes_delta is not None and bytes_delta > 0:
        counts, i = client.bytes, (2 if q.kind == "video" else 0) + (1 if inbound else 0)
        counts[i] = min(counts[i] + bytes_delta, _MAX_BYTES)
    if not inbound:
        return
    mos, jitter, f, received = q.mos, q.jitter, q.fraction_lost, q.packets_delta
    if mos is not None:
        client.mos_sum += mos
        client.mos_n += 1
        if mos < client.mos_min:
            client.mos_min = mos
    if jitter is not None:
        client.jitter_sum += jitter * 1000.0
        client.jitter_n += 1
    if f is not None and received is not None and 0.0 <= f <= 1.0 and received >= 0:
        if f < 1.0:
            expected = received / (1.0 - f)
            client.lost += expected - received
            client.expected += expected
            client.intervals += 1
        elif client.intervals:  # everything lost: as many as an interval of this client expects
            mean = client.expected / client.intervals
            client.lost += mean
            client.expected += mean
            client.intervals += 1


def _turn(client: _Client, sample: ClientSample) -> None:
    """Whether a used candidate pair of ``sample`` has a relay local candidate (sets ``client.turn``)."""
    for cand in sample.local_candidates:
        if str(cand.get("candidateType", "")).lower() == "relay":
            cid = cand.get("id")
            if isinstance(cid, str) and cid not in client.relay_ids:
                client.relay_ids = (*client.relay_ids, cid)[-MAX_RELAY_CANDIDATES:]
    for local in _used_local_candidates(sample):
        if local not in client.used_locals:
            client.used_locals = (*client.used_locals, local)[-MAX_RELAY_CANDIDATES:]
    if client.relay_ids and any(local in client.relay_ids for local in client.used_locals):
        client.turn = True
        client.relay_ids, client.used_locals = (), ()


def _used_local_candidates(sample: ClientSample) -> list[str]:
    """The local candidate ids of the pairs in use: a transport's selected pair, else a nominated and
    succeeded pair, per peer connection (in the order of the first such pair of each)."""
    selected: set[tuple[Any, Any]] = set()
    for t in sample.transports:
        pair_id = t.get("selectedCandidatePairId")
        if pair_id:
            selected.add((t.get("peerConnectionId"), pair_id))
    by_pc: dict[Any, str] = {}  # peer connection → the local candidate of its pair in use
    for pair in sample.candidate_pairs:
        local = pair.get("localCandidateId")
        if not isinstance(local, str):
            continue
        pc = pair.get("peerConnectionId")
        if (pc, pair.get("candidatePairId")) in selected:
            by_pc[pc] = local  # the selected pair wins over a nominated one
        elif pc not in by_pc and _nominated(pair):
            by_pc[pc] = local
    return list(by_pc.values())


def _nominated(pair: Stats) -> bool:
    if pair.get("nominated") is not True:
        return False
    state = pair.get("state", "")
    return state == "succeeded" or str(state).lower() == "succeeded"  # the first: without a new string


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) + 0.0  # + 0.0: never -0.0


def _attachments(call: _Call, ended: int) -> dict[str, Any]:
    clients = []
    for client_id, c in call.clients.items():
        rtt_p95 = _percentile(c, 0.95)
        clients.append(
            {
                "clientId": client_id,
                "userId": c.user_id,
                "secondsInCall": _round(c.in_call_ms / 1000.0),
                "mos": {
                    "mean": _round(c.mos_sum / c.mos_n) if c.mos_n else None,
                    "min": _round(c.mos_min) if c.mos_n else None,
                },
                "lossPercent": _round(100.0 * c.lost / c.expected) if c.expected > 0 else None,
                "rtt": {
                    "meanMs": _round(c.rtt_sum / c.rtt_n, 1) if c.rtt_n else None,
                    "p95Ms": _round(rtt_p95, 1) if rtt_p95 is not None else None,
                },
                "jitterMs": _round(c.jitter_sum / c.jitter_n, 2) if c.jitter_n else None,
                "bytes": {
                    "audio": {"sent": c.bytes[0], "received": c.bytes[1]},
                    "video": {"sent": c.bytes[2], "received": c.bytes[3]},
                },
                "turnUsed": c.turn,
                "issues": dict(sorted(c.issues.items())),
                "worstSeverity": SEVERITIES[c.worst] if c.worst >= 0 else None,
            }
        )
    out: dict[str, Any] = {
        "durationSeconds": _round(max(0, ended - call.started) / 1000.0),
        "peakParticipants": call.peak,
        "totalParticipants": len(call.clients) + call.untracked,
        "clients": clients,
    }
    if call.untracked:
        out["untrackedClients"] = call.untracked
    return out


# -- state: stream time and the changelog form of a call ---------------------------------------------

_STATE_VERSION = 1


def _dump_client(client_id: str, c: _Client) -> list[Any]:
    return [
        client_id, c.user_id, c.present, c.lazy, c.joined_at, c.in_call_ms,
        c.mos_sum, c.mos_n, c.mos_min if c.mos_n else None,
        c.lost, c.expected, c.intervals, c.rtt_sum, c.rtt_n, c.rtt_max, c.rtt_hist.tolist(),
        c.jitter_sum, c.jitter_n, c.bytes.tolist(), c.turn, list(c.relay_ids), list(c.used_locals), c.issues, c.worst,
    ]  # fmt: skip


def _load_client(value: list[Any]) -> tuple[str, _Client]:
    c = _Client()
    (
        client_id, c.user_id, c.present, c.lazy, c.joined_at, c.in_call_ms,
        c.mos_sum, c.mos_n, mos_min,
        c.lost, c.expected, c.intervals, c.rtt_sum, c.rtt_n, c.rtt_max, c.rtt_hist,
        c.jitter_sum, c.jitter_n, c.bytes, c.turn, c.relay_ids, c.used_locals, c.issues, c.worst,
    ) = value  # fmt: skip
    c.mos_min = math.inf if mos_min is None else float(mos_min)
    c.rtt_hist = array("I", (min(int(n), _MAX_COUNT) for n in c.rtt_hist))
    if len(c.rtt_hist) != len(RTT_BOUNDS_MS) + 1:
        raise ValueError("summary state: the RTT histogram has another shape")
    c.bytes = array("q", (min(int(n), _MAX_BYTES) for n in c.bytes))
    if len(c.bytes) != 4:
        raise ValueError("summary state: the byte counts have another shape")
    c.relay_ids, c.used_locals = tuple(c.relay_ids), tuple(c.used_locals)
    return client_id, c


def _dump_call(call: _Call) -> list[Any]:
    """``[version, service, call, room, media unit, started, started_lazy, seen, current, peak,
    untracked, untracked_present, [client...]]``, clients in their order."""
    return [
        _STATE_VERSION, call.service_id, call.call_id, call.room_id, call.media_unit_id, call.started,
        call.started_lazy, call.seen, call.current, call.peak, call.untracked, call.untracked_present,
        [_dump_client(client_id, c) for client_id, c in call.clients.items()],
    ]  # fmt: skip


def _load_call(value: list[Any]) -> _Call:
    if value[0] != _STATE_VERSION:
        raise ValueError(f"summary state version {value[0]} is not {_STATE_VERSION}")
    _, service, call_id, room, media_unit, started, lazy, seen, current, peak, untracked, untracked_present, clients = value
    call = _Call(service, call_id, int(started), int(seen))
    call.room_id, call.media_unit_id, call.started_lazy = room, media_unit, bool(lazy)
    call.current, call.peak, call.untracked, call.untracked_present = current, peak, untracked, untracked_present
    for entry in clients:
        client_id, client = _load_client(entry)
        call.clients[client_id] = client
    return call


def _create(settings: Settings, config: SummaryConfig, next_consumer: Consumer) -> SummaryProcessor:
    return SummaryProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="summary",
    config_type=SummaryConfig,
    create=_create,
    description="one CALL_SUMMARY report per ended call (duration, participants, per-client quality, TURN, issues)",
)
