"""Processor ``obfuscation``: hashes user ids, room ids and IP addresses before anything stores them.

Place it first in a pipeline (``observertc → obfuscation → correlation → reports → exporters``) so that
no later stage, report or exporter ever sees the plain values. It does what the observer 1.0 did at
ingestion (``evaluators.obfuscator``: ``userId``, ``roomId`` and ICE candidate ``address``), but with a
hash users can reproduce, hex instead of the observer's lossy ``new String(digest, UTF_8)``.

The hash of a value is::

    hashlib.sha256(salt.encode("utf-8") + value.encode("utf-8")).hexdigest()

(64 lowercase hex characters). To find the samples of one user, compute that with the same salt and
search for it. Hashing is deterministic, so a hashed room or user still groups samples and calls.

What changes, per sample type:

* ``ClientSample``: ``user_id`` and ``room_id`` (hashed), and the ``roomId``/``userId`` keys of the 3.x
  ``attachments`` the receiver took them from; ``call_id`` when it is the room id itself (legacy
  samples use the call name as room, and some apps send ``callId == roomId``), so the plain room
  name does not survive in it. The ``address`` and ``relatedAddress`` of local and remote ICE
  candidates, and of ``ICE_LOCAL_CANDIDATE``/``ICE_REMOTE_CANDIDATE`` meta payloads.
* ``SfuSample``: ``localAddress`` and ``remoteAddress`` of its transports.
* ``TurnSample``: ``clientAddress`` of sessions and ``peerAddress`` of allocations (end users'
  addresses); ``serverAddress`` and ``relayedAddress`` are the TURN server's own and are treated like
  relay candidates.

With ``keep_relay_addresses`` the ``address`` of a relay candidate is kept (it is a TURN server's
address), but its ``relatedAddress`` is still obfuscated: for a relay candidate that is the client's
own public address as the TURN server saw it.

Samples are never changed in place: the receiver's batch may be handed to other pipelines too. A
changed sample is a copy (``msgspec.structs.replace``) with new lists and dicts only where something
changed; the rest is shared with the original. Reports already in the batch pass through as they are.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import orjson

from webrtc_observer import transaction
from webrtc_observer.component import Consumer, Factory, Settings
from webrtc_observer.model import Batch, ClientSample, MetaItem, Sample, SfuSample, Stats, TurnSample

CACHE_SIZE = 65536
"""Hashes kept per cache; the same ids and addresses repeat every sample. Cleared when full."""

MIN_SALT_LENGTH = 8
_CANDIDATE_META = frozenset({"ICE_LOCAL_CANDIDATE", "ICE_REMOTE_CANDIDATE"})
_ATTACHED_IDENTITY = (("roomId", "room_id"), ("userId", "user_id"))

IpMode = Literal["hash", "truncate", "keep"]


@dataclass
class ObfuscationConfig:
    salt: str = ""
    """Secret prepended to every value before hashing; required, at least 8 characters. Keep it out of the
    file: ``salt: ${env:OBSERVER_SALT}``. Changing it changes every hash (old and new data stop matching)."""
    user_id: bool = True
    """Hash ``userId``."""
    room_id: bool = True
    """Hash ``roomId`` (and a ``callId`` equal to it)."""
    ip_addresses: IpMode = "hash"
    """ICE candidate, SFU transport and TURN client addresses: ``hash`` them; ``truncate`` them (IPv4 to
    its /24, 192.0.2.10 → 192.0.2.0; IPv6 to its /48, 2001:db8:85a3::; a value that is not an IP
    address, such as an mDNS ``….local`` name, is hashed); or ``keep`` them."""
    keep_relay_addresses: bool = False
    """Leave the address of relay (TURN) candidates as it is: the operator's own servers, useful for
    diagnosis. Their ``relatedAddress`` (the client's public address) is obfuscated all the same."""

    def validate(self) -> list[tuple[str, str]]:
        if not self.salt:
            return [
                (
                    "salt",
                    "must be set: a secret of at least 8 characters, kept out of the file, e.g. salt: ${env:OBSERVER_SALT}",
                )
            ]
        if len(self.salt) < MIN_SALT_LENGTH:
            return [
                ("salt", f"is too short ({len(self.salt)} characters): use at least {MIN_SALT_LENGTH}, better 32 random ones")
            ]
        return []


def salted_hash(salt: str, value: str) -> str:
    """The documented construction: hex SHA-256 of the salt's UTF-8 bytes followed by the value's."""
    return hashlib.sha256(salt.encode() + value.encode()).hexdigest()


def truncate_ip(value: str) -> str | None:
    """IPv4 → its /24 (last octet zeroed), IPv6 → its /48; ``None`` if ``value`` is not an IP address.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.10``) is truncated as the IPv4 address it carries.
    """
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFF00))
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return "::ffff:" + str(ipaddress.IPv4Address(int(mapped) & 0xFFFFFF00))
    return str(ipaddress.IPv6Address(int(ip) & ~((1 << 80) - 1)))


