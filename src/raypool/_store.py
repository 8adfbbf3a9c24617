"""Checkpoint stores: SQLite files that record each finished item, so that a rerun skips it.

The only module that imports ``sqlite3`` and ``platformdirs``. One checkpoint is one SQLite
database in WAL mode::

    meta(name TEXT PRIMARY KEY, value TEXT)   format, version, function, created, updated,
                                              indexed (the last seq in keyindex)
    results(seq INTEGER PRIMARY KEY,          append-only, in the order items finished
            key BLOB,                         the item's content key (``_keys.item_key``)
            failed INTEGER,                   1: an application exception
            outcome BLOB)                     ``dumps_value`` of the result, or of
                                              ``(exception, worker traceback text)``
    keyindex(key BLOB PRIMARY KEY, seq)       key -> its latest row, up to meta.indexed

* Writing: ``record`` hands finished rows to a writer thread, which serializes them and
  appends them in one transaction once ``every`` rows or ``interval`` seconds have
  accumulated (rows finishing during a commit join the next one). Appending is O(1) per row
  and rewrites nothing stored. Keys are random: an index kept up to date at each commit
  would rewrite index pages all over the file (30 us per row at a million rows). It is
  instead brought up to date in one sorted pass when the checkpoint is next opened - after
  a crash too.
* Durability: WAL with ``synchronous=NORMAL``. A committed transaction survives the process
  being killed; a power failure may lose the last commits, never the file. A commit is one
  short transaction, so two processes sharing a checkpoint take turns and never see half a
  batch (rows a concurrent process appends are found from the next opening on).
* Reading: a resume reads the input in about the order the last run finished it, so
  ``lookup`` first tries a window of the next rows read sequentially from ``results``, and
  probes the index only for keys not in it (re-aligning the window there). Memory holds
  one window, never the store.
* Safety: loading an outcome runs pickle code, so a file that is not the current user's, or
  that others may write, is refused. Files raypool creates are ``0600``, in a ``0700``
  directory. A file that is not a raypool checkpoint is an error naming it, never
  overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import os
import pickle
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from . import _lifecycle
from ._config import Checkpoint, check_checkpoint, check_checkpoint_name
from ._errors import CheckpointError, user_stacklevel
from ._keys import fingerprint, item_key
from ._serialization import dumps_value, loads_value

__all__ = [
    "CACHE_DIR_ENV",
    "RAY_MAP_SUFFIX",
    "CheckpointStore",
    "Recorded",
    "Row",
    "SqliteStore",
    "Summary",
    "checkpoint_dir",
    "checkpoint_file",
    "failures",
    "import_ray_map",
    "open_checkpoint",
    "list_checkpoints",
    "remove_checkpoint",
    "summarize",
]

#: Environment variable that moves raypool's cache directory (checkpoints) elsewhere.
CACHE_DIR_ENV = "RAYPOOL_CACHE_DIR"

#: The suffix of the checkpoint files in the cache directory.
SUFFIX = ".sqlite"

#: Seconds a writer waits for another process's transaction before giving up. Commits are
#: short, so this is only reached when the other process hangs holding the file.
BUSY_TIMEOUT = 60.0

#: Keys per index query (SQLite allows 999 parameters in older builds).
LOOKUP_BLOCK = 500

#: Rows read ahead from ``results`` at a time while replaying, and the most the replay
#: window keeps (about 200 bytes each with small results): enough to bridge the reordering
#: of results that finish out of order, a constant however large the store.
PREFETCH_ROWS = 2048
WINDOW_ROWS = 16 * PREFETCH_ROWS

#: Index lookups per block of keys that move the window to where the block's items are.
MAX_SEEKS = 4

#: Rows per INSERT statement when committing: one statement of many rows costs SQLite
#: less than as many one-row statements (2.5 us per row instead of 4 here); 300 rows use
#: 900 parameters, under the 999 older SQLite builds allow.
ROWS_PER_INSERT = 300
_INSERT = "INSERT INTO results (key, failed, outcome) VALUES (?, ?, ?)"
_INSERT_MANY = _INSERT.replace("(?, ?, ?)", ", ".join(["(?, ?, ?)"] * ROWS_PER_INSERT))

FORMAT = "raypool-checkpoint"
VERSION = "1"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")

#: A recorded outcome: ``(False, value)`` for a result, ``(True, (exception, traceback))``
#: for an application error.
Recorded = tuple[bool, Any]

#: A finished item as the engine hands it over: ``(key, failed, value)``.
Row = tuple[bytes, bool, Any]


class CheckpointStore(Protocol):
    """What the engine needs from a checkpoint."""

    @property
    def empty(self) -> bool:
        """Nothing was recorded when the store was opened: no lookup can find anything."""

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Recorded]:
        """The recorded outcomes of those of ``keys`` that are in the store."""

    def record(self, rows: list[Row]) -> None:
        """Record finished items; durable once committed (see the module docstring)."""

    def close(self) -> None:
        """Commit everything recorded and release the store (idempotent)."""


# -- where checkpoints live ------------------------------------------------------------------


def checkpoint_dir(create: bool = True) -> str:
    """raypool's checkpoint directory: ``$RAYPOOL_CACHE_DIR/checkpoints``, else
    ``checkpoints`` in the user cache directory of ``platformdirs``. Created ``0700``."""
    import platformdirs

    root = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("raypool")
    directory = os.path.join(root, "checkpoints")
    if create:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _check_ownership(directory, "checkpoint directory")
    return directory


def checkpoint_file(name: str) -> str:
    """The file of the checkpoint called ``name`` in the checkpoint directory."""
    return os.path.join(checkpoint_dir(), check_checkpoint_name(name) + SUFFIX)


def open_checkpoint(
    checkpoint: Checkpoint,
    fn: Callable[..., Any],
    *,
    default: Checkpoint,
    default_path: str | os.PathLike[str] | None,
    salt: bytes,
    every: int,
    interval: float,
    errors: bool,
) -> SqliteStore | None:
    """The store of a call's checkpoint, or ``None`` for none. A ray-map checkpoint found
    at its path is converted first, with a warning.

    Args:
        checkpoint: the call's ``checkpoint=`` (``None``: as the default).
        fn: the mapped function; ``checkpoint=True`` names the file after its identity
            (``_keys.fingerprint``: module, qualified name, a hash of its code).
        default: the constructor's ``checkpoint=``.
        default_path: the constructor's ``checkpoint_path=`` (``RayMap``, as ray-map).
        salt: what keys this call's items (its calling convention).
        every, interval, errors: as ``SqliteStore``.

    Raises:
        TypeError, ValueError: ``checkpoint`` is not a checkpoint.
        CheckpointError: see ``SqliteStore`` and ``import_ray_map``.
    """
    check_checkpoint(checkpoint)
    if checkpoint is None:
        checkpoint = default
    if checkpoint is False or (checkpoint is None and default_path is None):
        return None
    identity = fingerprint(fn)
    if checkpoint is None:
        path = os.fspath(default_path)  # type: ignore[arg-type]
    elif checkpoint is True:
        path = checkpoint_file(re.sub(r"[^A-Za-z0-9._-]", "_", identity))
    elif isinstance(checkpoint, str):
        path = checkpoint_file(checkpoint)
    else:
        path = os.fspath(checkpoint)
    imported = import_ray_map(path, lambda item: item_key(item, salt), function=identity)
    if imported is not None:
        warnings.warn(
            f"converted ray-map's checkpoint {path} ({imported} results) into a raypool "
            f"checkpoint; ray-map's file is kept as {path}{RAY_MAP_SUFFIX}",
            stacklevel=user_stacklevel(),
        )
    return SqliteStore(path, every=every, interval=interval, errors=errors, function=identity)


def _check_ownership(path: str, what: str) -> None:
    if not hasattr(os, "getuid"):  # Windows: no owner or mode bits to check
        return
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise CheckpointError(
            f"refusing the {what} {path}: it belongs to user id {info.st_uid}, not to you "
            f"({os.getuid()}), and loading a checkpoint runs pickle code"
        )
    if info.st_mode & 0o022:
        raise CheckpointError(
            f"refusing the {what} {path}: others may write it (mode {info.st_mode & 0o777:o}), "
            f"and loading a checkpoint runs pickle code; run `chmod go-w {path}` if you trust it"
        )


# -- the store -------------------------------------------------------------------------------


class _StoreState(enum.Enum):
    OPEN = "open"  # records are taken and committed by the writer thread
    BROKEN = "broken"  # the writer failed (``_failure``): records are refused
    CLOSED = "closed"  # committed what it could; closed


class SqliteStore:
    """A checkpoint in the SQLite file ``path`` (created if missing or empty).

    Args:
        path: the file.
        every: rows that make the writer commit.
        interval: seconds after which rows waiting are committed even if fewer than
            ``every``.
        errors: record application exceptions and replay them (``False``: neither, so
            that a rerun retries them).
        function: the identity of the function, shown by ``raypool checkpoints``.

    Raises:
        CheckpointError: the file is not a raypool checkpoint, is unreadable, or is not
            safe to load (see the module docstring). Nothing is written to it then.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        every: int = 100,
        interval: float = 1.0,
        errors: bool = True,
        function: str = "",
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._every = every
        self._interval = interval
        self._errors = errors
        self._lock = threading.Lock()  # the reading connection is shared by threads
        self._conn, self._end = _open(self.path, function)
        # The replay window: rows read ahead (up to the last row there was at opening),
        # key -> (seq, key, failed, outcome), in two generations (see _prefetch).
        self._window: dict[bytes, tuple[int, bytes, int, bytes]] = {}
        self._older: dict[bytes, tuple[int, bytes, int, bytes]] = {}
        self._next = 1  # the seq the window continues from
        self._cond = threading.Condition()
        self._pending: list[Row] = []
        self._since = 0.0  # monotonic time of the oldest uncommitted row
        self._state = _StoreState.OPEN
        self._failure: BaseException | None = None  # why the writer stopped
        self._writer: threading.Thread | None = None
        self._unloadable = False
        self._pid = os.getpid()
        _open_stores.add(self)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # -- reading -------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self._end

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, Recorded]:
        if not self._end:
            return {}  # nothing was recorded before this opening
        with self._lock, _translated(self.path):
            rows = self._find(keys)
        found: dict[bytes, Recorded] = {}
        for key, (failed, outcome) in rows.items():
            try:
                found[key] = (bool(failed), loads_value(outcome))
            except Exception as exc:
                self._warn_unloadable(exc)
        return found

    def _find(self, keys: Sequence[bytes]) -> dict[bytes, tuple[int, bytes]]:
        found: dict[bytes, tuple[int, bytes]] = {}
        missing = self._from_window(keys, found)
        # 1. Read on: the last run recorded results about in input order.
        budget = len(keys) + PREFETCH_ROWS
        while missing and budget > 0 and self._next <= self._end:
            budget -= self._prefetch()
            missing = self._from_window(missing, found)
        # 2. Tasks finish out of order, but the results of one task are adjacent: look up
        #    where the first missing item is and read on from there.
        for _ in range(MAX_SEEKS):
            seq = self._seq(missing[0]) if missing else None
            if seq is None:
                break
            self._next = seq
            self._prefetch()
            missing = self._from_window(missing, found)
        # 3. What is left is new, or scattered: ask the index.
        if missing:
            found.update(self._probe(missing))
        return found

    def _seq(self, key: bytes) -> int | None:
        row = self._conn.execute("SELECT seq FROM keyindex WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _from_window(
        self, keys: Sequence[bytes], found: dict[bytes, tuple[int, bytes]]
    ) -> list[bytes]:
        """Move the rows of ``keys`` the window holds to ``found``; the other keys."""
        window, older = self._window, self._older
        missing = []
        for key in keys:
            row = window.pop(key, None) or older.pop(key, None)
            if row is not None and (self._errors or not row[2]):
                found[key] = row[2:]
            else:
                missing.append(key)
        return missing

    def _prefetch(self) -> int:
        """Read the next rows into the window; returns how many were read."""
        rows = self._conn.execute(
            "SELECT seq, key, failed, outcome FROM results WHERE seq >= ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (self._next, self._end, PREFETCH_ROWS),
        ).fetchall()
        if len(self._window) >= WINDOW_ROWS // 2:
            # Two generations: rows unasked for during one are forgotten after the next.
            self._older, self._window = self._window, {}
        self._window.update(zip([row[1] for row in rows], rows, strict=True))
        self._next = rows[-1][0] + 1 if rows else self._end + 1
        return len(rows)

    def _probe(self, keys: list[bytes]) -> dict[bytes, tuple[int, bytes]]:
        """``key -> (failed, outcome)`` through the index, for the keys it holds."""
        probed = {}
        keys.sort()  # neighbouring probes share index pages
        for start in range(0, len(keys), LOOKUP_BLOCK):
            block = keys[start : start + LOOKUP_BLOCK]
            marks = ",".join("?" * len(block))
            query = (
                "SELECT k.key, r.failed, r.outcome FROM keyindex AS k "
                f"JOIN results AS r ON r.seq = k.seq WHERE k.key IN ({marks})"
            )
            for key, failed, outcome in self._conn.execute(query, block):
                if self._errors or not failed:
                    probed[key] = (failed, outcome)
        return probed

    def _warn_unloadable(self, exc: BaseException) -> None:
        if not self._unloadable:
            self._unloadable = True
            warnings.warn(
                f"checkpoint {self.path}: a recorded outcome cannot be loaded "
                f"({type(exc).__name__}: {exc}); such items are computed again",
                RuntimeWarning,
                stacklevel=4,
            )

    # -- writing -------------------------------------------------------------------------

    def record(self, rows: list[Row]) -> None:
        if self._state is _StoreState.BROKEN:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be written: {self._failure}"
            ) from self._failure
        if not self._errors:
            rows = [row for row in rows if not row[1]]
        if not rows:
            return
        with self._cond:
            if self._state is _StoreState.CLOSED:
                raise CheckpointError(f"checkpoint {self.path} is closed")
            if not self._pending:
                self._since = time.monotonic()
            self._pending.extend(rows)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="raypool-checkpoint", daemon=True
                )
                self._writer.start()
            elif len(self._pending) >= self._every:
                self._cond.notify()

    def close(self) -> None:
        if os.getpid() != self._pid:
            return  # inherited by a forked child: the writer and the file are the parent's
        with self._cond:
            if self._state is _StoreState.CLOSED:
                return
            self._state = _StoreState.CLOSED
            self._cond.notify()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._lock:
            self._conn.close()
            self._window.clear()
            self._older.clear()
        _open_stores.discard(self)
        if self._failure is not None:
            raise CheckpointError(
                f"checkpoint {self.path}: results of the last seconds could not be "
                f"written: {self._failure}"
            ) from self._failure

    def _take(self) -> list[Row] | None:
        """The rows to commit next, once there are enough or they waited long enough;
        ``None`` when closing with nothing left."""
        with self._cond:
            while True:
                if self._pending:
                    waited = time.monotonic() - self._since
                    closing = self._state is not _StoreState.OPEN
                    if closing or len(self._pending) >= self._every:
                        break
                    if waited >= self._interval:
                        break
                    self._cond.wait(self._interval - waited)
                elif self._state is not _StoreState.OPEN:
                    return None
                else:
                    self._cond.wait()
            rows, self._pending = self._pending, []
            return rows

    def _write_loop(self) -> None:
        conn = None
        try:
            conn = _connect(self.path)
            while (rows := self._take()) is not None:
                self._commit(conn, rows)
                del rows  # no row (a result of the user's) kept while the next ones gather
        except BaseException as exc:  # reported by the next record() and by close()
            self._failure = exc
            with self._cond:
                if self._state is _StoreState.OPEN:
                    self._state = _StoreState.BROKEN
                self._pending.clear()
        finally:
            if conn is not None:
                conn.close()

    def _commit(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        encoded = []
        for key, failed, value in rows:
            try:
                encoded.append((key, int(failed), dumps_value(value)))
            except Exception as exc:
                warnings.warn(
                    f"checkpoint {self.path}: an outcome cannot be serialized and is not "
                    f"recorded ({exc}); a rerun computes it again",
                    RuntimeWarning,
                    stacklevel=1,
                )
        whole = len(encoded) - len(encoded) % ROWS_PER_INSERT
        with _transaction(conn):
            for start in range(0, whole, ROWS_PER_INSERT):
                block = encoded[start : start + ROWS_PER_INSERT]
                conn.execute(_INSERT_MANY, list(itertools.chain.from_iterable(block)))
            conn.executemany(_INSERT, encoded[whole:])
            conn.execute("UPDATE meta SET value = ? WHERE name = 'updated'", (str(time.time()),))


#: Stores not yet closed: at exit, before daemon threads stop, each commits what a call
#: never closed.
_open_stores: _lifecycle.LiveSet[SqliteStore] = _lifecycle.LiveSet(
    {_lifecycle.Phase.CLOSE_STORES: lambda store: store.close()}
)


# -- opening ---------------------------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def _translated(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(
            f"{path} is not a readable raypool checkpoint ({exc}); move it away, "
            "or pass another checkpoint"
        ) from exc


