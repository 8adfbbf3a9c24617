"""Kept worker processes: the Ray actors that run a pool's submitted calls when it was
opened with ``actors=True`` (the joblib backend's pools), instead of a Ray task per batch.

A Ray task costs a lease from the raylet and a trip through it; a call to an actor that
already runs goes straight to its process - about half the cost of a task per call
(``benchmarks/floor.py``: 1.1-1.6 ms against 2.4-2.6 ms of wall time, 2 against 4 ms of
CPU, for a trivial call), which is what joblib's many short batches pay. The runners:

* are shared by the pools of this process with the same ``runtime_env``, as loky's
  reusable executor shares its processes between ``Parallel`` calls: started when a pool
  first needs one, kept while a pool uses them and for ``IDLE_SECONDS`` after the last
  one closed; then their handles are dropped, and Ray ends them;
* hold no CPU of Ray's, as the actors of Ray's own Pool (``num_cpus=0``): the pool's size
  bounds how many calls run at once, and an idle runner never keeps a task waiting. So, as
  two process pools on one machine do, a busy runner and another Ray task may share a CPU;
* are spread over the cluster's nodes in proportion to their CPUs (a node without CPUs
  gets none);
* run one task's calls at a time, in the actor's main thread, as a task runs them:
  timeouts, cancellation and initializers work as in tasks. A runner that dies fails the
  calls it held (``WorkerCrashedError`` once their reruns are spent) and is replaced;
* hold at most two tasks of a pool: a second is sent to a runner only while the pool's
  recent tasks all ran shorter than ``QUEUE_SECONDS``, behind a task sent less than that
  long ago, once the pool had measured a task (``CallBackend``): the runner starts it the
  moment the first ends instead of idling for the round trip through the driver. A task
  sent before then - a slow first one - has nothing queued behind it; one that turns out
  slow among short ones holds the task behind it up.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import _lifecycle
from ._worker import CallRunner

__all__ = ["IDLE_SECONDS", "QUEUE_SECONDS", "Runner", "Runners", "acquire", "release"]

#: Seconds the runners of a runtime environment are kept once no pool uses them: the next
#: pool (a ``Parallel`` call) within this long finds them started. Each idle runner is a
#: process's memory; starting two takes about a second.
IDLE_SECONDS = 60.0

#: A second task is queued on a runner only behind a task sent less than this long ago, of
#: a pool whose tasks lately all ran shorter (``CallBackend``). Higher keeps runners busier
#: between short tasks; the cost is a task waiting behind one that turns out slow, for
#: up to its duration.
QUEUE_SECONDS = 0.02


class Runner:
    """One kept actor, how many tasks it holds (sent to it, not ended), and when the
    last was sent (``time.monotonic()``)."""

    __slots__ = ("actor", "busy", "call", "calls", "node", "pickled", "since")

    def __init__(self, actor: Any, node: str | None) -> None:
        self.actor = actor
        self.node = node
        self.call = actor.call  # a task of one call: its one piece, returned
        self.calls = actor.calls.options(num_returns="streaming")  # pieces as they end
        self.pickled = actor.pickled  # a task of one call, pickled by the driver
        self.busy = 0
        self.since = 0.0


class Runners:
    """The runners of one runtime environment, shared by the pools that ``acquire`` it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._runners: list[Runner] = []
        # Guarded by the module's _lock: the pools using these runners, how many ever did,
        # and the timer that retires them once idle.
        self.users = 0
        self.uses = 0
        self.idle: threading.Timer | None = None

    def pick(self) -> Runner:
        """An idle runner - one started if none is - holding one more task until
        ``done`` or ``lost``. A pool picks one while it has fewer tasks in flight than its
        size: the runners of pools that run at once number at most their sizes."""
        with self._lock:
            runner = next((each for each in self._runners if not each.busy), None)
            if runner is None:
                runner = self._start()
                self._runners.append(runner)
            return self._take(runner)

    def behind(
        self,
        candidates: list[Runner],
        after: float,
        *,
        within: float | None = QUEUE_SECONDS,
        take: bool = True,
    ) -> Runner | None:
        """Of ``candidates`` (a pool's runners), the one whose only task was sent last -
        after ``after`` and less than ``within`` seconds ago (``None``: any time) -
        holding one more task, with ``take``; or ``None``."""
        now = time.monotonic()
        limit = float("inf") if within is None else within
        with self._lock:
            young = [
                r for r in candidates if r.busy == 1 and after < r.since and now - r.since < limit
            ]
            if not young:
                return None
            runner = max(young, key=lambda each: each.since)
            return self._take(runner) if take else runner

    def _take(self, runner: Runner) -> Runner:
        runner.busy += 1
        runner.since = time.monotonic()
        return runner

    def done(self, runner: Runner) -> None:
        """One of ``runner``'s tasks ended."""
        with self._lock:
            runner.busy -= 1

    def lost(self, runner: Runner) -> None:
        """``runner`` is not to be sent tasks again: its process died, or its task was
        cancelled while it ran (stopping it may take a moment, or forever). Its handle is
        dropped, and Ray ends it; the next ``pick`` starts another."""
        with self._lock:
            if runner in self._runners:
                self._runners.remove(runner)

    def retire(self) -> None:
        """Drop every runner's handle: Ray ends the actors."""
        with self._lock:
            self._runners.clear()

    def _start(self) -> Runner:
        node = _emptiest_node(collections.Counter(runner.node for runner in self._runners))
        options = dict(self._options)
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        return Runner(CallRunner.options(**options).remote(), node)


