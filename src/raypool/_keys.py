"""Content keys for checkpoints: what identifies an item, and what identifies a function.

A checkpoint must find an item's recorded outcome in a later run, in another process, under
another ``PYTHONHASHSEED``. Pickle bytes are no such key: a ``set`` pickles in hash order,
which changes with every interpreter for strings, and two equal dicts built in different
orders pickle differently. ``item_key`` therefore feeds a canonical encoding of the item to
BLAKE2b:

* ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes`` by value, with a
  type tag: ``1``, ``1.0`` and ``True`` are equal in Python but need not be to ``fn``;
* ``tuple`` and ``list`` element by element; ``dict``, ``set`` and ``frozenset`` as the
  sorted digests of their entries, so neither insertion nor hash order matters;
* classes and functions by qualified name;
* any other object through its pickle reduction (``copyreg`` / ``__reduce_ex__``): the
  reconstructor by name, then its arguments and state encoded as above. Dataclasses, named
  tuples, enums, dates, paths and numpy arrays (raw bytes) all key by content this way;
* past ``MAX_DEPTH`` levels (a cycle) the rest is keyed by its pickle bytes.

An item that cannot be encoded at all (it holds a lock, a socket...) has no key and is
computed on every run. ``fingerprint`` names a function for ``checkpoint=True`` the same way:
its module, qualified name and a digest of its code, defaults and closure.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import types
from collections.abc import Callable
from typing import Any

from ._serialization import dumps_value

__all__ = ["KEY_BYTES", "MAX_DEPTH", "fingerprint", "item_key", "key_salt"]

#: Bytes of an item key. 128 bits: a collision among a billion items has odds of ~1e-20.
KEY_BYTES = 16

#: Nesting below which containers are encoded element by element; deeper (or cyclic)
#: structures are keyed by their pickle bytes, which only identical runs reproduce.
MAX_DEPTH = 64

_Hash = Any  # hashlib's BLAKE2b object (its class is private)


def key_salt(unpack: str, batched: bool) -> bytes:
    """The salt of ``item_key`` for a call mode: how an item is passed to the function."""
    return f"{unpack}:{batched}:".encode()


def item_key(item: Any, salt: bytes = b"") -> bytes | None:
    """The content key of ``item``, or ``None`` if it cannot be encoded.

    ``salt`` separates keys of the same item under different call modes (``fn(item)``
    and ``fn(*item)`` are different calls).
    """
    h = hashlib.blake2b(salt, digest_size=KEY_BYTES)
    if type(item) is int:  # the commonest item, inline
        h.update(b"i%d;" % item)
        return h.digest()
    try:
        _feed(h, item, 0)
    except Exception:
        return None
    return h.digest()


def _digest(obj: Any, depth: int) -> bytes:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    _feed(h, obj, depth)
    return h.digest()


def _feed(h: _Hash, obj: Any, depth: int) -> None:
    t = type(obj)
    if t is int:
        h.update(b"i%d;" % obj)
    elif t is str:
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(data))
        h.update(data)
    elif t is float:
        h.update(b"f%s;" % obj.hex().encode())
    elif obj is None:
        h.update(b"N")
    elif t is bool:
        h.update(b"T" if obj else b"F")
    elif t is bytes or t is bytearray:
        h.update(b"b%d:" % len(obj) if t is bytes else b"B%d:" % len(obj))
        h.update(obj)
    elif depth >= MAX_DEPTH:
        data = dumps_value(obj)
        h.update(b"p%d:" % len(data))
        h.update(data)
    elif t is tuple or t is list:
        h.update(b"(%d:" % len(obj) if t is tuple else b"[%d:" % len(obj))
        for element in obj:
            _feed(h, element, depth + 1)
    elif t is dict:
        h.update(b"{%d:" % len(obj))
        for pair in sorted(_digest(k, depth + 1) + _digest(v, depth + 1) for k, v in obj.items()):
            h.update(pair)
    elif t is set or t is frozenset:
        h.update(b"<%d:" % len(obj) if t is set else b">%d:" % len(obj))
        for digest in sorted(_digest(element, depth + 1) for element in obj):
            h.update(digest)
    elif t is complex:
        h.update(b"c%s;" % repr(obj).encode())
    else:
        _feed_object(h, obj, depth)


def _feed_object(h: _Hash, obj: Any, depth: int) -> None:
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        name = _qualified_name(obj)
        if "<" in name:  # a lambda or a local: no name to find it by
            data = dumps_value(obj)
            h.update(b"p%d:" % len(data))
            h.update(data)
        else:
            h.update(b"g%s;" % name.encode())
        if isinstance(obj, types.BuiltinFunctionType) and not isinstance(
            obj.__self__, (types.ModuleType, type(None))
        ):
            _feed(h, obj.__self__, depth + 1)  # a bound builtin such as dict.fromkeys
        return
    reduce = copyreg.dispatch_table.get(type(obj))
    reduced = reduce(obj) if reduce is not None else obj.__reduce_ex__(4)
    if isinstance(reduced, str):  # a module-level singleton, pickled by name
        h.update(b"g%s.%s;" % (type(obj).__module__.encode(), reduced.encode()))
        return
    constructor, args, *rest = reduced
    h.update(b"r%d:" % len(reduced))
    _feed_object(h, constructor, depth + 1)
    _feed(h, tuple(args), depth + 1)
    state, list_items, dict_items = (*rest, None, None, None)[:3]
    _feed(h, state, depth + 1)
    _feed(h, None if list_items is None else list(list_items), depth + 1)
    _feed(h, None if dict_items is None else dict(dict_items), depth + 1)


def _qualified_name(obj: Any) -> str:
    owner = getattr(obj, "__objclass__", None)  # a method of a builtin type: str.upper
    module = getattr(obj, "__module__", None) or getattr(owner, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


# -- functions -----------------------------------------------------------------------------

#: Closures deeper than this (a recursive local function holds itself) are named, not hashed.
_MAX_CALLABLE_DEPTH = 8


def fingerprint(fn: Callable[..., Any]) -> str:
    """A readable identity of ``fn`` that is stable across runs: ``module.qualname-digest``.

    The digest covers the function's bytecode, constants and names (not its line numbers:
    moving it in its file keeps the identity), its defaults and its closure's values -
    recursively for ``functools.partial``, bound methods and callable objects. Editing the
    function gives a new fingerprint; editing a global it reads does not. Values that
    cannot be encoded count by their type only.
    """
    target = fn.func if isinstance(fn, functools.partial) else fn
    if not isinstance(target, (types.FunctionType, types.MethodType, type)):
        named = getattr(target, "__qualname__", None)
        target = target if named else type(target)
    h = hashlib.blake2b(digest_size=8)
    _feed_callable(h, fn, 0)
    return f"{_qualified_name(target)}-{h.hexdigest()}"


def _feed_callable(h: _Hash, fn: Any, depth: int) -> None:
    if depth > _MAX_CALLABLE_DEPTH:
        h.update(b"g%s;" % _qualified_name(fn).encode())
    elif isinstance(fn, functools.partial):
        h.update(b"P")
        _feed_callable(h, fn.func, depth + 1)
        _feed_lenient(h, fn.args)
        _feed_lenient(h, fn.keywords)
    elif isinstance(fn, types.MethodType):
        h.update(b"M")
        _feed_callable(h, fn.__func__, depth + 1)
        _feed_lenient(h, fn.__self__)
    elif isinstance(fn, types.FunctionType):
        h.update(b"F%s;" % _qualified_name(fn).encode())
        _feed_code(h, fn.__code__)
        _feed_lenient(h, fn.__defaults__)
        _feed_lenient(h, fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                h.update(b"E")
                continue
            if isinstance(value, (types.FunctionType, functools.partial, types.MethodType)):
                _feed_callable(h, value, depth + 1)
            else:
                _feed_lenient(h, value)
    elif isinstance(fn, (type, types.BuiltinFunctionType)) or not callable(fn):
        h.update(b"g%s;" % _qualified_name(fn).encode())
    else:  # a callable object: its class's __call__ and its state
        h.update(b"O%s;" % _qualified_name(type(fn)).encode())
        _feed_callable(h, type(fn).__call__, depth + 1)
        _feed_lenient(h, fn)


def _feed_code(h: _Hash, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        else:
            _feed_lenient(h, const)


def _feed_lenient(h: _Hash, value: Any) -> None:
    try:
        digest = _digest(value, 0)
    except Exception:
        digest = b"?%s;" % _qualified_name(type(value)).encode()
    h.update(digest)
