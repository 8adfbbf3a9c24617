"""Ray's lifecycle: lazy local init, existing Ray respected, unreachable address fails fast.

Tests that need a process without Ray run a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import square
from raypool import ClusterUnreachableError, RayMap
from raypool._runtime import check_reachable


def run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_unreachable_address_is_a_clear_error_within_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=r"127\.0\.0\.1:1"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(ClusterUnreachableError, match=r"ray://127\.0\.0\.1:2"):
        check_reachable("ray://127.0.0.1:2")
    assert time.monotonic() - started < 30


def test_unreachable_address_never_falls_back_to_a_local_instance() -> None:
    proc = run_python(
        """
        import ray
        from raypool import RayMap, ClusterUnreachableError
        try:
            RayMap(abs, address="127.0.0.1:1").map([1])
        except ClusterUnreachableError as exc:
            print("unreachable:", exc)
        print("initialized:", ray.is_initialized())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "unreachable: no Ray cluster answers at '127.0.0.1:1'" in proc.stdout
    assert "initialized: False" in proc.stdout


def test_lazy_local_init_on_first_use_and_no_io_in_the_constructor() -> None:
    proc = run_python(
        """
        import ray
        from raypool import RayMap
        rmap = RayMap(lambda x: x + 1, runtime_env={"env_vars": {"RAYPOOL_T": "yes"}})
        print("after constructor:", ray.is_initialized())
        print(rmap.map(range(3)))
        import os
        print(RayMap(lambda _: os.environ.get("RAYPOOL_T")).map([0]))
        print("after map:", ray.is_initialized())
        it = RayMap(lambda x: x).imap(range(1000))
        next(it)
        ray.shutdown()  # the iterator outlives Ray: dropping it must stay quiet
        del it
        """
    )
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "after constructor: False" in proc.stdout
    assert "[1, 2, 3]" in proc.stdout
    assert "['yes']" in proc.stdout  # runtime_env went to the ray.init raypool made
    assert "after map: True" in proc.stdout


def test_existing_ray_is_used_as_is() -> None:
    import ray

    context_before = ray.get_runtime_context().get_job_id()
    # address is ignored when Ray is already initialized: no re-init, no error
    assert RayMap(square, address="127.0.0.1:1").map([3]) == [9]
    assert ray.get_runtime_context().get_job_id() == context_before


def test_runtime_env_goes_to_the_tasks_when_ray_was_started_elsewhere() -> None:
    def read_env(_: object) -> str | None:
        return os.environ.get("RAYPOOL_TASK_ENV")

    rmap = RayMap(read_env, runtime_env={"env_vars": {"RAYPOOL_TASK_ENV": "set"}})
    assert rmap.map([0]) == ["set"]


def test_remote_options_reach_the_tasks() -> None:
    def gpus(_: object) -> list[int]:
        import ray

        return list(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))

    # num_cpus=2 on a 2-CPU cluster: tasks still run (one at a time)
    assert RayMap(square, remote_options={"num_cpus": 2}).map(range(4)) == [0, 1, 4, 9]
    assert RayMap(gpus, remote_options={"num_cpus": 0.5}).map([0]) == [[]]
