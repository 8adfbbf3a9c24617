"""Checkpoint stores: where finished items are recorded so that a rerun can skip them.

The engine talks to a store through ``CheckpointStore`` only. ``PickleFileStore`` keeps
ray-map's layout (one pickle file holding ``(key, item, outcome)`` rows, rewritten
atomically every ``checkpoint_every`` new items); its keys are raypool's own. It loads the
whole file when opened and rewrites it whole, so it suits runs of thousands of items, not
millions.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from typing import Any, Protocol

from ._errors import CheckpointError
from ._outcome import ItemError

__all__ = ["CACHE_DIR_ENV", "CheckpointStore", "PickleFileStore", "Recorded", "checkpoint_file"]

#: Environment variable that moves raypool's cache directory (checkpoints) elsewhere.
CACHE_DIR_ENV = "RAYPOOL_CACHE_DIR"

#: A recorded outcome: ``(False, value)`` for a result, ``(True, (exception, traceback))``
#: for an application error.
Recorded = tuple[bool, Any]


def checkpoint_file(name: str) -> str:
    """The file of the checkpoint called ``name`` in raypool's cache directory:
    ``$RAYPOOL_CACHE_DIR`` or the user cache directory of ``platformdirs``. The directory
    is created readable by the current user only: loading a checkpoint runs pickle code."""
    import platformdirs

    root = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("raypool")
    directory = os.path.join(root, "checkpoints")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, f"{name}.ckpt")


class CheckpointStore(Protocol):
    """What the engine needs from a checkpoint."""

    def lookup(self, key: str) -> Recorded | None:
        """The recorded outcome of the item with this key, or ``None``."""

    def record(self, key: str, item: Any, value: Any, error: ItemError | None) -> None:
        """Record a finished item (its ``value``, or its application ``error``)."""

    def flush(self) -> None:
        """Make everything recorded so far durable."""


class PickleFileStore:
    """A checkpoint kept in one pickle file at ``path``.

    Args:
        path: the file; created on the first flush.
        every: new items between two automatic flushes.

    Raises:
        CheckpointError: the file exists but is not a readable checkpoint.
    """

    def __init__(self, path: str | os.PathLike[str], *, every: int = 100) -> None:
        self.path = os.fspath(path)
        self._every = every
        self._rows: dict[str, tuple[Any, Recorded]] = {}
        self._unsaved = 0
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                rows = pickle.load(f)
            for key, item, recorded in rows:
                self._rows[key] = (item, _as_recorded(recorded))
        except Exception as exc:
            raise CheckpointError(
                f"{self.path} is not a readable raypool checkpoint "
                f"({type(exc).__name__}: {exc}); move it away or pass another path"
            ) from exc

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, key: str) -> Recorded | None:
        row = self._rows.get(key)
        return None if row is None else row[1]

    def record(self, key: str, item: Any, value: Any, error: ItemError | None) -> None:
        self._rows[key] = (item, (False, value) if error is None else (True, error))
        self._unsaved += 1
        if self._unsaved >= self._every:
            self.flush()

    def flush(self) -> None:
        if not self._unsaved:
            return
        rows = [(key, item, recorded) for key, (item, recorded) in self._rows.items()]
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".raypool-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:
                    f.seek(0)
                    f.truncate()
                    pickle.dump(self._picklable_rows(rows), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._unsaved = 0

    def _picklable_rows(self, rows: list[tuple[str, Any, Recorded]]) -> list[Any]:
        # Rare path: some item or outcome cannot be pickled. Keep the others and forget
        # those (a rerun recomputes them) rather than lose the whole checkpoint.
        kept = []
        for row in rows:
            try:
                pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                warnings.warn(
                    f"checkpoint {self.path}: an item's outcome cannot be pickled and is "
                    "not recorded; a rerun computes it again",
                    RuntimeWarning,
                    stacklevel=2,
                )
                del self._rows[row[0]]
            else:
                kept.append(row)
        return kept


def _as_recorded(recorded: Any) -> Recorded:
    if isinstance(recorded, tuple) and len(recorded) == 2 and isinstance(recorded[0], bool):
        return recorded
    # A row as ray-map writes it: the bare result, or the exception object.
    if isinstance(recorded, BaseException):
        return True, (recorded, "")
    return False, recorded