def _check_file(path: str) -> bool:
    """Whether ``path`` holds data (else it is new); raises if it is not ours to open."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.exists(path):
        return False
    for extra in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):  # another process may close it now
            _check_ownership(path + extra, "checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if not head:
        return False
    if head != _SQLITE_MAGIC:
        pickled = head[:1] == b"\x80"
        hint = " (it looks like a pickle)" if pickled else ""
        raise CheckpointError(
            f"{path} is not a raypool checkpoint{hint}: raypool keeps checkpoints in SQLite. "
            "It was left untouched; move it away or pass another checkpoint"
        )
    return True


#: Where ``import_ray_map`` keeps the ray-map checkpoint it converted: the path plus this.
RAY_MAP_SUFFIX = ".ray-map"


def import_ray_map(
    path: str | os.PathLike[str], key: Callable[[Any], bytes | None], *, function: str = ""
) -> int | None:
    """Convert the ray-map checkpoint at ``path`` into a raypool checkpoint, in place.

    ray-map 1.0's ``checkpoint_path`` is a pickled list of ``(key, arg, result_or_exc)``
    rows. Each becomes a row of a new checkpoint at ``path`` under ``key(arg)`` (an
    exception as a recorded failure); the pickle is kept beside it as ``path + ".ray-map"``.

    Returns:
        The number of rows imported, or ``None`` if ``path`` is not a ray-map checkpoint
        (then nothing is touched).

    Raises:
        CheckpointError: the converted file cannot be written, or ``path + ".ray-map"``
            exists already. ``path`` is then as it was.
    """
    path = os.path.abspath(os.fspath(path))
    rows = _ray_map_rows(path)
    if rows is None:
        return None
    backup = path + RAY_MAP_SUFFIX
    if os.path.exists(backup):
        raise CheckpointError(
            f"{path} is a ray-map checkpoint, and {backup} (where raypool would keep it while "
            "converting it) exists already; move one of them away"
        )
    os.replace(path, backup)
    try:
        store = SqliteStore(path, function=function)
        try:
            store.record(
                [
                    (k, True, (res, "")) if isinstance(res, BaseException) else (k, False, res)
                    for arg, res in rows
                    if (k := key(arg)) is not None
                ]
            )
        finally:
            store.close()
    except BaseException:
        for leftover in (path, path + "-wal", path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        os.replace(backup, path)
        raise
    return len(rows)


def _ray_map_rows(path: str) -> list[tuple[Any, Any]] | None:
    """The ``(arg, result_or_exc)`` rows of a ray-map checkpoint at ``path``, else ``None``.
    Loading runs pickle code, as ray-map itself does: the file must be the user's own."""
    if not os.path.isfile(path):
        return None
    _check_ownership(path, "checkpoint file")
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":  # pickle protocol 2+
            return None
        f.seek(0)
        try:
            saved = pickle.load(f)
        except Exception:
            return None
    if not isinstance(saved, list) or not all(
        isinstance(row, tuple) and len(row) == 3 and isinstance(row[0], str) for row in saved
    ):
        return None
    return [(arg, res) for _, arg, res in saved]


