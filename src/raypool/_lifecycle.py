"""raypool's process lifecycle: what runs when the interpreter exits, and after a fork.

This module imports no Ray. Modules that hold process-wide state register with it, once,
at import; it owns the two hooks raypool installs in the interpreter:

* **Exit** - one hook, registered with ``threading._register_atexit``: it runs when the main
  thread ends, before ``atexit`` handlers, so before the ``ray.shutdown()`` that
  ``ray.init`` registers there (a thread still calling into Ray after that shutdown makes
  Ray end the process with status 1; ``concurrent.futures`` stops its threads through the
  same hook). It runs the registered callbacks phase by phase, in ``Phase`` order, never
  depending on which module was imported first:

  ====================  ======================================  ========================
  phase                 what                                    registered by
  ====================  ======================================  ========================
  ``FINISH_EXECUTORS``  no pool takes new work from now on;     ``_dispatch``
                        each ``ProcessPoolExecutor`` completes
                        what was submitted to it, as the
                        stdlib's does at exit
  ``CANCEL_CALLS``      every pool's calls are cancelled:       ``_dispatch``
                        cancel flags go up for their tasks
                        still running
  ``STOP_THREADS``      the pools' dispatcher threads end       ``_dispatch``
  ``CLOSE_STORES``      checkpoints commit what finished, close ``_store``
  ``FORGET_KEYS``       the cancel flags raised so far - also   ``_cancel``
                        in the phases above - are deleted from
                        Ray's key-value store
  ====================  ======================================  ========================

  From the hook's start, ``exiting()`` is true: pools refuse new work (an ``atexit``
  handler's ``submit`` raises, as the stdlib's executors do); after it, ``exited()`` is
  true, and nothing waits for a thread (a pool dropped then must not hang the exit).

* **Fork** - ``os.register_at_fork(after_in_child=...)``. A child forked from a raypool
  process (``multiprocessing``'s ``fork`` start method, ``os.fork()``) inherits raypool's
  objects and Ray's client connections, but none of the threads behind them; if it touches
  Ray it hangs and breaks the parent's connection. So in the child every registered reset
  runs (each module forgets the parent's dispatchers, stores, cancel keys and Ray
  connection), so the exit hook, which then runs in the child too, finds nothing of the
  parent's to act on. ``_runtime`` refuses to use a Ray connection inherited
  this way, with an error that names the ``spawn``/``forkserver`` start methods, and
  detaches Ray's own exit hooks from it. Objects that own threads or tasks (runs, pools,
  stores) also remember their process, and do nothing when a forked copy is closed.
  While ``SIGTERM`` has a Python handler, it is held (blocked in the forking thread, before
  and after hooks of ``os.register_at_fork``) from just before the fork until the child's
  resets have run: one sent to the child sooner - a ``multiprocessing`` pool terminated
  while its workers start - is acted on once they have, by the handler they leave (the
  default action, where ``_runtime`` removed Ray's), rather than dropped by Python's own
  after-fork work or raised inside a reset, where Python only prints it.

``LiveSet`` is the usual way to register: the live objects of one kind, acted on at exit,
forgotten after a fork.

Threads and locks of raypool, per process (who touches what):

=========================  ====================================================================
thread                     touches
=========================  ====================================================================
caller threads             a pool's core under its lock (state, the start of a call); the
                           dispatcher's event queue; an ``imap`` sink under its condition;
                           engine iterators (``MapIterator``) they consume; in a Ray worker,
                           a copy of the dispatcher's tasks in flight, to wait on them in
                           ``ray.wait`` (``Dispatcher.wait_until``); nothing else
dispatcher (one per pool)  every ``MapRun`` of its pool, their backends and stores' queues;
                           sinks under their condition; futures (``set_result``)
Ray's callback threads     only the dispatcher's event queue (``ObjectRef.future`` callbacks)
store writer (one/store)   its SQLite connection; the store's pending rows under its condition
main thread at exit        this module's hook, then each phase's callbacks as listed above
a forked child             none of the parent's threads; raypool's module-level locks and sets
                           are new in it, and the objects it inherited refuse work or do nothing
=========================  ====================================================================
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["Exit", "LiveSet", "Phase", "at_exit", "exited", "exiting", "forked_from", "on_fork"]

logger = logging.getLogger("raypool")

T = TypeVar("T")


class Phase(enum.IntEnum):
    """The phases of raypool's exit, in the order they run."""

    FINISH_EXECUTORS = 1
    CANCEL_CALLS = 2
    STOP_THREADS = 3
    CLOSE_STORES = 4
    FORGET_KEYS = 5


class Exit(enum.Enum):
    """Where this process is in its exit (``exiting()``, ``exited()``)."""

    #: The exit hook has not started.
    RUNNING = "running"
    #: The hook runs: pools take no new work; executors complete theirs.
    EXITING = "exiting"
    #: The hook has run (or was interrupted): nothing may wait for a thread any more.
    EXITED = "exited"


