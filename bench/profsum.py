"""Summarise py-spy ``--format raw`` output: the hottest functions, self and inclusive.

``python -m bench.profsum FILE [--top N] [--filter TEXT]``
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def _frame(frame: str) -> str:
    # "func (module/path.py:123)" -> "func (module/path.py)": aggregate over line numbers.
    return re.sub(r":\d+\)$", ")", frame)


def summarise(path: Path, top: int, needle: str | None) -> str:
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_frame(f) for f in stack.split(";") if f]
        if needle and not any(needle in f for f in frames):
            continue
        total += n
        if frames:
            self_counts[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{path}: {total} samples"]
    out.append(f"-- top {top} self")
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in self_counts.most_common(top)]
    out.append(f"-- top {top} inclusive")
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profsum")
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--filter", help="only stacks with a frame containing this text")
    args = parser.parse_args(argv)
    print(summarise(args.file, args.top, args.filter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