def _open(path: str, function: str) -> tuple[sqlite3.Connection, int]:
    """A connection to the checkpoint at ``path`` (created if new) with its key index
    brought up to date, and the seq of its last row."""
    _check_file(path)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    with _translated(path):
        conn = _connect(path)
        try:
            with _transaction(conn):
                _initialize(conn, path, function)
                end = _index(conn)
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            raise
    return conn, end


def _index(conn: sqlite3.Connection) -> int:
    """Add the rows appended since the last opening to the key index, in key order (the
    later row of a key wins); returns the last seq."""
    (indexed,) = conn.execute("SELECT value FROM meta WHERE name = 'indexed'").fetchone()
    (end,) = conn.execute("SELECT coalesce(max(seq), 0) FROM results").fetchone()
    if end > int(indexed):
        conn.execute(
            "INSERT OR REPLACE INTO keyindex (key, seq) SELECT key, seq FROM results "
            "WHERE seq > ? ORDER BY key, seq",
            (int(indexed),),
        )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'indexed'", (str(end),))
    return int(end)


def _initialize(conn: sqlite3.Connection, path: str, function: str) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if tables:
        found = None
        if "meta" in tables:
            found = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        if found is None or found[0] != FORMAT:
            raise CheckpointError(
                f"{path} is an SQLite database but not a raypool checkpoint; it was left "
                "untouched: move it away or pass another checkpoint"
            )
        version = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        if version is None or version[0] != VERSION:
            raise CheckpointError(
                f"{path} is a raypool checkpoint of format version "
                f"{version[0] if version else '?'}; this raypool reads version {VERSION}"
            )
    else:
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "CREATE TABLE results (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, "
            "failed INTEGER NOT NULL, outcome BLOB NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE keyindex (key BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID"
        )
        now = str(time.time())
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("version", VERSION),
                ("created", now),
                ("updated", now),
                ("indexed", "0"),
            ],
        )
    if function:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('function', ?)", (function,))


