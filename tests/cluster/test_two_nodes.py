"""A real two-node Ray cluster on this machine: ``ray start --head`` plus a second
``ray start --address=...`` with its own CPU, reached with ``address=``.

The cluster is its own (not the session's Ray): it has its own temp dir, so no later
``ray.init()`` finds it, and its own random token, with Ray's token authentication on.
The drivers are subprocesses, since the test process may already be connected to the
session's Ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
STARTUP_SECONDS = 120


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what a process needs to join or use the cluster
    token: str
    second_node: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block``: the node lives as long as this process; SIGTERM stops it."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*RAY, "start", *args, "--disable-usage-stats", "--block"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_node(node: subprocess.Popen[bytes]) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


def _python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


WAIT_FOR_NODES = """
    import sys, time, ray
    ray.init(address=sys.argv[1], logging_level="warning")
    deadline = time.monotonic() + float(sys.argv[2])
    while sum(n["Alive"] for n in ray.nodes()) < 2:
        assert time.monotonic() < deadline, "the second node did not join"
        time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp_dir = tempfile.mkdtemp(prefix="rp")  # short: Ray's socket paths live under it
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", f"--temp-dir={temp_dir}"]
    logs = Path(temp_dir)
    head = _start_node(
        ["--head", f"--port={port}", "--include-dashboard=false", *common], env, logs / "head.log"
    )
    second = None
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, (logs / "head.log").read_text()
                assert time.monotonic() < deadline, "the head node did not start"
                time.sleep(0.2)
        second = _start_node([f"--address={address}", *common], env, logs / "second.log")
        waiter = _python(WAIT_FOR_NODES, address, str(STARTUP_SECONDS), env=env)
        output, _ = waiter.communicate(timeout=STARTUP_SECONDS + 30)
        assert waiter.returncode == 0, output
        yield Cluster(address, env, token, second)
    finally:
        if second is not None:
            _stop_node(second)
        _stop_node(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


ACTORS_OVER_THE_CLUSTER = """
    import sys, time, ray
    from raypool import Pool

    def where(log):
        with open(log, "a") as f:
            f.write("started\\n")
        deadline = time.monotonic() + 60  # both calls run at once: two runners
        while len(open(log).read().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return ray.get_runtime_context().get_node_id()

    with Pool(2, address=sys.argv[1], actors=True) as pool:
        ran = sorted({f.result() for f in [pool.submit(where, sys.argv[2]) for _ in range(2)]})
        print("ran on", *ran)
        from raypool import _runners  # where raypool asked Ray to place them

        print("placed on", *sorted(r.node for s in _runners._sets.values() for r in s._runners))
"""


def test_actors_spread_over_the_nodes_in_proportion_to_their_cpus(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two runners on two nodes of one CPU each: one asked for on each. They hold no CPU,
    so Ray's resource accounting does not spread them: raypool places them (with a soft
    node affinity, which Ray may overrule - where they ran is not asserted)."""
    driver = _python(
        ACTORS_OVER_THE_CLUSTER, cluster.address, str(tmp_path / "log"), env=cluster.env
    )
    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 0, output
    placed = next(line for line in output.splitlines() if line.startswith("placed on"))
    nodes = placed.split()[2:]
    assert len(nodes) == 2, output
    assert len(set(nodes)) == 2, output


IMAP_OVER_THE_CLUSTER = """
    import sys, time, ray
    from raypool import Pool

    def where(x):
        time.sleep(0.05)
        return x, ray.get_runtime_context().get_node_id()

    with Pool(address=sys.argv[1]) as pool:
        for outcome in pool.imap_unordered(where, range(int(sys.argv[2])), safe_exceptions=True):
            if isinstance(outcome, BaseException):
                print("error", repr(outcome), flush=True)
            else:
                print(*outcome, flush=True)
    print("done", flush=True)
"""


def test_a_node_lost_in_the_middle_of_imap_loses_no_item(cluster: Cluster) -> None:
    """Tasks run on both nodes; the second node stops while work is in flight on it;
    every item still yields its result exactly once, and nothing else."""
    total = 200
    driver = _python(IMAP_OVER_THE_CLUSTER, cluster.address, str(total), env=cluster.env)
    assert driver.stdout is not None
    results: list[tuple[int, str]] = []  # (item, node) in arrival order
    other: list[str] = []  # errors, and whatever Ray prints (stderr is merged in)

    def take(line: str) -> None:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit():
            results.append((int(fields[0]), fields[1]))
        else:
            other.append(line.rstrip())

    try:
        for line in driver.stdout:
            take(line)
            if len({node for _, node in results}) == 2 and len(results) >= 20:
                break
        before = len(results)
        assert before < total, "the run ended before both nodes were seen"
        _stop_node(cluster.second_node)
        for line in driver.stdout:
            take(line)
        assert driver.wait(timeout=120) == 0, other[-20:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert "done" in other
    assert not [line for line in other if line.startswith("error")], other
    assert Counter(x for x, _ in results) == Counter(range(total))  # none lost, none twice
    assert len({node for _, node in results[:before]}) == 2
    assert cluster.token not in "\n".join(other)


NEEDS_TOKEN = """
    import sys
    from raypool import ClusterUnreachableError, RayMap

    try:
        RayMap(abs, address=sys.argv[1], init_if_needed=True)
    except ClusterUnreachableError as exc:
        print("unreachable:", exc)
"""


def test_a_cluster_with_token_authentication_says_how_to_connect(cluster: Cluster) -> None:
    """Ray sends no token to an explicit address unless ``RAY_AUTH_MODE=token``; the
    error says so instead of Ray's bare "Failed to connect"."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's connection attempts: 2, not 20
    driver = _python(NEEDS_TOKEN, cluster.address, env=env)
    output, _ = driver.communicate(timeout=120)
    assert f"unreachable: the Ray cluster at {cluster.address!r} refused" in output, output
    assert "RAY_AUTH_MODE=token" in output
    assert cluster.token not in output


WITH_PASSWORD = """
    import logging, sys
    from raypool import RayMap

    logging.basicConfig()
    logging.getLogger("raypool").setLevel(logging.DEBUG)  # whatever raypool logs is printed
    print(RayMap(abs, address=sys.argv[1], password=sys.argv[2]).map([-1, -2, -3]))
"""


def test_a_password_is_never_logged(cluster: Cluster) -> None:
    password = secrets.token_hex(8)
    driver = _python(WITH_PASSWORD, cluster.address, password, env=cluster.env)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 0, output
    assert "[1, 2, 3]" in output
    assert password not in output
    assert cluster.token not in output
