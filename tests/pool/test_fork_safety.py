"""A process forked from a raypool driver never touches Ray; raypool in it is a clear error.

Each scenario is a driver subprocess connected to the session's Ray, with a hard time bound:
before the fix, the stdlib's fork-based pools hung in ``join()`` and broke the driver's Ray
connection. Ray's own calls in a forked child are refused too, and the parent's refs it
drops release nothing (releasing one there once hung a ``multiprocessing`` worker at
random: the lock it waits on may have been held by a parent thread at the fork).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import raypool

_PRELUDE = """
import concurrent.futures, multiprocessing, os, sys
import ray, raypool

ray.init(address=sys.argv[1], logging_level="error")

def sq(x):
    return x * x

def use_raypool(_=None):
    try:
        raypool.Pool(1).map(sq, [1])
    except raypool.ForkedProcessError as exc:
        return f"refused: {exc}"
    return "used"

held = [ray.put(i) for i in range(50)]

def use_ray(_=None):
    try:
        ray.get(held[0], timeout=30)
    except raypool.ForkedProcessError as exc:
        return f"refused: {exc}"
    return "used"
"""

_STDLIB_POOLS = """
fork = multiprocessing.get_context("fork")
q = fork.Pool(2)
print("mp.Pool", q.map(sq, range(5)), flush=True)
print("raypool in a worker", q.apply(use_raypool), flush=True)
print("Ray in a worker", q.apply(use_ray), flush=True)
q.close()
q.join()
with concurrent.futures.ProcessPoolExecutor(2, mp_context=fork) as ex:
    print("PPE", list(ex.map(sq, range(5))), flush=True)
pid = os.fork()
if pid == 0:
    print("raypool in the child", use_raypool(), flush=True)
    print("Ray in the child", use_ray(), flush=True)
    held.clear()  # the parent's refs, dropped here: the parent's are untouched
    sys.exit(0)  # a normal exit: the interpreter's exit hooks run in the child
_, status = os.waitpid(pid, 0)
print("os.fork child exit", os.waitstatus_to_exitcode(status), flush=True)
print("parent's refs", sum(ray.get(held)), flush=True)
with raypool.Pool(2) as p:
    print("raypool after", p.map(sq, range(5)), flush=True)
"""

SCENARIOS = {
    "pool-early-exit": """
with raypool.Pool(2) as p:
    it = p.imap(sq, range(100_000))
    next(it)
""",
    "pool-finished-map": """
with raypool.Pool(2) as p:
    p.map(sq, range(1000))
""",
    "pool-still-open": """
p = raypool.Pool(2)
it = p.imap(sq, range(100_000))
next(it)
""",
    "engine-early-exit": """
it = raypool.RayMap(sq).imap(range(100_000))
next(it)
it.close()
""",
    "engine-still-open": """
it = raypool.RayMap(sq).imap(range(100_000))
next(it)
""",
}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a driver; one that hangs fails with the Python stacks of each of its
    processes (the forked ones too: faulthandler's signal handler survives a fork)."""
    import ray

    address = ray.get_runtime_context().gcs_address
    dump = "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1, all_threads=True)\n"
    args = [sys.executable, "-c", dump + code, address]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"hung; its processes' stacks:\n{err}\n-- stdout:\n{out}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fork_children_never_touch_ray(scenario: str) -> None:
    code = textwrap.dedent(_PRELUDE) + SCENARIOS[scenario] + _STDLIB_POOLS
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "mp.Pool [0, 1, 4, 9, 16]" in out
    assert "PPE [0, 1, 4, 9, 16]" in out
    assert "os.fork child exit 0" in out
    assert "raypool after [0, 1, 4, 9, 16]" in out
    assert "parent's refs 1225" in out
    for where in ("raypool in a worker", "Ray in a worker", "raypool in the child"):
        assert f"{where} refused: " in out, out
    assert "Ray in the child refused: Ray cannot run in this process" in out, out
    assert "start method" in out
    assert "spawn" in out
    for sign in ("RaySystemError", "authority", "Traceback", "Exception ignored"):
        assert sign not in proc.stderr, proc.stderr


