"""The joblib backend ``raypool`` (``raypool.joblib``) against a real Ray: joblib's own
``test_parallel.py``, the joblib tests that only name loky, what the backend adds, and a
scikit-learn grid search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from math import sqrt
from pathlib import Path
from typing import Any

import pytest

import raypool
from helpers import (
    cpus_in_task,
    die_on,
    hang_noting_stop,
    log_then_wait_for,
    pid_of,
    wait_for_path,
)

joblib = pytest.importorskip("joblib")
raypool_joblib = pytest.importorskip("raypool.joblib")
joblib_tests = pytest.importorskip("joblib.test.test_parallel")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITE_SECONDS = 900
#: Outcomes that count as passing (joblib marks a few of its own tests xfail).
PASSED = {"passed", "xpassed"}


def test_joblib_own_suite_passes_for_raypool_where_it_passes_for_loky(tmp_path: Path) -> None:
    """joblib's ``test_parallel.py`` with ``"raypool"`` among its backends, run beside loky
    in a subprocess on this session's Ray: every item parametrized with raypool passes
    but the known ones (``joblib_suite_plugin.KNOWN_FAILURES``, not run), and every test
    that passes with loky passes with raypool."""
    import ray
    from joblib_suite_plugin import KNOWN_FAILURES

    outcomes = tmp_path / "outcomes.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    command = [
        sys.executable, "-m", "pytest", "-p", "joblib_suite_plugin",
        "--pyargs", "joblib.test.test_parallel", "--only-backends", "raypool,loky",
        "--outcomes", str(outcomes), "-p", "no:cacheprovider", "-q",
        "--timeout", "120", "-o", "timeout_method=thread",
    ]  # fmt: skip
    running = Path(f"{outcomes}.running")
    try:
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUITE_SECONDS
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"joblib's suite did not end; it was in {running.read_text()}")
    last = running.read_text() if running.exists() else "none"
    assert outcomes.exists(), f"ended in {last}:\n{proc.stdout[-20000:]}\n{proc.stderr[-5000:]}"
    items: dict[str, dict[str, str]] = json.loads(outcomes.read_text())
    ours = {name: item for name, item in items.items() if item["backend"] == "raypool"}
    assert len(ours) >= 140, "the plugin did not add raypool to joblib's backends"
    not_run = {name for name, item in ours.items() if item["outcome"] == "xfailed"}
    assert not_run == set(KNOWN_FAILURES)
    failed = {n: item["outcome"] for n, item in ours.items() if n not in KNOWN_FAILURES}
    failed = {name: outcome for name, outcome in failed.items() if outcome not in PASSED}
    assert not failed, (failed, proc.stdout[-10000:])
    loky_passed = {
        i["test"] for i in items.values() if i["backend"] == "loky" and i["outcome"] in PASSED
    }
    behind_loky = {
        name
        for name, item in ours.items()
        if item["test"] in loky_passed and item["outcome"] not in PASSED
    } - set(KNOWN_FAILURES)
    assert not behind_loky, behind_loky


# -- joblib's tests that name only loky, run with raypool ---------------------------------------


def test_lambda_expression() -> None:
    joblib_tests.test_lambda_expression(raypool_joblib.NAME)


@pytest.mark.parametrize("return_as_1", ["generator", "generator_unordered"])
@pytest.mark.parametrize("return_as_2", ["generator", "generator_unordered"])
def test_multiple_generator_call_separated_gc(return_as_1: str, return_as_2: str) -> None:
    # Each Parallel call has a pool of its own (loky shares one executor: error=True there).
    joblib_tests.test_multiple_generator_call_separated_gc(
        raypool_joblib.NAME, return_as_1, return_as_2, error=False
    )


@pytest.mark.parametrize("context", [parallel_config, joblib.parallel_backend])
def test_nested_backend_context_manager(context: Any) -> None:
    joblib_tests.test_nested_backend_context_manager(context, raypool_joblib.NAME)


@pytest.mark.parametrize("context", [parallel_config, joblib.parallel_backend])
def test_nested_parallelism_limit(context: Any) -> None:
    with context(raypool_joblib.NAME, n_jobs=2):
        levels = joblib_tests._recursive_backend_info()
    assert levels == [
        ("RayPoolBackend", 0),
        ("ThreadingBackend", 1),
        ("SequentialBackend", 2),
        ("SequentialBackend", 2),
    ]


@pytest.mark.parametrize("context", [parallel_config, joblib.parallel_backend])
def test_thread_bomb_mitigation(context: Any) -> None:
    joblib_tests.test_thread_bomb_mitigation(context, raypool_joblib.NAME)


# -- what the backend adds ----------------------------------------------------------------------


def test_timeout_stops_the_tasks_still_running(tmp_path: Path) -> None:
    started, stopped = str(tmp_path / "started"), str(tmp_path / "stopped")
    with pytest.raises(joblib_tests.TimeoutError):
        Parallel(n_jobs=2, backend="raypool", timeout=1)(
            delayed(hang_noting_stop)(started, stopped) for _ in range(1)
        )
    assert wait_for_path(started)
    assert wait_for_path(stopped), "the task went on running after the timeout"


def test_an_error_stops_the_other_tasks(tmp_path: Path) -> None:
    started, stopped = str(tmp_path / "started"), str(tmp_path / "stopped")

    def fail_when_started() -> None:
        assert wait_for_path(started)
        raise ValueError("boom")

    calls = [delayed(hang_noting_stop)(started, stopped), delayed(fail_when_started)()]
    with pytest.raises(ValueError, match="boom"):
        Parallel(n_jobs=2, backend="raypool", batch_size=1)(calls)
    assert wait_for_path(stopped), "the other task went on running after the error"


def test_a_worker_that_dies_fails_its_call_and_the_next_call_runs() -> None:
    with pytest.raises(raypool.WorkerCrashedError):
        Parallel(n_jobs=2, backend="raypool", batch_size=1)(delayed(die_on)(i, 3) for i in range(6))
    assert Parallel(n_jobs=2, backend="raypool")(delayed(sqrt)(i * i) for i in range(10)) == [
        float(i) for i in range(10)
    ]


def test_results_stream_as_a_generator() -> None:
    with parallel_config(backend="raypool", n_jobs=2):
        ordered = Parallel(return_as="generator")(delayed(sqrt)(i * i) for i in range(20))
        assert next(ordered) == 0.0
        assert list(ordered) == [float(i) for i in range(1, 20)]
        unordered = Parallel(return_as="generator_unordered")(delayed(sqrt)(i) for i in range(9))
        assert sorted(unordered) == [sqrt(i) for i in range(9)]


def test_options_reach_the_pool_and_a_timeout_option_is_refused() -> None:
    with parallel_config(backend="raypool", n_jobs=2, remote_options={"num_cpus": 0.5}):
        cpus = [cpu for cpu, _ in Parallel()(delayed(cpus_in_task)(i) for i in range(4))]
    assert cpus == [0.5] * 4  # each batch's task asked Ray for what the options say
    with pytest.raises(ValueError, match=r"Parallel\(timeout=\.\.\.\)"):
        parallel_config(backend="raypool", timeout=5)


@pytest.mark.parametrize(("n_jobs", "cpus"), [(-1, 1.0), (2, 1.0), (4, 0.5)])
def test_in_tasks_n_jobs_batches_run_at_once_each_on_a_share_of_the_cluster(
    n_jobs: int, cpus: float
) -> None:
    # The whole cluster (2 CPUs): a CPU per batch, Ray running as many as fit. More jobs
    # than CPUs: that many at once, each on a share, as that many loky processes would run.
    with parallel_config(backend="raypool", n_jobs=n_jobs, actors=False):
        asked = Parallel(batch_size=1)(delayed(cpus_in_task)(i) for i in range(6))
    assert [cpu for cpu, _ in asked] == [cpus] * 6


@pytest.mark.parametrize(("n_jobs", "at_once"), [(-1, 2), (2, 2), (4, 4)])
def test_batches_run_in_kept_actors_n_jobs_at_once(
    tmp_path: Path, n_jobs: int, at_once: int
) -> None:
    # The default: each batch runs in a kept actor holding no CPU of Ray's, n_jobs at once
    # (all of them meet), and the next Parallel call finds the same processes.
    log = str(tmp_path / "log")
    with parallel_config(backend="raypool", n_jobs=n_jobs):
        meet = (delayed(log_then_wait_for)(log, at_once, i) for i in range(at_once))
        met = Parallel(batch_size=1)(meet)
        first = Parallel(batch_size=1)(delayed(cpus_in_task)(i) for i in range(8))
        pids = set(Parallel(batch_size=1)(delayed(pid_of)(i) for i in range(8)))
    assert met == [True] * at_once
    assert {cpu for cpu, _ in first} == {0.0}
    with parallel_config(backend="raypool", n_jobs=n_jobs):
        pids |= set(Parallel(batch_size=1)(delayed(pid_of)(i) for i in range(8)))
    assert 1 <= len(pids) <= at_once
    assert os.getpid() not in pids


@pytest.mark.parametrize(
    ("n_jobs", "options", "processes"),
    [
        (-1, {}, "auto"),  # the cluster's CPUs: Ray caps it, the pool need not
        (2, {}, "auto"),  # the session's 2 CPUs: the same
        (2, {"remote_options": {"num_cpus": 1}}, "auto"),
        (4, {}, "4"),  # more than the CPUs: that many at once
        (3, {"remote_options": {"num_cpus": 0.5}}, "3"),  # Ray would run 4
        (2, {"remote_options": {"num_cpus": 0}}, "2"),
    ],
)
def test_a_call_over_the_whole_cluster_leaves_the_cap_to_ray(
    n_jobs: int, options: dict[str, Any], processes: str
) -> None:
    backend = raypool_joblib.RayPoolBackend(nesting_level=0, **options)
    backend.configure(n_jobs=n_jobs)
    try:
        assert f"processes={processes} " in repr(backend._pool)
    finally:
        backend.terminate()


def test_n_jobs_counts_the_cluster() -> None:
    backend = raypool_joblib.RayPoolBackend()
    assert backend.effective_n_jobs(-1) == 2  # the session's Ray has 2 CPUs
    assert backend.effective_n_jobs(None) == 2  # default_n_jobs: the whole cluster
    assert backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)


def test_grid_search_finds_what_a_sequential_one_finds() -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": [1, 10], "gamma": [0.0005, 0.001]}
    sequential = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with parallel_config(backend="raypool"):
        on_ray = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert on_ray.best_params_ == sequential.best_params_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        assert list(on_ray.cv_results_[key]) == list(sequential.cv_results_[key]), key
    assert sklearn.__version__
