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

``multiprocessing`` objects (the one place that knows them): a ``Manager()`` proxy is
pickled with its manager's authkey while raypool pickles for Ray's workers (``shipping``),
as ``multiprocessing`` does for the children it spawns - a Ray worker's own authkey is not
the driver's. A ``Queue``, ``Lock``, ``Event``... (not a proxy) lives in this process and
the processes ``multiprocessing`` starts, never in a Ray worker: ``check_shareable`` and
the callable's pickling refuse it with ``NotShareableError``, which names ``Manager()``.
``shipping`` lifts ``multiprocessing``'s guard (``assert_spawning``) for everything pickled
under it, so only calls whose function, ``initargs`` or first item hold a proxy use it, and
their items are checked task by task.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import hashlib
import importlib
import io
import multiprocessing.connection
import multiprocessing.queues
import operator
import os
import pickle
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import get_spawning_popen, set_spawning_popen
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType, SimpleNamespace
from typing import Any

import dill

from ._errors import NotShareableError, SerializationError

__all__ = [
    "callable_state",
    "check_items",
    "check_shareable",
    "dumps_callable",
    "dumps_value",
    "loads_callable",
    "loads_value",
    "same_state",
    "shipping",
    "user_paths",
]


def _unshareable_types() -> tuple[type, ...]:
    types: list[type] = [
        multiprocessing.queues.Queue,  # JoinableQueue too
        multiprocessing.queues.SimpleQueue,
        multiprocessing.connection.Connection,
    ]
    try:  # needs a working sem_open
        import _multiprocessing  # type: ignore[import-not-found]  # no stubs
        from multiprocessing import sharedctypes, synchronize
    except ImportError:
        return tuple(types)
    types += [_multiprocessing.SemLock]  # what a bound method like lock.acquire holds
    types += [synchronize.SemLock, synchronize.Condition, synchronize.Event]
    types += [synchronize.Barrier, sharedctypes.SynchronizedBase]
    return tuple(types)


#: ``multiprocessing`` objects that only processes ``multiprocessing`` starts can receive.
_UNSHAREABLE = _unshareable_types()


def _unshareable(obj: object, where: str) -> NotShareableError:
    kind = f"multiprocessing.{type(obj).__qualname__}"
    return NotShareableError(
        f"{where} holds a {kind}, which only processes that multiprocessing starts can "
        "share, not Ray's workers: use the same object from a manager instead - "
        "manager = multiprocessing.Manager(), then manager.Queue(), manager.Lock(), "
        "manager.Event(), manager.dict()... (its proxies work in the workers on this "
        "machine)"
    )


class _Workers:
    """The "process being spawned" while raypool pickles for Ray's workers (``shipping``):
    ``Manager()`` proxies then include their authkey; a pipe cannot be handed over."""

    def duplicate_for_child(self, fd: int) -> int:
        raise NotShareableError(
            "a multiprocessing pipe or queue cannot be sent to Ray's workers: use a "
            "multiprocessing.Manager().Queue() instead"
        )


_WORKERS = _Workers()


class _Shipping:
    """``shipping()``: a class rather than a generator, for it wraps every task's submit."""

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = get_spawning_popen()
        set_spawning_popen(_WORKERS)  # type: ignore[arg-type]  # only tested against None

    def __exit__(self, *exc_info: object) -> None:
        set_spawning_popen(self._previous)


def shipping() -> contextlib.AbstractContextManager[None]:
    """While this thread pickles for Ray's workers: ``Manager()`` proxies carry their
    manager's authkey (``BaseProxy.__reduce__`` includes it for a process being spawned),
    so that they connect from a worker, whose own authkey is not this process's."""
    return _Shipping()


class _NullFile:
    def write(self, data: Any) -> int:
        return len(data)


class _Scanner(pickle.Pickler):
    """Pickles into nothing, to find an unshareable object and note manager proxies: at C
    speed for containers and plain values, which never reach ``reducer_override``; large
    buffers are not copied."""

    def __init__(self, where: str) -> None:
        super().__init__(_NullFile(), protocol=5, buffer_callback=_ignore)
        self.where = where
        self.proxies = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _UNSHAREABLE):
            raise _unshareable(obj, self.where)
        if type(obj).__module__.partition(".")[0] == "ray":
            return tuple, ()  # an ObjectRef, an actor handle: pickling them registers them
        self.proxies = self.proxies or _is_proxy(obj)
        return NotImplemented


def _ignore(_: Any) -> None:
    pass


def _is_proxy(obj: object) -> bool:
    managers = sys.modules.get("multiprocessing.managers")  # none exists before its import
    return managers is not None and isinstance(obj, managers.BaseProxy)


def check_shareable(values: Iterable[Any], where: str) -> bool:
    """Raise ``NotShareableError`` if one of ``values`` (or anything in it) is a
    ``multiprocessing`` queue, lock, event, pipe... that Ray's workers cannot receive.
    ``where`` names the values in the message (``"an initarg"``). Returns whether they
    hold ``Manager()`` proxies (to be pickled under ``shipping()``). It pickles them into
    nothing: for arguments sent once (``initargs``), not for every call's items
    (``check_items``). What ``pickle`` cannot pickle otherwise is left to Ray to judge."""
    proxies = False
    for value in values:
        scanner = _Scanner(where)
        try:
            scanner.dump(value)
        except NotShareableError:
            raise
        except Exception:  # not picklable by pickle (a lambda...): Ray's serializer decides
            pass
        proxies = proxies or scanner.proxies
    return proxies


