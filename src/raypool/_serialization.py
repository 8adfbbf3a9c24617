"""Serialization of callables with dill: the only module that imports dill.

A callable is serialized once per call and shipped once through the object store; items and
results go through Ray's own serializer (which is zero-copy for numpy arrays), and through
here only on their way into a checkpoint (``dumps_value``).

dill serializes functions defined in ``__main__`` (and lambdas, closures) by value, and any
other function by reference - its module name - which a worker must then import. A module
the driver imported from a directory of its own (a project directory, a test directory that
pytest put on ``sys.path``) is not on a Ray worker's path, so the blob carries those
directories with it and the worker puts them in front of its ``sys.path`` before loading,
as ``multiprocessing``'s spawn start method gives each child its parent's ``sys.path``.
Directories that do not exist where the worker runs (another node) are skipped; the error
then says to ship the code with ``runtime_env``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import dill

from ._errors import SerializationError

__all__ = ["dumps_callable", "dumps_value", "loads_callable", "loads_value", "user_paths"]


def _system_dirs() -> tuple[str, ...]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.update(p for p in sysconfig.get_paths().values() if p)
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


_SYSTEM_DIRS = _system_dirs()


_user_paths: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (sys.path, answer)


def user_paths() -> tuple[str, ...]:
    """The directories on this process's ``sys.path`` that are neither the interpreter's
    nor an environment's (``site-packages``): where the user's own modules come from.

    Worked out again only when ``sys.path`` (or, if it holds ``""``, the working
    directory) changes: resolving paths costs a few system calls per entry.
    """
    global _user_paths
    key = (*sys.path, os.getcwd() if "" in sys.path else "")
    if _user_paths is None or _user_paths[0] != key:
        _user_paths = key, _find_user_paths()
    return _user_paths[1]


def _find_user_paths() -> tuple[str, ...]:
    paths: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(path) or os.path.join(path, "").startswith(_SYSTEM_DIRS):
            continue
        if path not in paths:
            paths.append(path)
    return tuple(paths)


def dumps_callable(fn: Callable[..., Any]) -> tuple[bytes, str]:
    """Serialize ``fn`` (a function, lambda, closure, partial or callable object).

    Returns:
        ``(blob, digest)``: the bytes to ship, and a digest that identifies them, which
        workers use to cache the deserialized callable.

    Raises:
        SerializationError: ``fn`` (or something it refers to) cannot be serialized; the
            message names the object and the reason.
    """
    try:
        payload = dill.dumps(fn, recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {fn!r} to send it to Ray workers: {type(exc).__name__}: {exc}"
        ) from exc
    blob = pickle.dumps((user_paths(), payload), protocol=pickle.HIGHEST_PROTOCOL)
    return blob, hashlib.blake2b(blob, digest_size=16).hexdigest()


def loads_callable(blob: bytes) -> Callable[..., Any]:
    """Inverse of ``dumps_callable``; first puts the driver's own directories that exist
    here in front of ``sys.path``."""
    paths, payload = pickle.loads(blob)
    missing = [p for p in paths if p not in sys.path and os.path.isdir(p)]
    sys.path[:0] = missing
    fn: Callable[..., Any] = dill.loads(payload)
    return fn


def dumps_value(obj: Any) -> bytes:
    """Serialize a result (or an item) for a checkpoint: ``pickle``, which is ~20x faster
    than dill, and dill for what pickle refuses (lambdas, closures, local classes).

    Raises:
        SerializationError: neither can serialize ``obj``.
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        data: bytes = dill.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL, recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {type(obj).__name__} object: {type(exc).__name__}: {exc}"
        ) from exc
    return data


def loads_value(data: bytes) -> Any:
    """Inverse of ``dumps_value`` (what dill wrote names dill's own loaders, which
    ``pickle`` imports)."""
    return pickle.loads(data)