# -- inspecting (the command line) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
    """What ``raypool checkpoints list`` shows of one checkpoint."""

    name: str
    path: str
    function: str
    items: int
    failures: int
    size: int  # bytes, with the write-ahead log
    created: float
    updated: float


def summarize(path: str | os.PathLike[str]) -> Summary:
    """A ``Summary`` of the checkpoint at ``path`` (read only)."""
    path = os.path.abspath(os.fspath(path))
    if not _check_file(path):
        raise CheckpointError(f"{path} is not a raypool checkpoint: it is missing or empty")
    with _translated(path), contextlib.closing(_connect(path)) as conn:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is an SQLite database but not a raypool checkpoint")
        items, failures = _counts(conn, int(meta.get("indexed", 0)))
    size = sum(os.path.getsize(path + e) for e in ("", "-wal") if os.path.exists(path + e))
    name = os.path.basename(path)
    return Summary(
        name=name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name,
        path=path,
        function=meta.get("function", ""),
        items=items,
        failures=int(failures),
        size=size,
        created=float(meta.get("created", 0)),
        updated=float(meta.get("updated", 0)),
    )


def _counts(conn: sqlite3.Connection, indexed: int) -> tuple[int, int]:
    """Items recorded (a key counts once, as its latest row) and how many failed."""
    items, failures = conn.execute(
        "SELECT count(*), total(r.failed) FROM keyindex AS k JOIN results AS r ON r.seq = k.seq"
    ).fetchone()
    more, more_failures = conn.execute(  # appended since the last opening: not indexed yet
        "SELECT count(*), total(failed) FROM results WHERE seq > ?", (indexed,)
    ).fetchone()
    return items + more, int(failures + more_failures)