_exit_callbacks: list[tuple[Phase, int, Callable[[], None]]] = []
_fork_callbacks: list[Callable[[], None]] = []
#: The process whose exit the hook serves: the importing one, or the child after a fork.
_pid = os.getpid()
#: The pid of the process this one was forked from after raypool was imported, or ``None``.
_parent_pid: int | None = None
_exit = Exit.RUNNING


def at_exit(phase: Phase, callback: Callable[[], None]) -> None:
    """Run ``callback`` at exit in ``phase`` (within a phase, in the order registered).

    Call it once per callback, at import: a callback acts on its module's state, which
    ``on_fork`` resets in a forked child.
    """
    _exit_callbacks.append((phase, len(_exit_callbacks), callback))
    _exit_callbacks.sort(key=lambda entry: entry[:2])


def on_fork(reset: Callable[[], None]) -> None:
    """Run ``reset`` in a child process right after a fork: it must drop the parent's
    state (threads, locks, Ray objects) without calling into Ray or waiting on a lock."""
    _fork_callbacks.append(reset)


def exiting() -> bool:
    """Whether this process's exit hook has started: Ray may be going away."""
    return _exit is not Exit.RUNNING


def exited() -> bool:
    """Whether this process's exit hook has run: a thread may never end now."""
    return _exit is Exit.EXITED


def forked_from() -> int | None:
    """The pid of the process this one was forked from (after raypool was imported), or
    ``None`` if it was not."""
    return _parent_pid


class LiveSet(Generic[T]):
    """The live objects of one kind in this process (held weakly): at exit, each phase in
    ``actions`` applies its action to each of them; a forked child starts with none, for
    the parent's are the parent's.

    An action that raises is logged (at debug level) and the others go on: at exit there is
    no caller to report to.
    """

    def __init__(self, actions: Mapping[Phase, Callable[[T], object]]) -> None:
        self._live: weakref.WeakSet[T] = weakref.WeakSet()
        for phase, action in actions.items():
            at_exit(phase, lambda action=action: self._apply(action))  # type: ignore[misc]
        on_fork(self._forget)

    def add(self, obj: T) -> None:
        self._live.add(obj)

    def discard(self, obj: T) -> None:
        self._live.discard(obj)

    def _apply(self, action: Callable[[T], object]) -> None:
        for obj in list(self._live):
            try:
                action(obj)
            except Exception:
                logger.debug("raypool: at exit, %r failed", obj, exc_info=True)

    def _forget(self) -> None:
        self._live = weakref.WeakSet()


def _run_exit_hooks() -> None:
    global _exit
    if os.getpid() != _pid:
        return  # inherited through a fork that bypassed os.register_at_fork
    _exit = Exit.EXITING
    try:
        for phase, _, callback in list(_exit_callbacks):
            try:
                callback()
            except KeyboardInterrupt:  # Ctrl-C while executors finish: cancel, as the rest
                logger.warning("raypool: interrupted while %s; going on", phase.name)
            except Exception:  # one failing phase must not keep the others from running
                logger.exception("raypool: exit phase %s failed", phase.name)
    finally:
        _exit = Exit.EXITED


#: Signals held from just before a fork until the child's resets have run.
_HELD_AT_FORK = frozenset({signal.SIGTERM})
#: Per forking thread: the signals of ``_HELD_AT_FORK`` it had not blocked itself.
_held = threading.local()


def _before_fork() -> None:
    # Only a Python handler can miss a signal; the default action cannot.
    if not callable(signal.getsignal(signal.SIGTERM)):
        return
    # Recorded before blocking: pthread_sigmask runs pending handlers, which may raise.
    _held.signals = _HELD_AT_FORK - signal.pthread_sigmask(signal.SIG_BLOCK, ())
    signal.pthread_sigmask(signal.SIG_BLOCK, _held.signals)


def _release_held() -> None:
    signals: frozenset[int] = getattr(_held, "signals", frozenset())
    _held.signals = frozenset()
    if signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _after_fork_in_child() -> None:
    global _pid, _parent_pid, _exit
    _parent_pid, _pid = _pid, os.getpid()
    _exit = Exit.RUNNING
    try:
        for reset in _fork_callbacks:
            try:
                reset()
            except Exception:  # the others must still run; the child has no caller to tell
                logger.debug("raypool: a reset after fork failed", exc_info=True)
    finally:
        _release_held()  # a SIGTERM sent meanwhile is acted on now, by the reset's handler


def _install() -> None:
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:  # not CPython: the hook then runs among the atexit handlers
            raise RuntimeError
        register(_run_exit_hooks)
    except RuntimeError:  # or imported while the interpreter shuts down
        atexit.register(_run_exit_hooks)
    if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_release_held,
            after_in_child=_after_fork_in_child,
        )


_install()