class _BoundedCache:
    """value → transformed value, cleared when it holds ``size`` entries: bounded, and cheap to keep.

    Values longer than ``max_length`` are computed every time and not kept, so a client sending huge
    ids cannot make the cache big.
    """

    def __init__(self, compute: Callable[[str], str], size: int = CACHE_SIZE, max_length: int = 256) -> None:
        self._compute = compute
        self._size = size
        self._max_length = max_length
        self._values: dict[str, str] = {}
        """A cache of ``compute``, a pure function of the value: no state to move with a partition
        (any member computes the same), so the processor is not :class:`~webrtc_observer.state.Stateful`."""

    def __call__(self, value: str) -> str:
        result = self._values.get(value)
        if result is None:
            result = self._compute(value)
            if len(value) <= self._max_length:
                if len(self._values) >= self._size:
                    self._values.clear()
                self._values[value] = result
        return result

    def __len__(self) -> int:
        return len(self._values)


class ObfuscationProcessor:
    def __init__(self, settings: Settings, config: ObfuscationConfig, next_consumer: Consumer) -> None:
        self._config = config
        self._next = next_consumer
        self._label = str(settings.id)
        self._counter = settings.telemetry.counter(
            "obfuscated_values", "Values hashed or truncated before export, by field", ("processor", "field")
        )
        salt = config.salt
        self.hash = _BoundedCache(lambda value: salted_hash(salt, value))
        mode = config.ip_addresses
        self._address: Callable[[str], str] | None
        if mode == "hash":
            self._address = self.hash
        elif mode == "truncate":
            self._address = _BoundedCache(lambda value: truncate_ip(value) or self.hash(value))
        else:
            self._address = None
        self._keep_relay = config.keep_relay_addresses
        self._attachments = _BoundedCache(self._rewrite_attachments, size=4096, max_length=4096)

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        counts: Counter[str] = Counter()
        await self._next.consume(self.process(batch, counts))
        if counts:  # counted when the message commits: a refused message is counted when retried
            await transaction.after_commit(lambda: self._count(counts))

    def _count(self, counts: Counter[str]) -> None:
        for field, count in counts.items():
            self._counter.add(count, self._label, field)

    # -- transformation -------------------------------------------------------------------------
    def process(self, batch: Batch, counts: Counter[str] | None = None) -> Batch:
        """The batch with obfuscated copies of the samples that changed; ``batch`` itself if none did.

        With ``counts``, the obfuscated fields are added there for the caller to count; without, they
        are counted at once. The caches only remember pure functions of their input: no state."""
        counting = counts is None
        counts = Counter() if counts is None else counts
        samples: list[Sample] = []
        changed = False
        for sample in batch.samples:
            new: Sample
            if isinstance(sample, ClientSample):
                new = self._client(sample, counts)
            elif isinstance(sample, SfuSample):
                new = self._sfu(sample, counts)
            elif isinstance(sample, TurnSample):
                new = self._turn(sample, counts)
            else:
                new = sample
            changed = changed or new is not sample
            samples.append(new)
        if counting:
            self._count(counts)
        if not changed:
            return batch
        return Batch(samples=samples, reports=batch.reports, partition=batch.partition, time=batch.time)

    def _client(self, s: ClientSample, counts: Counter[str]) -> ClientSample:
        config = self._config
        changes: dict[str, Any] = {}
        if config.user_id and s.user_id:
            changes["user_id"] = self.hash(s.user_id)
            counts["user_id"] += 1
        if config.room_id and s.room_id:
            changes["room_id"] = self.hash(s.room_id)
            counts["room_id"] += 1
            if s.call_id == s.room_id:
                changes["call_id"] = changes["room_id"]
                counts["call_id"] += 1
        if s.attachments and (config.user_id or config.room_id) and s.attachments.startswith("{"):
            attachments = self._attachments(s.attachments)
            if attachments != s.attachments:
                changes["attachments"] = attachments
                counts["attachments"] += 1
        if self._address is not None:
            for name in ("local_candidates", "remote_candidates"):
                records = getattr(s, name)
                if records:
                    new_records = self._records(records, self._candidate, counts)
                    if new_records is not None:
                        changes[name] = new_records
            if s.meta:
                meta = self._meta(s.meta, counts)
                if meta is not None:
                    changes["meta"] = meta
        return msgspec.structs.replace(s, **changes) if changes else s

    def _sfu(self, s: SfuSample, counts: Counter[str]) -> SfuSample:
        if self._address is None or not s.transports:
            return s
        transports = self._records(s.transports, self._sfu_transport, counts)
        return s if transports is None else msgspec.structs.replace(s, transports=transports)

    def _turn(self, s: TurnSample, counts: Counter[str]) -> TurnSample:
        if self._address is None:
            return s
        changes: dict[str, Any] = {}
        if s.sessions:
            sessions = self._records(s.sessions, self._turn_session, counts)
            if sessions is not None:
                changes["sessions"] = sessions
        if s.allocations:
            allocations = self._records(s.allocations, self._turn_allocation, counts)
            if allocations is not None:
                changes["allocations"] = allocations
        return msgspec.structs.replace(s, **changes) if changes else s

    @staticmethod
    def _records(
        records: list[Stats], transform: Callable[[Stats, Counter[str]], Stats | None], counts: Counter[str]
    ) -> list[Stats] | None:
        """A new list if ``transform`` changed any record (it returns a new dict or None), else None."""
        out: list[Stats] | None = None
        for i, record in enumerate(records):
            new = transform(record, counts)
            if new is not None:
                if out is None:
                    out = list(records)
                out[i] = new
        return out

    def _fields(self, record: Stats, fields: tuple[str, ...], label: str, counts: Counter[str]) -> Stats | None:
        """A copy of ``record`` with the string values of ``fields`` obfuscated, or None if none changed."""
        address = self._address
        assert address is not None
        new: Stats | None = None
        for field in fields:
            value = record.get(field)
            if isinstance(value, str) and value:
                obfuscated = address(value)
                if obfuscated != value:
                    if new is None:
                        new = dict(record)
                    new[field] = obfuscated
                    counts[label] += 1
        return new

    def _candidate(self, candidate: Stats, counts: Counter[str]) -> Stats | None:
        relay = self._keep_relay and str(candidate.get("candidateType", "")).lower() == "relay"
        fields = ("relatedAddress",) if relay else ("address", "relatedAddress")
        return self._fields(candidate, fields, "candidate_address", counts)

    def _sfu_transport(self, transport: Stats, counts: Counter[str]) -> Stats | None:
        return self._fields(transport, ("localAddress", "remoteAddress"), "sfu_transport_address", counts)

    def _turn_session(self, session: Stats, counts: Counter[str]) -> Stats | None:
        fields = ("clientAddress",) if self._keep_relay else ("clientAddress", "serverAddress")
        return self._fields(session, fields, "turn_address", counts)

    def _turn_allocation(self, allocation: Stats, counts: Counter[str]) -> Stats | None:
        fields = ("peerAddress",) if self._keep_relay else ("peerAddress", "relayedAddress")
        return self._fields(allocation, fields, "turn_address", counts)

    def _meta(self, meta: list[MetaItem], counts: Counter[str]) -> list[MetaItem] | None:
        out: list[MetaItem] | None = None
        for i, item in enumerate(meta):
            if item.type in _CANDIDATE_META and isinstance(item.payload, dict):
                payload = self._candidate(item.payload, counts)
                if payload is not None:
                    if out is None:
                        out = list(meta)
                    out[i] = msgspec.structs.replace(item, payload=payload)
        return out

    def _rewrite_attachments(self, text: str) -> str:
        """3.x attachments (JSON object text) with their ``roomId``/``userId`` hashed; ``text`` if unchanged.

        The 3.x receiver reads room and user id from there and keeps the attachments as they came, so
        without this the plain ids would reach the exporters after all.
        """
        if '"roomId"' not in text and '"userId"' not in text:
            return text
        try:
            attachments = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if not isinstance(attachments, dict):
            return text
        changed = False
        for key, option in _ATTACHED_IDENTITY:
            value = attachments.get(key)
            if not getattr(self._config, option) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
                continue
            if value == "":
                continue
            attachments[key] = self.hash(value if isinstance(value, str) else str(value))
            changed = True
        return orjson.dumps(attachments).decode() if changed else text


def _create(settings: Settings, config: ObfuscationConfig, next_consumer: Consumer) -> ObfuscationProcessor:
    return ObfuscationProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind="processor",
    type="obfuscation",
    config_type=ObfuscationConfig,
    create=_create,
    description="hashes user ids, room ids and IP addresses before anything stores or reports them",
)
