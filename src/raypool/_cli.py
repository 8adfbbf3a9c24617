"""The ``raypool`` command line (also ``python -m raypool``)::

    raypool checkpoints list                 every checkpoint in the cache directory
    raypool checkpoints show NAME            one checkpoint, with its first failures
    raypool checkpoints clear NAME [NAME...] delete checkpoints
    raypool checkpoints clear --all

``NAME`` is a name from ``list`` or the path of a checkpoint file (``checkpoint_path=``).
It never starts or connects to Ray.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence

from ._config import check_checkpoint_name
from ._errors import CheckpointError
from ._store import (
    CACHE_DIR_ENV,
    SUFFIX,
    Summary,
    checkpoint_dir,
    failures,
    list_checkpoints,
    remove_checkpoint,
    summarize,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.command(args)
    except (CheckpointError, ValueError) as exc:
        print(f"raypool: {exc}", file=sys.stderr)
        return 1
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypool", description="raypool's command line.")
    topics = parser.add_subparsers(required=True, metavar="TOPIC")
    checkpoints = topics.add_parser(
        "checkpoints",
        help="inspect and clear checkpoints",
        description=f"Checkpoints live in {_directory()} (set ${CACHE_DIR_ENV} to move them).",
    )
    actions = checkpoints.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every checkpoint: name, function, items, size")
    listing.set_defaults(command=_list)
    show = actions.add_parser("show", help="one checkpoint in detail")
    show.add_argument("name", metavar="NAME", help="a name from `list`, or a file's path")
    show.add_argument("--failures", type=int, default=10, help="failures to show (10)")
    show.set_defaults(command=_show)
    clear = actions.add_parser("clear", help="delete checkpoints")
    clear.add_argument("names", metavar="NAME", nargs="*", help="names or paths")
    clear.add_argument("--all", action="store_true", help="every checkpoint in the directory")
    clear.set_defaults(command=_clear)
    return parser


def _directory() -> str:
    try:
        return checkpoint_dir(create=False)
    except Exception:  # platformdirs cannot tell: say so in the help only
        return "raypool's user cache directory"


def _path(name: str) -> str:
    if os.sep in name or (os.altsep and os.altsep in name) or os.path.isfile(name):
        return os.path.abspath(name)
    path = os.path.join(checkpoint_dir(create=False), check_checkpoint_name(name) + SUFFIX)
    if not os.path.exists(path):
        raise CheckpointError(
            f"no checkpoint called {name!r} in {os.path.dirname(path)} "
            "(`raypool checkpoints list` shows them)"
        )
    return path


def _list(args: argparse.Namespace) -> int:
    found = list_checkpoints()
    if not found:
        print(f"no checkpoints in {checkpoint_dir(create=False)}")
        return 0
    rows = [("NAME", "FUNCTION", "ITEMS", "FAILURES", "SIZE", "UPDATED")]
    rows += [
        (s.name, s.function, str(s.items), str(s.failures), _size(s.size), _time(s.updated))
        for s in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _show(args: argparse.Namespace) -> int:
    summary = summarize(_path(args.name))
    for label, value in _fields(summary):
        print(f"{label + ':':<10}{value}")
    shown = failures(summary.path, max(0, args.failures))
    if shown:
        print(f"first {len(shown)} failures (item key: exception):")
        for key, text in shown:
            print(f"  {key.hex()}: {text}")
    return 0


def _fields(summary: Summary) -> list[tuple[str, str]]:
    return [
        ("name", summary.name),
        ("file", summary.path),
        ("function", summary.function or "-"),
        ("items", str(summary.items)),
        ("failures", str(summary.failures)),
        ("size", _size(summary.size)),
        ("created", _time(summary.created)),
        ("updated", _time(summary.updated)),
    ]


def _clear(args: argparse.Namespace) -> int:
    if args.all == bool(args.names):
        print("raypool: give checkpoint names, or --all", file=sys.stderr)
        return 2
    paths = [s.path for s in list_checkpoints()] if args.all else [_path(n) for n in args.names]
    for path in paths:
        remove_checkpoint(path)
        print(f"removed {path}")
    if not paths:
        print(f"no checkpoints in {checkpoint_dir(create=False)}")
    return 0


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _time(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp)
    return moment.isoformat(sep=" ", timespec="seconds")
