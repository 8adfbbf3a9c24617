"""Serialization of the mapped callable with dill: the only module that imports dill.

The callable is serialized once per map call and shipped once through the object store;
items and results never pass through here, they go through Ray's own serializer (which is
zero-copy for numpy arrays).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import dill

from ._errors import SerializationError

__all__ = ["dumps_callable", "item_key", "loads_callable"]


def dumps_callable(fn: Callable[..., Any]) -> tuple[bytes, str]:
    """Serialize ``fn`` (a function, lambda, closure, partial or callable object).

    Returns:
        ``(blob, digest)``: the dill bytes and a hex digest that identifies them, which
        workers use to cache the deserialized callable.

    Raises:
        SerializationError: ``fn`` (or something it refers to) cannot be serialized; the
            message names the object and the reason.
    """
    try:
        blob = dill.dumps(fn, recurse=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize the callable {fn!r} to send it to Ray workers: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return blob, hashlib.blake2b(blob, digest_size=16).hexdigest()


def loads_callable(blob: bytes) -> Callable[..., Any]:
    """Inverse of ``dumps_callable``."""
    fn: Callable[..., Any] = dill.loads(blob)
    return fn


def item_key(item: Any) -> str:
    """A key for ``item`` in a checkpoint: a digest of its dill serialization."""
    try:
        data = dill.dumps(item)
    except Exception:
        data = repr(item).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(data, digest_size=20).hexdigest()
