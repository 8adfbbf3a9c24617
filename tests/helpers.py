"""Module-level functions the tests map: importable by workers, picklable by reference."""

from __future__ import annotations

import argparse
import contextlib
import operator
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail_on(x: Any, bad: Any = 3) -> Any:
    if x == bad:
        raise ValueError(f"bad item {x!r}")
    return x


def sleep_then(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x


def hang_on(x: int, hang: tuple[int, ...] = (5, 17)) -> int:
    """Sleeps for an hour on the items in ``hang``, returns the others at once."""
    if x in hang:
        time.sleep(3600)
    return x


def spin_on(x: int, hang: tuple[int, ...] = (5,)) -> int:
    """Busy-loops in pure Python (never sleeping) on the items in ``hang``."""
    if x in hang:
        while True:
            pass
    return x


def pid_of(_: Any) -> int:
    return os.getpid()


def log_call(path: str, x: Any) -> Any:
    """Appends ``x`` to ``path`` (one line per call), returns it."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def log_call_square(path: str, x: int) -> int:
    """``log_call``, returning ``x * x``."""
    return log_call(path, x) * x


def log_then_hang(path: str, x: Any, seconds: float = 3600) -> Any:
    """``log_call`` (the test sees the item has started), then sleeps ``seconds``: until
    cancelled, as far as a test is concerned."""
    log_call(path, x)
    time.sleep(seconds)
    return x


def wait_for_path(path: str | Path, timeout: float = 60.0) -> bool:
    """Whether ``path`` exists within ``timeout`` seconds (checked every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for_lines(path: str | Path, count: int, timeout: float = 60.0) -> bool:
    """Whether ``path`` has at least ``count`` lines within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while count_lines(path) < count:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def square_when_released(marks: str, x: int, timeout: float = 20.0) -> int:
    """Logs ``x`` to ``marks/started``, then waits for the test to create ``marks/release``
    and returns ``x * x``; raises ``RuntimeError`` if no release comes within ``timeout``
    seconds."""
    log_call(os.path.join(marks, "started"), x)
    if not wait_for_path(os.path.join(marks, "release"), timeout):
        raise RuntimeError(f"item {x} was never released")
    return x * x


def driver_past(code: str, args: list[str], count: int) -> subprocess.Popen[str]:
    """A driver process running ``code`` (with ``args``, after the session's Ray address),
    once it has printed a line ``>= count``: its results are flowing."""
    import ray

    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", code, address, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert driver.stdout is not None
    for line in driver.stdout:
        if line.strip().isdigit() and int(line) >= count:
            return driver
    raise AssertionError(f"the driver ended before printing {count}")


def settled_line_count(path: str | Path, seconds: float = 1.0) -> int:
    """The line count of ``path`` once it has not changed for ``seconds`` (tasks of a
    stopped driver may still finish)."""
    before = -1
    while before != count_lines(path):
        before = count_lines(path)
        time.sleep(seconds)
    return before


def count_lines(path: str | Path) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class Unpicklable(Exception):
    """An exception carrying a lock: it cannot be pickled back to the driver."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        import threading

        self.lock = threading.Lock()


def raise_unpicklable(x: Any) -> Any:
    raise Unpicklable(f"cannot travel {x}")


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be unpickled (its __init__ wants two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_needs_two(x: Any) -> Any:
    raise NeedsTwoArgs("a", str(x))


def vector_double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


def vector_drop_one(batch: list[int]) -> list[int]:
    return [2 * x for x in batch[1:]]


def wait_until_idle(timeout: float = 30.0, cpus: int = 2, steady: float = 0.5) -> bool:
    """Whether every CPU of the cluster is free within ``timeout`` seconds and stays free
    for ``steady`` seconds (a queued task dispatched late would take one again)."""
    import ray

    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= cpus:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= steady:
                return True
        else:
            idle_since = None
        time.sleep(0.05)
    return False


def divide(a: float, b: float) -> float:
    return a / b


def slow_square(x: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return x * x


_STATE: list[Any] = []


def set_state(*values: Any) -> None:
    """An initializer: remembers ``values`` in this process."""
    _STATE[:] = values


def read_state(x: Any) -> tuple[Any, ...]:
    return (*_STATE, x)


def init_log(path: str) -> None:
    """An initializer that appends this process's pid to ``path``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def fail_init() -> None:
    raise RuntimeError("initializer failed on purpose")


def raise_runtime_error(_: Any = None) -> None:
    raise RuntimeError(123)  # a comment the traceback shows


def fail_first_log_rest(x: int, path: str) -> int:
    """Item 0 fails at once; the others sleep a little, then log that they finished."""
    if x == 0:
        raise ValueError("first item")
    time.sleep(0.3)
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total: int, when: int) -> Any:
    """As CPython's test helper: raises at item ``when``, or at once if ``when == -1``."""
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


def die_on(x: Any, bad: Any = 5) -> Any:
    """Kills its own worker process on ``bad``, as a crashing C extension would."""
    if x == bad:
        os._exit(3)
    return x


def segfault_on(x: Any, bad: Any = 5) -> Any:
    if x == bad:
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def log_then_die_on(path: str, x: Any, bad: Any = 5) -> Any:
    log_call(path, x)
    return die_on(x, bad)


def killed_once(path: str, x: Any, victim: Any = 3) -> Any:
    """On ``victim``, the first time only: writes its pid to ``path`` and waits (for the
    test to kill it)."""
    if x == victim and not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(300)
    return x


def flaky_until(path: str, x: Any) -> Any:
    """Logs each call; items 1 and 6 raise ``ConnectionError`` on their first two calls,
    item 3 always raises ``ValueError``."""
    log_call(path, x)
    if x in (1, 6) and Path(path).read_text().split().count(str(x)) <= 2:
        raise ConnectionError(f"flaky {x}")
    if x == 3:
        raise ValueError("bad 3")
    return x


def soak_kind(x: int, total: int) -> str:
    """What ``soak_work`` does with item ``x`` of ``total``: 1 % raise, 10 items kill their
    worker every time, 10 only the first time, 10 overrun a 1 s timeout; the rest square."""
    step = max(1, total // 10)
    if x % 100 == 7:
        return "error"
    if x % step == 13:
        return "crash"
    if x % step == 53:
        return "crash-once"
    if x % step == 89:
        return "timeout"
    return "ok"


def soak_work(marks: str, total: int, x: int) -> int:
    kind = soak_kind(x, total)
    if kind == "error":
        raise ValueError(f"bad item {x}")
    if kind == "crash":
        os._exit(3)
    if kind == "crash-once":
        mark = Path(marks, str(x))
        if not mark.exists():
            mark.touch()
            os._exit(3)
    if kind == "timeout":
        time.sleep(60)
    return x * x


def log_call_power(path: str, x: int, n: int) -> int:
    log_call(path, x)
    return int(x**n)


def payload(n: int) -> argparse.Namespace:
    """An object whose copies the tests can follow with weak references (of a class the
    workers import: Ray's serializer sends data classes by reference)."""
    return argparse.Namespace(n=n)


def identity(x: Any) -> Any:
    return x


class ErrorAtPickle:
    """Its pickling raises (as CPython's ``test_concurrent_futures`` ``ErrorAtPickle``)."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("error at pickle")


class ExitAtPickle:
    """Its pickling calls ``sys.exit``."""

    def __reduce__(self) -> Any:
        raise SystemExit(5)


class ErrorAtUnpickle:
    """Pickles, and its unpickling raises ``ZeroDivisionError`` (a stdlib function rebuilds
    it: the workers need not import this module to unpickle it)."""

    def __reduce__(self) -> Any:
        return operator.truediv, (1, 0)


class ExitAtUnpickle:
    """Pickles, and its unpickling calls ``sys.exit(7)``."""

    def __reduce__(self) -> Any:
        return sys.exit, (7,)


def bad_result_on(kind: str, x: Any, bad: Any = 2) -> Any:
    """``x``, except for ``bad``: an instance of the class named ``kind`` above."""
    return globals()[kind]() if x == bad else x


def exit_on(x: Any, bad: Any = 2, code: int = 3) -> Any:
    if x == bad:
        sys.exit(code)
    return x


def interrupt_on(x: Any, bad: Any = 2) -> Any:
    if x == bad:
        raise KeyboardInterrupt
    return x


def log_then_wait_for(path: str, count: int, x: Any, timeout: float = 60.0) -> bool:
    """Logs ``x``, then whether ``count`` calls logged within ``timeout`` seconds: only
    calls that run at once can all see each other."""
    log_call(path, x)
    return wait_for_lines(path, count, timeout)


def put_in(queue: Any, x: Any) -> Any:
    queue.put(x)
    return x


def set_shared(shared: Any) -> None:
    """An initializer: keeps ``shared`` (a manager's dict, ...) for ``use_shared``."""
    global _SHARED
    _SHARED = shared


_SHARED: Any = None


def use_shared(x: Any) -> Any:
    """Writes ``x`` into the initializer's shared dict, under its lock, and sets its event."""
    shared_dict, lock, event, namespace = _SHARED
    with lock:
        shared_dict[x] = x * x
        namespace.last = x
    event.set()
    return x


def task_id() -> str:
    """The id of the Ray task running this call (which calls shared a task)."""
    import ray

    return str(ray.get_runtime_context().get_task_id())


def task_name() -> str:
    """The name of the Ray task running this call (its remote function's)."""
    import ray

    return str(ray.get_runtime_context().get_task_name())


def put_in_store(x: Any) -> tuple[list[Any], str]:
    """``([ObjectRef of x], task id)``, put by the worker: the driver reads it through Ray."""
    import ray

    return [ray.put(x)], task_id()


def make_adder(n: int) -> Callable[[int], int]:
    """A closure: only cloudpickle can send it back to the driver."""
    return lambda x: x + n


def in_task(x: Any) -> tuple[Any, str]:
    return x, task_id()


def double_in_task(x: Any) -> tuple[Any, str]:
    return 2 * x, task_id()


def in_task_when(path: str, x: Any, timeout: float = 60.0) -> tuple[Any, str]:
    """``(x, task id)`` once ``path`` exists; raises if it does not within ``timeout``."""
    if not wait_for_path(path, timeout):
        raise RuntimeError(f"{path} never appeared")
    return x, task_id()


def hold(started: str, release: str, timeout: float = 60.0) -> str:
    """Creates ``started``, then waits for ``release``: keeps a worker (or a pool's one
    slot) busy until the test lets go."""
    Path(started).touch()
    if not wait_for_path(release, timeout):
        raise RuntimeError(f"{release} never appeared")
    return task_id()


def touch(path: str) -> str:
    Path(path).touch()
    return path


def cpus_in_task(x: Any) -> tuple[float, str]:
    """The CPUs Ray gave the task running this call, and its id."""
    import ray

    return ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0), task_id()


def die_now(x: Any) -> Any:
    os._exit(1)


class CountedPickles:
    """A callable that counts, in a file, how often it is pickled (``__reduce__``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        with open(self.path, "a") as log:
            log.write("pickled\n")
        return CountedPickles, (self.path,)

    def __call__(self, x: Any) -> Any:
        return x


def counted_closure(path: str) -> tuple[Any, Any]:
    """``(fn, set_factor)``: ``fn(x)`` is ``x * factor``, a closure that travels by value
    with a ``CountedPickles`` (each serialization of ``fn`` adds a line to ``path``);
    ``set_factor`` rebinds ``factor``."""
    marker = CountedPickles(path)
    factor = 1

    def fn(x: Any) -> Any:
        assert marker is not None  # travels with fn
        return x * factor

    def set_factor(value: Any) -> None:
        nonlocal factor
        factor = value

    return fn, set_factor


class Scaler:
    """A bound method's state: ``scale(x)`` is ``x * factor``."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def scale(self, x: Any) -> Any:
        return x * self.factor


def hang_noting_stop(started: str, stopped: str, timeout: float = 600.0) -> None:
    """Creates ``started``, then sleeps in short steps until stopped by an exception, when
    it creates ``stopped`` (its ``finally`` ran)."""
    Path(started).touch()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        Path(stopped).touch()


def stubborn(started: str, timeout: float = 600.0) -> None:
    """Writes its process id to ``started``, then swallows every exception raised into it
    (a cooperative stop included) until ``timeout``: only ending the process stops it."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(BaseException):
            time.sleep(0.01)


def buffered_map_in_task(n: int) -> list[int]:
    """``Executor.map(buffersize=2)`` from inside a pool's task (a nested pool)."""
    import raypool

    with raypool.ProcessPoolExecutor(1) as executor:
        return list(executor.map(square, range(n), buffersize=2))


def put_in_held(holder: Any, x: Any) -> Any:
    """Put ``x`` in the queue ``holder.held``."""
    holder.held.put(x)
    return x


def _wait_forever(started: Any, never: Any) -> None:
    started.set()
    while not never.wait(0.05):  # back in bytecode often: a Python handler gets its turn
        pass


def forked_child_exitcode_on_sigterm() -> int | None:
    """``exitcode`` of a ``fork`` child that this process ``terminate()``s (``SIGTERM``) -
    ``None`` if it is still alive 15 s later."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    started, never = fork.Event(), fork.Event()
    child = fork.Process(target=_wait_forever, args=(started, never))
    child.start()
    try:
        if not started.wait(15):
            return None
        child.terminate()
        child.join(15)
        return child.exitcode
    finally:
        if child.is_alive():
            child.kill()
            child.join()