def _emptiest_node(placed: collections.Counter[str | None]) -> str | None:
    """The node with CPUs that has the fewest runners per CPU, or ``None`` on a one-node
    cluster (where Ray places the actor on the only node) or one without CPUs."""
    alive = [node for node in ray.nodes() if node["Alive"]]  # type: ignore[no-untyped-call]
    nodes = [
        (node["NodeID"], node["Resources"]["CPU"])
        for node in alive
        if node["Resources"].get("CPU", 0) > 0
    ]
    if len(alive) < 2 or not nodes:
        return None
    node_id, _ = min(nodes, key=lambda node: (placed[node[0]] / node[1], node[0]))
    return str(node_id)


_lock = threading.Lock()
#: (Ray session and job, runtime environment) -> its runners. Another session's or job's
#: (Ray was restarted) are dropped at the next ``acquire``: their actors ended with it.
_sets: dict[tuple[str, str], Runners] = {}


def acquire(runtime_env: dict[str, Any] | None) -> Runners:
    """The runners of ``runtime_env`` in this process's Ray job, for a pool until it calls
    ``release`` (Ray must be connected)."""
    context = ray.get_runtime_context()
    job = f"{context.gcs_address}/{context.get_job_id()}"  # a new local Ray reuses job ids
    key = (job, repr(sorted((runtime_env or {}).items())))
    with _lock:
        for other in [other for other in _sets if other[0] != job]:
            del _sets[other]
        runners = _sets.get(key)
        if runners is None:
            options: dict[str, Any] = {"num_cpus": 0}
            if runtime_env:
                options["runtime_env"] = runtime_env
            runners = _sets[key] = Runners(options)
        runners.users += 1
        runners.uses += 1  # an idle timer started before this use retires nothing
        if runners.idle is not None:
            runners.idle.cancel()
            runners.idle = None
    return runners


def release(runners: Runners) -> None:
    """A pool is done with ``runners``: once no pool uses them for ``IDLE_SECONDS``, they
    are retired."""
    with _lock:
        runners.users -= 1
        if runners.users == 0 and not _lifecycle.exiting():
            args = (runners, runners.uses)
            runners.idle = threading.Timer(IDLE_SECONDS, _retire_if_idle, args)
            runners.idle.daemon = True
            runners.idle.start()


def _retire_if_idle(runners: Runners, uses: int) -> None:
    with _lock:
        if runners.users or runners.uses != uses or _lifecycle.exiting():
            return
        runners.idle = None
        for key in [key for key, each in _sets.items() if each is runners]:
            del _sets[key]
    runners.retire()


#: In a forked child: the parent's runners, kept alive - dropping them would release the
#: parent's actor handles, which are the parent's to release.
_inherited: list[dict[tuple[str, str], Runners]] = []


def _after_fork() -> None:
    global _lock, _sets
    _inherited.append(_sets)
    _lock, _sets = threading.Lock(), {}


_lifecycle.on_fork(_after_fork)
