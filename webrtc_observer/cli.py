"""``webrtc-observer``: run or validate a collector configuration, generate load, or run a demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from webrtc_observer import __version__
from webrtc_observer.component import Worker
from webrtc_observer.components import builtin_factories, config_types
from webrtc_observer.config import CollectorConfig, ConfigError, load_file
from webrtc_observer.logs import configure

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
"""The configuration is invalid, or the collector could not start (a port taken...)."""
EXIT_LOST = 3
"""``run`` stopped, but records accepted (answered 202) could not be delivered before the shutdown
deadline and were lost: they were counted in ``exporter_lost_records`` and logged. Exporters with a
persistent queue (``sending_queue.storage: file``) lose nothing: their records wait on disk."""


def _load(path: str) -> CollectorConfig | None:
    try:
        return load_file(path, config_types())
    except ConfigError as exc:
        print(f"{path}: {len(exc.issues)} configuration error(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    for kind, configs in config.components.items():
        for cid, component in configs.items():
            for option, message in getattr(component, "warnings", list)():
                print(f"warning: {kind}.{cid}.{option}: {message}", file=sys.stderr)
    for name, p in config.pipelines.items():
        stages = [", ".join(map(str, p.receivers)), *map(str, p.processors), ", ".join(map(str, p.exporters))]
        print(f"pipeline {name}: {' -> '.join(stages)}")
    print(f"{args.config}: OK")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    configure(config.telemetry.logs.level, config.telemetry.logs.format)
    if config.workers > 1:
        from webrtc_observer.workers import supervise

        return supervise(config.workers, lambda worker, directory: _serve(config, worker, directory))
    return _serve(config)


def _serve(config: CollectorConfig, worker: Worker | None = None, directory: str = "") -> int:
    """Run one collector process (the only one, or one of ``service.workers``) until SIGTERM/SIGINT."""
    from webrtc_observer.service import Service
    from webrtc_observer.workers import Peers

    service = Service(config, builtin_factories(), peers=Peers(worker, directory) if worker is not None else None)
    _tune_gc()
    try:
        lost = _event_loop_runner(service.run_until_signal())
    except OSError as exc:  # e.g. the port is taken
        print(f"webrtc-observer: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        # The drain is done: a repeated Ctrl-C or SIGTERM during interpreter exit must not turn a
        # clean stop into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return EXIT_LOST if lost else EXIT_OK


GC_GEN0_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Fewer, larger young-generation collections: each message allocates a few hundred short-lived
    containers, and at CPython's default threshold (700) the collector ran a gen0 collection every
    couple of messages. Objects alive at start (modules, schemas, config) are frozen out of every
    collection."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _event_loop_runner(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where it is installed (it is a dependency on Linux and macOS): its sockets and
    callbacks cost less per message than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# -- loadgen and demo -------------------------------------------------------------------------------

_DEMO_IMPAIRMENTS = ("loss=0.05@0.2", "rtt=0.4@0.1", "frozen@0.1", "drop@0.1")


def _duration(text: str) -> float:
    """A duration argument: ``500ms``, ``5s``, ``2m``, or bare seconds."""
    from webrtc_observer.config import Duration

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(Duration.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _impairments(specs: Sequence[str]) -> list[Any]:
    from webrtc_observer.loadgen import Impairment

    return [Impairment.parse(part) for spec in specs for part in spec.split(",") if part.strip() not in ("", "none")]


def _stop_on_signals(stop: asyncio.Event) -> None:
    """First Ctrl-C or SIGTERM: stop gracefully. A second Ctrl-C: stop now."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C raises KeyboardInterrupt

    loop.add_signal_handler(signal.SIGINT, first)
    loop.add_signal_handler(signal.SIGTERM, stop.set)