def failures(path: str | os.PathLike[str], limit: int) -> list[tuple[bytes, str]]:
    """Up to ``limit`` recorded failures of the checkpoint at ``path``: ``(key, text)``."""
    path = os.path.abspath(os.fspath(path))
    _check_file(path)
    with _translated(path), contextlib.closing(_connect(path)) as conn:
        rows = conn.execute(
            "SELECT key, outcome FROM results WHERE failed ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
    shown = []
    for key, outcome in rows:
        try:
            exc, _ = loads_value(outcome)
            text = f"{type(exc).__name__}: {exc}"
        except Exception as error:
            text = f"(cannot be loaded: {type(error).__name__}: {error})"
        shown.append((key, text))
    return shown


def list_checkpoints() -> list[Summary]:
    """Every checkpoint in the checkpoint directory, by name; unreadable files are skipped
    with a warning."""
    directory = checkpoint_dir(create=False)
    if not os.path.isdir(directory):
        return []
    found = []
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(SUFFIX):
            try:
                found.append(summarize(os.path.join(directory, entry)))
            except CheckpointError as exc:
                warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
    return found


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete the checkpoint at ``path`` with its write-ahead log; refuses a file that is
    not a raypool checkpoint."""
    path = os.path.abspath(os.fspath(path))
    summarize(path)  # raises for anything that is not a checkpoint
    for extra in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + extra)