def test_a_child_forked_before_ray_started_may_use_raypool() -> None:
    """Only an inherited Ray connection is refused: a child forked before the parent used
    Ray starts or connects to its own."""
    code = textwrap.dedent(
        """
        import os, sys
        import raypool

        def sq(x):
            return x * x

        pid = os.fork()
        if pid == 0:
            import ray
            ray.init(address=sys.argv[1], logging_level="error")
            with raypool.Pool(1) as p:
                print("child", p.map(sq, range(3)), flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("exit", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "child [0, 1, 4]" in proc.stdout
    assert "exit 0" in proc.stdout


def test_ray_log_records_in_a_forked_child_name_no_ray_process() -> None:
    """Ray's structured logging asks Ray who the process is on every record: in a forked
    child, no one (nil ids), and logging works."""
    code = textwrap.dedent(
        """
        import logging, os, sys
        import ray, raypool

        config = ray.LoggingConfig(encoding="TEXT", log_level="INFO")
        ray.init(address=sys.argv[1], logging_level="error", logging_config=config)

        def sq(x):
            return x * x

        print("parent", raypool.RayMap(sq).map(range(3)), flush=True)
        pid = os.fork()
        if pid == 0:
            logging.getLogger("child").warning("logged in the child")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "child exit 0" in proc.stdout, proc.stderr
    assert "logged in the child" in proc.stderr
    assert "job_id=ffffffff" in proc.stderr


def test_what_a_child_inherited_refuses_to_wait_there() -> None:
    """Iterators and results a forked child inherited from its parent raise
    ``ForkedProcessError`` once they would need Ray or the parent's threads - never hang."""
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(
        """
        import time

        def drain(iterator):
            for _ in range(1_000_000):
                next(iterator)

        engine = raypool.RayMap(sq).imap(range(1_000_000))
        next(engine)
        pool = raypool.Pool(2)
        stream = pool.imap(sq, range(1_000_000))
        next(stream)
        result = pool.apply_async(time.sleep, (3600,))
        pid = os.fork()
        if pid == 0:
            for name, use in (
                ("engine", lambda: drain(engine)),
                ("imap", lambda: drain(stream)),
                ("result", result.get),
                ("submit", lambda: pool.submit(sq, 2)),
            ):
                try:
                    use()
                except raypool.ForkedProcessError as exc:
                    print(name, "refused:", exc, flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        pool.terminate()
        engine.close()
        print("after", raypool.RayMap(sq).map(range(4)), flush=True)
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    for name in ("engine", "imap", "result", "submit"):
        assert f"{name} refused: " in proc.stdout, proc.stdout
    assert "child exit 0" in proc.stdout
    assert "after [0, 1, 4, 9]" in proc.stdout


def test_sigterm_ends_a_forked_child_as_without_ray() -> None:
    """A child forked from a driver connected to Ray, ``terminate()``d, ends by ``SIGTERM``'s
    default action (``exitcode == -SIGTERM``, as the stdlib documents), not by the handler
    ``ray.init`` set - a Python handler that a child blocked in C can miss, which once left
    ``Pool.terminate()`` waiting forever. A ``SIGTERM`` handler of the user's stays."""
    tests = Path(__file__).resolve().parents[1]
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(
        f"""
        import signal
        sys.path.insert(0, {str(tests)!r})
        from helpers import forked_child_exitcode_on_sigterm

        print("driver", forked_child_exitcode_on_sigterm(), flush=True)
        print("raypool", raypool.Pool(1).map(sq, [3]), flush=True)
        print("after raypool", forked_child_exitcode_on_sigterm(), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(7))
        print("user's handler", forked_child_exitcode_on_sigterm(), flush=True)
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"driver {-signal.SIGTERM}" in out, out
    assert "raypool [9]" in out, out
    assert f"after raypool {-signal.SIGTERM}" in out, out
    assert "user's handler 7" in out, out


@pytest.mark.parametrize("actors", [False, True], ids=["task", "actor"])
def test_sigterm_ends_a_child_forked_in_a_task(actors: bool) -> None:
    """The same in a child forked inside a task or a kept actor, where Ray's worker loop set
    the handler (``joblib``'s ``multiprocessing`` backend nested in a ``"raypool"`` batch)."""
    from helpers import forked_child_exitcode_on_sigterm

    with raypool.Pool(1, actors=actors) as pool:
        assert pool.apply(forked_child_exitcode_on_sigterm) == -signal.SIGTERM