def _loadgen(args: argparse.Namespace) -> int:
    from webrtc_observer.loadgen import Progress, Scenario, run

    try:
        scenario = Scenario(
            calls=args.calls,
            clients_per_call=args.clients_per_call,
            topology=args.topology,
            schema=args.schema,
            transport=args.transport,
            format=args.format,
            impairments=_impairments(args.impair),
            interval=args.interval,
            duration=args.duration or None,
            call_duration=args.call_duration,
            seed=args.seed,
            service_id=args.service_id,
            media_unit_id=args.media_unit_id,
        )
    except ValueError as exc:
        print(f"webrtc-observer loadgen: {exc}", file=sys.stderr)
        return 2

    async def main() -> Any:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        progress = None if args.quiet else Progress()
        return await run(scenario, args.url, stop=stop, concurrency=args.concurrency, progress=progress)

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:  # a second Ctrl-C
        return 130
    if args.json:
        import json

        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.render())
    if summary.samples_sent and not summary.samples_accepted:
        print(f"webrtc-observer loadgen: nothing was accepted by {args.url}", file=sys.stderr)
    return 0 if summary.ok else 1


def _demo_config(path: str) -> str:
    """The configuration to run: the given file, or the default collector.yaml of this source tree."""
    if Path(path).is_file() or path != "collector.yaml":
        return path
    bundled = Path(__file__).resolve().parents[1] / "collector.yaml"
    return str(bundled) if bundled.is_file() else path


def _where_to_look(service: Any) -> list[tuple[str, str]]:
    """What the running collector offers, read from its exporters: files, /metrics, /ui."""

    def local(endpoint: str, port: int | None) -> str:
        host, _, configured = endpoint.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "localhost"
        return f"{host}:{port or configured}"

    places: list[tuple[str, str]] = []
    for cid, exporter in service.exporters.items():
        options = service.config.components["exporters"][cid]
        if cid.type == "file":
            places.append(("reports", f"{options.path}   (tail -f {options.path})"))
        elif cid.type == "prometheus":
            places.append(("metrics", f"http://{local(options.endpoint, getattr(exporter, 'bound_port', None))}/metrics"))
        elif cid.type == "liveview":
            places.append(("live view", f"http://{local(options.endpoint, getattr(exporter, 'bound_port', None))}/ui"))
        elif cid.type == "debug":
            places.append(("log", "report counts by type, on this terminal every few seconds"))
    return places


