"""``webrtc-observer``: run or validate a collector configuration."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from webrtc_observer import __version__
from webrtc_observer.components import builtin_factories, config_types
from webrtc_observer.config import CollectorConfig, ConfigError, load_file
from webrtc_observer.logs import configure


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
    from webrtc_observer.service import Service

    service = Service(config, builtin_factories())
    try:
        asyncio.run(service.run_until_signal())
    except OSError as exc:  # e.g. the port is taken
        print(f"webrtc-observer: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        # The drain is done: a repeated Ctrl-C or SIGTERM during interpreter exit must not turn a
        # clean stop into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


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
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
