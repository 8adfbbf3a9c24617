"""The keyword extensions: per call, pool-wide, and through ``options()``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

import raypool
from helpers import count_lines, fail_on, log_call, pid_of, sleep_then, square
from raypool import TaskTimeoutError


@pytest.fixture(scope="module")
def pool() -> Any:
    with raypool.Pool() as shared:
        yield shared


def nap_on(x: float) -> float:
    time.sleep(x)
    return x


def test_timeout_per_item(pool: raypool.RayPool) -> None:
    out = pool.map(nap_on, [0, 30, 0], timeout=1, safe_exceptions=True, chunksize=1)
    assert out[0] == 0
    assert out[2] == 0
    assert isinstance(out[1], TaskTimeoutError)
    with pytest.raises(TimeoutError):
        pool.map(nap_on, [0, 30], timeout=1)
    it = pool.imap(nap_on, [0, 30, 0], timeout=1)
    assert next(it) == 0
    with pytest.raises(TaskTimeoutError):
        next(it)
    assert next(it) == 0


def test_safe_exceptions_and_ret_args(pool: raypool.RayPool) -> None:
    out = pool.map(fail_on, range(5), safe_exceptions=True)
    assert out[:3] == [0, 1, 2]
    assert out[4] == 4
    assert type(out[3]) is ValueError
    assert pool.map(square, [2, 3], ret_args=True) == [(2, 4), (3, 9)]
    assert pool.starmap(pow, [(2, 3)], ret_args=True) == [((2, 3), 8)]
    pairs = dict(pool.imap_unordered(fail_on, range(5), ret_args=True, safe_exceptions=True))
    assert set(pairs) == set(range(5))
    assert type(pairs[3]) is ValueError
    assert pool.map(pow, [2, 3], [2, 2], ret_args=True) == [((2, 2), 4), ((3, 2), 9)]


def test_returned_exceptions_are_values_not_errors(pool: raypool.RayPool) -> None:
    # A function that *returns* an exception object does not fail its item.
    assert type(pool.apply(ValueError, ("returned",))) is ValueError
    assert [type(e) for e in pool.imap(KeyError, ["k"])] == [KeyError]


def test_map_async_safe_exceptions_and_error_callback(pool: raypool.RayPool) -> None:
    errors: list[BaseException] = []
    result = pool.map_async(fail_on, range(5), error_callback=errors.append)
    result.wait(60)
    assert not result.successful()
    assert [type(e) for e in errors] == [ValueError]
    safe = pool.map_async(fail_on, range(5), safe_exceptions=True).get(60)
    assert type(safe[3]) is ValueError


def test_checkpoint_true_replays_a_rerun(pool: raypool.RayPool, tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")

    def logged(x: int) -> int:
        return log_call(log, x)

    assert pool.map(logged, range(20), checkpoint=True) == list(range(20))
    assert count_lines(log) == 20
    assert pool.map(logged, range(25), checkpoint=True) == list(range(25))
    assert count_lines(log) == 25  # only the 5 new items ran


def test_checkpoint_by_name_and_by_path(pool: raypool.RayPool, tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")

    def logged(x: int) -> int:
        return log_call(log, x)

    assert list(pool.imap(logged, range(5), checkpoint="conformance-run")) == list(range(5))
    assert list(pool.imap(logged, range(5), checkpoint="conformance-run")) == list(range(5))
    assert count_lines(log) == 5
    path = tmp_path / "explicit.ckpt"
    assert pool.starmap(pow, [(2, 2)], checkpoint=path) == [4]
    assert path.exists()
    with pytest.raises(ValueError, match="checkpoint name"):
        pool.map(square, [1], checkpoint="no/slashes")


def test_pool_wide_checkpoint_options(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")

    def flaky(x: int) -> int:
        log_call(log, x)
        if x == 2 and count_lines(log) < 6:
            raise ValueError("transient")
        return x

    with raypool.Pool(checkpoint=True, checkpoint_errors=False, checkpoint_every=1) as pool:
        first = pool.map(flaky, range(5), safe_exceptions=True)
        assert isinstance(first[2], ValueError)
        assert count_lines(log) == 5
        # the failure was not kept: the rerun retries it alone
        assert sorted(pool.imap_unordered(flaky, range(5))) == list(range(5))
        assert count_lines(log) == 6
        assert pool.map(flaky, range(5), checkpoint=False) == list(range(5))
        assert count_lines(log) == 11
    with pytest.raises(ValueError, match="checkpoint_interval"):
        raypool.Pool(checkpoint_interval=-1)


def test_chunksize_sets_items_per_task(pool: raypool.RayPool) -> None:
    pids = pool.map(pid_of, range(40), chunksize=40)
    assert len(set(pids)) == 1  # one task ran them all
    with pytest.raises(ValueError, match=r"(?i)chunksize"):
        pool.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match=r"(?i)chunksize"):
        list(pool.imap(square, [1], chunksize=-1))


def test_remote_options_reach_ray(pool: raypool.RayPool) -> None:
    def cpus(_: Any) -> float:
        import ray

        return ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)

    assert pool.map(cpus, [1], remote_options={"num_cpus": 0.5}) == [0.5]
    assert pool.options(remote_options={"num_cpus": 0.25}).submit(cpus, 1).result(60) == 0.25
    with raypool.Pool(ray_remote_args={"num_cpus": 0.5}) as ray_style:  # Ray's Pool's name
        assert ray_style.apply(cpus, (1,)) == 0.5


def test_pool_wide_defaults_and_per_call_override() -> None:
    with raypool.Pool(safe_exceptions=True, ret_args=True) as pool:
        assert [type(v) for _, v in pool.map(fail_on, [3])] == [ValueError]
        assert pool.map(square, [2], ret_args=False) == [4]
        with pytest.raises(ValueError, match="bad item"):
            pool.map(fail_on, [3], safe_exceptions=False)


def test_options_give_submit_and_apply_the_extensions(pool: raypool.RayPool) -> None:
    timed = pool.options(timeout=1)
    with pytest.raises(TaskTimeoutError):
        timed.submit(nap_on, 30).result(60)
    with pytest.raises(TimeoutError):
        timed.apply(nap_on, (30,))
    assert pool.options(safe_exceptions=True).apply(fail_on, (3,)).args == ("bad item 3",)
    assert pool.submit(nap_on, 0).result(60) == 0  # the pool itself is unchanged
    assert timed.state is pool.state
    with pytest.raises(TypeError):
        pool.options(retries=3)  # type: ignore[call-arg]


def test_bad_extension_values_are_clear_errors(pool: raypool.RayPool) -> None:
    with pytest.raises(ValueError, match="timeout"):
        pool.map(square, [1], timeout=-1)
    with pytest.raises(TypeError, match="remote_options"):
        pool.options(remote_options=[("num_cpus", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="checkpoint"):
        pool.map(square, [1], checkpoint=3.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="map\\(\\) needs at least one iterable"):
        pool.map(square)


def test_progress_bar_on_stderr(pool: raypool.RayPool, capfd: pytest.CaptureFixture[str]) -> None:
    assert pool.map(square, range(30), progress=True) == [x * x for x in range(30)]
    assert list(pool.imap(square, iter(range(7)), progress=True)) == [x * x for x in range(7)]
    err = capfd.readouterr().err
    assert "30/30" in err
    assert "7it" in err or "7item" in err


def test_progress_without_tqdm_says_what_to_install(
    pool: raypool.RayPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"raypool\[progress\]"):
        pool.map(square, [1], progress=True)
    assert pool.map(sleep_then, [], progress=False) == []