def _demo(args: argparse.Namespace) -> int:
    path = _demo_config(args.config)
    config = _load(path)
    if config is None:
        return 1
    configure(config.telemetry.logs.level, config.telemetry.logs.format)
    try:
        return asyncio.run(_demo_main(config, path, args))
    except OSError as exc:  # e.g. a port is taken
        print(f"webrtc-observer demo: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def _demo_main(config: CollectorConfig, path: str, args: argparse.Namespace) -> int:
    from webrtc_observer.loadgen import Scenario, run
    from webrtc_observer.service import Service

    stop = asyncio.Event()
    _stop_on_signals(stop)
    service = Service(config, builtin_factories())
    await service.start()
    try:
        receiver = next((r for cid, r in service.receivers.items() if cid.type == "observertc"), None)
        if receiver is None:
            print(f"webrtc-observer demo: {path} has no observertc receiver in a pipeline", file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{receiver.bound_port}"
        scenario = Scenario(
            calls=args.calls,
            clients_per_call=args.clients_per_call,
            topology="mixed",
            schema="mixed",
            transport="mixed",
            format="mixed",
            impairments=_impairments(args.impair) if args.impair else list(_DEMO_IMPAIRMENTS),
            interval=args.interval,
            duration=args.duration or None,
            call_duration=args.call_duration,
            seed=args.seed,
            service_id="demo",
            media_unit_id="demo-app",
        )
        lines = [
            f"webrtc-observer demo: the collector runs {path}; a load generator sends it {args.calls} calls of",
            f"{args.clients_per_call} clients (P2P, mesh and SFU; samples of 2.x, 3.x and 2020 clients; HTTP and WebSocket),",
            f"one sample per client every {args.interval:g}s, with {', '.join(args.impair or _DEMO_IMPAIRMENTS)}.",
            "",
            *(
                f"  {label:<10} {where}"
                for label, where in [("samples", f"{url}/rest/samples/demo/demo-app"), *_where_to_look(service)]
            ),
            "",
            f"Calls last about {args.call_duration:g}s and are replaced by new ones. Stop with Ctrl-C."
            if args.duration == 0
            else f"The demo stops after {args.duration:g}s, or with Ctrl-C.",
        ]
        print("\n".join(lines), flush=True)
        summary = await run(scenario, url, stop=stop, concurrency=64)
        print(summary.render(), flush=True)
        return 0
    finally:
        await service.shutdown()  # bounded by service.shutdown_timeout


def _add_loadgen_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--url", default="http://127.0.0.1:7080", help="the collector's observertc receiver (default: %(default)s)")
    sub.add_argument("--service-id", default="loadgen", help="serviceId in the sample URLs (default: %(default)s)")
    sub.add_argument(
        "--media-unit-id", default="loadgen", help="mediaUnitId of the clients; SFUs use it + '-sfu' (default: %(default)s)"
    )
    sub.add_argument("--calls", type=_positive_int, default=10, help="calls running at once (default: %(default)s)")
    sub.add_argument(
        "--clients-per-call", type=_positive_int, default=3, help="clients per call; p2p calls have 2 (default: %(default)s)"
    )
    sub.add_argument(
        "--topology",
        choices=("p2p", "mesh", "sfu", "mixed"),
        default="mixed",
        help="call topology; mixed rotates per call (default: %(default)s)",
    )
    sub.add_argument(
        "--schema",
        choices=("2", "3", "legacy", "mixed"),
        default="mixed",
        help="sample generation; mixed rotates per client (default: %(default)s)",
    )
    sub.add_argument(
        "--transport",
        choices=("http", "websocket", "mixed"),
        default="http",
        help="mixed alternates per client (default: %(default)s)",
    )
    sub.add_argument(
        "--format",
        choices=("json", "protobuf", "gzip", "mixed"),
        default="json",
        help="body encoding; legacy samples are always JSON (default: %(default)s)",
    )
    sub.add_argument(
        "--impair",
        action="append",
        default=[],
        metavar="SPEC",
        help="loss=0.05@0.2, rtt=0.4@0.1, frozen@0.1, drop@0.1; repeat or separate with commas",
    )
    sub.add_argument("--interval", type=_duration, default=5.0, help="sample period of each client (default: 5s)")
    sub.add_argument("--duration", type=_duration, default=60.0, help="length of the run; 0 runs until Ctrl-C (default: 60s)")
    sub.add_argument(
        "--call-duration",
        type=_duration,
        default=None,
        help="length of each call, after which a new call takes its place (default: the whole run)",
    )
    sub.add_argument(
        "--seed", type=int, default=None, help="random seed, for the same ids and numbers on every run (default: random)"
    )
    sub.add_argument("--concurrency", type=_positive_int, default=64, help="messages in flight at most (default: %(default)s)")
    sub.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    sub.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webrtc-observer", description="A collector for WebRTC stats samples.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", _run, "run the collector"),
        ("validate", _validate, "check a configuration file without starting anything"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", "-c", default="collector.yaml", help="path to the YAML configuration (default: %(default)s)")
        sub.set_defaults(handler=handler)

    text = "send synthesized calls (clients and SFUs of every sample generation) to a collector"
    sub = commands.add_parser("loadgen", help=text, description=text)
    _add_loadgen_arguments(sub)
    sub.set_defaults(handler=_loadgen)

    text = "run the collector with the load generator sending it calls, until Ctrl-C"
    sub = commands.add_parser("demo", help=text, description=text)
    sub.add_argument("--config", "-c", default="collector.yaml", help="path to the YAML configuration (default: %(default)s)")
    sub.add_argument("--calls", type=_positive_int, default=5, help="calls running at once (default: %(default)s)")
    sub.add_argument("--clients-per-call", type=_positive_int, default=3, help="clients per call (default: %(default)s)")
    sub.add_argument("--interval", type=_duration, default=2.0, help="sample period of each client (default: 2s)")
    sub.add_argument("--call-duration", type=_duration, default=40.0, help="length of each call (default: 40s)")
    sub.add_argument("--duration", type=_duration, default=0.0, help="stop after this long; 0 runs until Ctrl-C (default: 0)")
    sub.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    sub.add_argument(
        "--impair",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"impairments instead of the demo's ({', '.join(_DEMO_IMPAIRMENTS)}); 'none' for none; as for loadgen",
    )
    sub.set_defaults(handler=_demo)

    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
