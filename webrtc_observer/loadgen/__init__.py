"""A load generator: synthesized WebRTC calls, sent to a collector as ObserveRTC clients and SFUs would.

Three layers, usable on their own:

``Scenario`` (``_scenario.py``)
    The simulation, in virtual time and without I/O. It yields one :class:`Tick` per message a
    client or SFU sends, in time order::

        from webrtc_observer.loadgen import Scenario

        scenario = Scenario(calls=20, clients_per_call=4, topology="sfu", schema="mixed",
                            impairments=["loss=0.05@0.2", "drop@0.1"], interval=5, duration=60, seed=7)
        for tick in scenario.ticks():
            tick.at          # seconds since the start (virtual time)
            tick.sender      # stable per client (its clientId) or SFU ("sfu:<sfuId>")
            tick.body        # the message as a JSON-shaped dict (Samples / ClientSample / PeerConnectionSample)
            tick.http_path   # e.g. /rest/samples/loadgen/loadgen, or /pcsamples/... for legacy
            tick.encode()    # Encoded(data=bytes, format=...) in the tick's format; .headers() for HTTP
            tick.first, tick.last, tick.goodbye

    Counters grow with virtual time, not the wall clock, so a benchmark may take the ticks as fast
    as it can and still get realistic deltas between a client's samples. The same ``seed`` and
    ``start_ms`` give the same ticks. ``scenario.calls`` / ``scenario.clients`` describe what was
    simulated (ids, generation, transport, format, impairments), ``scenario.stop(at)`` ends the run
    with the goodbyes of the clients still in a call.

``encode_body`` / ``encode_protobuf`` (``_wire.py``)
    JSON, gzip'd JSON, and protobuf written from the shipped ``.proto`` files (no ``protoc``).

``Runner`` / ``run`` (``_runner.py``)
    Paces the ticks in real time over HTTP and WebSocket, and returns a :class:`Summary` (samples
    sent, accepted, refused by status and reason, bytes, rate, HTTP latency p50/p99)::

        summary = await run(scenario, "http://127.0.0.1:7080", concurrency=64, progress=Progress())
        print(summary.render())

The CLI wraps them: ``webrtc-observer loadgen`` and ``webrtc-observer demo``.
"""

from ._runner import Progress, Runner, Summary, run
from ._scenario import GENERATIONS, TOPOLOGIES, TRANSPORTS, Call, Client, Impairment, Scenario, Sfu, Tick
from ._wire import FORMATS, Encoded, encode_body, encode_protobuf

__all__ = [
    "FORMATS",
    "GENERATIONS",
    "TOPOLOGIES",
    "TRANSPORTS",
    "Call",
    "Client",
    "Encoded",
    "Impairment",
    "Progress",
    "Runner",
    "Scenario",
    "Sfu",
    "Summary",
    "Tick",
    "encode_body",
    "encode_protobuf",
    "run",
]
