"""Own time per module from py-spy's raw profiles (``BENCH_PROFILE`` of ``bench/pipeline.py``).

Each sample's innermost frame is counted under its file: this repository's files by their path in
it, a library's by its package (``aiohttp``, ``asyncio``, ``concurrent``...; time in a C
extension such as msgspec counts under the Python line that called it). Start-up (imports and
the config load before the first frame of the receiver) is left out by dropping the stacks that
run through ``importlib``, and so are the samples of a thread waiting for work (a thread pool's
idle worker, a ``queue`` or ``threading`` wait, a ``selectors`` poll), which some py-spy versions
count although ``--idle`` is off. Time inside uvloop's C loop stays, under ``asyncio: Runner.run``,
busy or polling alike. Prints a markdown table, largest first.

    .venv/bin/python bench/spy_table.py /tmp/collector-*.txt [--top 30] [--by file|function]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_WAITS = {
    ("concurrent/futures/thread.py", "_worker"),  # the pool's idle worker: blocked in its queue's get()
    ("queue.py", "Queue.get"),
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("selectors.py", "EpollSelector.select"),
}
"""(file, function) of an innermost frame that is a thread waiting, not working."""
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def where(frame: str, by: str) -> str | None:
    """A frame ``function (file:line)`` as the row it is counted under; None for a thread waiting."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m["file"]  # as py-spy shortens it: relative to the entry of sys.path it was found under
    if (path, m["function"]) in _WAITS:
        return None
    if path.startswith("/") or not (ROOT / path).is_file():  # a library's, or the standard library's
        name = Path(path).parts[-1] if path.startswith("/") else Path(path).parts[0].removesuffix(".py")
    else:
        name = path
    return f"{name}: {m['function']}" if by == "function" else name


def table(paths: list[Path], by: str, top: int) -> list[str]:
    leaves: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit() and "importlib" not in stack:
                leaves[stack.rsplit(";", 1)[-1]] += int(count)
    own: Counter[str] = Counter()
    for leaf, n in leaves.items():  # each distinct frame placed once
        row = None if leaf.startswith("process ") else where(leaf, by)  # outside any Python frame
        if row is not None:
            own[row] += n
    total = sum(own.values()) or 1
    rows = ["| share | where |", "| ---: | --- |"]
    rows += [f"| {100 * n / total:.1f} % | `{name}` |" for name, n in own.most_common(top)]
    rows.append(f"\n{total:,} samples in {len(paths)} profile(s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--by", choices=("file", "function"), default="file")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print("\n".join(table(args.profiles, args.by, args.top)))


if __name__ == "__main__":
    main()