def check_items(items: Iterable[Any], where: str) -> bool:
    """``check_shareable`` for a call's items or arguments, cheaply: each item, what a
    tuple, list, dict or ``partial`` item holds (``starmap``'s ``(queue, x)``, ``submit``'s
    arguments), and the attributes of those that pickle as their ``__dict__`` (an object
    holding ``self.queue = manager.Queue()``); deeper objects are Ray's serializer's to
    refuse."""
    proxies = False
    for item in items:
        for value in _shallow(item):
            for found in (value, *_attributes(value)):
                if isinstance(found, _UNSHAREABLE):
                    raise _unshareable(found, where)
                proxies = proxies or _is_proxy(found)
    return proxies


#: What a class defines when it chooses what of an instance is pickled.
_PICKLING_HOOKS = ("__reduce_ex__", "__reduce__", "__getstate__")


def _attributes(value: Any) -> Iterable[Any]:
    """The attributes of ``value`` if pickling it pickles them as they are: an instance
    of a class that does not say how it pickles (its ``__dict__`` is its state), or a
    ``SimpleNamespace``."""
    if not _pickles_its_dict(type(value)):
        return ()
    try:
        attributes = getattr(value, "__dict__", None)
    except Exception:  # a __getattr__ that raises something else than AttributeError
        return ()
    return attributes.values() if type(attributes) is dict else ()


#: ``_pickles_its_dict``'s answers, per class (all forgotten past this many classes).
_TYPES_KEPT = 1024
_pickles_dict: dict[type, bool] = {}


def _pickles_its_dict(kind: type) -> bool:
    answer = _pickles_dict.get(kind)
    if answer is None:
        if issubclass(kind, SimpleNamespace):
            answer = True
        elif issubclass(kind, (type, ModuleType, FunctionType)) or kind in copyreg.dispatch_table:
            answer = False  # pickled by reference, or as its registered reducer says
        else:
            hooks = (hook in vars(base) for base in kind.__mro__[:-1] for hook in _PICKLING_HOOKS)
            answer = not any(hooks)
        if len(_pickles_dict) >= _TYPES_KEPT:
            _pickles_dict.clear()
        _pickles_dict[kind] = answer
    return answer


def _shallow(item: Any) -> Iterator[Any]:
    yield item
    if isinstance(item, (tuple, list)):
        for value in item:
            yield value
            if isinstance(value, (tuple, list)):  # submit's (args, kwargs) pair
                yield from value
            elif isinstance(value, dict):
                yield from value.values()
    elif isinstance(item, dict):
        yield from item.values()
    elif isinstance(item, functools.partial):
        yield from item.args
        yield from item.keywords.values()


class _CallablePickler(dill.Pickler):  # type: ignore[misc]
    """dill, with two exceptions: a module is pickled by name - the worker imports it, as
    a ``multiprocessing`` child does - where dill would pickle a module from outside
    ``site-packages`` (an editable install, a project directory) by value, with every
    global of it; and ``multiprocessing`` queues, locks... are refused."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ModuleType):
            name = obj.__name__
            if name not in _MAIN_MODULES and sys.modules.get(name) is obj:
                return importlib.import_module, (name,)
            return NotImplemented
        if isinstance(obj, _UNSHAREABLE):
            raise _unshareable(obj, "the function")
        return NotImplemented


#: Modules dill must pickle by value: the driver's script is not the worker's.
_MAIN_MODULES = frozenset({"__main__", "__mp_main__"})


def _dill_dumps(fn: Callable[..., Any]) -> bytes:
    file = io.BytesIO()
    with shipping():
        _CallablePickler(file, recurse=True).dump(fn)
    return file.getvalue()


def callable_state(fn: Callable[..., Any]) -> tuple[Any, ...] | None:
    """What a serialized copy of ``fn`` captured besides ``fn`` itself, to tell whether a
    copy made earlier still stands for it (compare with ``same_state``); ``None`` when that
    cannot be told cheaply - a bound method, a partial, a callable object: their state may
    change between calls, and the stdlib pickles them for every call.

    For a function: its code, its defaults, the values of its closure cells and of the
    globals its code reads - and the same of the ``__main__`` and nested functions among
    those, which travel by value with it. Rebinding one (``factor = 3``) calls for a new
    copy; a change inside a mutable value (``config["k"] = 3``) is not seen.
    """
    if isinstance(fn, BuiltinFunctionType):  # len, math.sqrt: by reference, no state
        owner = getattr(fn, "__self__", None)
        return () if owner is None or isinstance(owner, ModuleType) else None
    if type(fn) is not FunctionType:
        return None
    state: list[Any] = []
    _function_state(fn, state, set())
    return tuple(state)


def _function_state(fn: FunctionType, state: list[Any], seen: set[int]) -> None:
    seen.add(id(fn))
    cells = [_cell_value(cell) for cell in fn.__closure__ or ()]
    namespace = fn.__globals__
    read = [namespace.get(name, _UNSET) for name in _global_names(fn.__code__)]
    state += (fn.__code__, fn.__defaults__, fn.__kwdefaults__, *cells, *read)
    for value in (*cells, *read):
        if type(value) is FunctionType and id(value) not in seen and _by_value(value):
            _function_state(value, state, seen)


def _by_value(fn: FunctionType) -> bool:
    """Whether dill copies ``fn`` (rather than naming it): ``__main__`` and nested ones."""
    return fn.__module__ in _MAIN_MODULES or "<locals>" in fn.__qualname__


def same_state(one: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    """Whether two ``callable_state``s hold the very same objects."""
    return len(one) == len(other) and all(map(operator.is_, one, other))


_UNSET = object()


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not assigned yet
        return _UNSET


@functools.lru_cache(maxsize=1024)
def _global_names(code: CodeType) -> tuple[str, ...]:
    """The names ``code`` (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


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
        NotShareableError: it holds a ``multiprocessing`` queue, lock...
    """
    try:
        payload = _dill_dumps(fn)
    except NotShareableError:
        raise
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
