"""A pytest plugin that runs joblib's own ``joblib/test/test_parallel.py`` with the backend
``"raypool"`` added to the backends it is parametrized with::

    python -m pytest -p joblib_suite_plugin --pyargs joblib.test.test_parallel \\
        --only-backends raypool,loky --outcomes outcomes.json

(this directory on ``PYTHONPATH``). ``tests/integrations/test_joblib.py`` runs it.

* The backend is registered when this plugin is imported - before pytest imports the test
  module, whose lists of backends (``ALL_VALID_BACKENDS``: names and one instance per
  backend class, ``RETURN_GENERATOR_BACKENDS``) are computed from joblib's registry then.
* The hard-coded lists (``PROCESS_BACKENDS``...) get ``"raypool"`` appended in place before
  the first test is parametrized: the marks hold these very lists.
* ``KNOWN_FAILURES``: items that cannot pass with a backend other than joblib's own, with
  the reason; they are not run (``xfail(run=False)``).
* ``--outcomes FILE``: each item's backend and outcome, and its test with the parameters
  other than the backend, so that the backends' outcomes of one test can be compared;
  ``FILE.running`` names the item that runs (or ran last).
* Ray: the address in ``RAY_ADDRESS`` (the calling session's), else a local 2-CPU Ray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from joblib import parallel as joblib_parallel

from raypool.joblib import NAME, RayPoolBackend

joblib_parallel.register_parallel_backend(NAME, RayPoolBackend)

_HARDCODED_LISTS = ("PROCESS_BACKENDS", "PARALLEL_BACKENDS", "all_backends_for_context_manager")

#: Items that need what only joblib's own backends have, with why.
KNOWN_FAILURES = {
    "test_parallel_with_interactively_defined_functions[raypool]": (
        "runs `python -c` in a fresh interpreter, where nothing registered 'raypool'"
    ),
    "test_auto_memmap_on_arrays_from_generator[raypool]": (
        "asserts the arguments arrive as np.memmap: joblib's memmapping of large arrays, "
        "a single-machine feature of its loky and multiprocessing backends"
    ),
    "test_memmapping_leaks[raypool]": (
        "asserts joblib's memmap files appear in its temp_folder (loky/multiprocessing)"
    ),
    "test_nested_loop[loky-raypool]": (
        "the inner 'raypool' is looked up in a loky worker, which never imported raypool"
    ),
    "test_nested_loop[back_compat_backend-raypool]": (
        "back_compat_backend is a LokyBackend: the inner 'raypool' is looked up in loky"
    ),
    "test_nested_loop[multiprocessing-raypool]": (
        "raypool inside a child forked from a Ray driver: ForkedProcessError, by design"
    ),
    "test_backend_nesting_level[parallel_config-raypool-loky]": (
        "the inner 'raypool' is looked up in a loky worker, which never imported raypool"
    ),
    "test_backend_nesting_level[parallel_backend-raypool-loky]": (
        "the inner 'raypool' is looked up in a loky worker, which never imported raypool"
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--only-backends",
        default="",
        help="comma-separated backend names: keep only the items parametrized with them",
    )
    parser.addoption("--outcomes", default="", help="write each item's outcome to this file")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module
    if module is None or not module.__name__.endswith("test_parallel"):
        return
    for name in _HARDCODED_LISTS:
        backends = getattr(module, name)
        if NAME not in backends:
            backends.append(NAME)


def backend_of(params: dict[str, Any], names: set[str]) -> str | None:
    """The backend (one of ``names``) an item is parametrized with, by name or instance;
    raypool if it is one of several (``test_nested_loop[loky-raypool]``)."""
    found = set()
    for value in params.values():
        name = type(value).__name__.removesuffix("Backend").lower()
        if isinstance(value, str) and value in names:
            found.add(value)
        elif isinstance(value, joblib_parallel.ParallelBackendBase) and name in names:
            found.add(name)
    return NAME if NAME in found else min(found, default=None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = {name for name in config.getoption("--only-backends").split(",") if name}
    if names:
        kept = [item for item in items if backend_of(_params(item), names)]
        dropped = [item for item in items if item not in kept]
        items[:] = kept
        config.hook.pytest_deselected(items=dropped)
    known = names or {NAME, "loky", "multiprocessing", "threading", "sequential"}
    for item in items:
        _KEYS[item.nodeid] = _key(item, known)
        reason = KNOWN_FAILURES.get(item.name)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, run=False))


_KEYS: dict[str, tuple[str, str]] = {}  # node id -> (test and other parameters, backend)
#: Item name -> its backend, its outcome, and its test with the other parameters.
_OUTCOMES: dict[str, dict[str, str]] = {}


def _key(item: pytest.Item, names: set[str]) -> tuple[str, str]:
    params = _params(item)
    backend = backend_of(params, names) or "?"
    others = ", ".join(
        f"{name}={_shown(value) if not backend_of({name: value}, names) else _as(value)}"
        for name, value in sorted(params.items())
    )
    return f"{getattr(item, 'originalname', item.name)}[{others}]", backend


def _as(backend: Any) -> str:
    return "<backend>" if isinstance(backend, str) else "<backend instance>"


def _shown(value: Any) -> str:
    plain = isinstance(value, (str, int, float, bool, type(None)))
    return repr(value) if plain else type(value).__name__


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """The item that runs now, in ``FILE.running`` beside ``--outcomes FILE``: the one that
    hung, if the run never ends."""
    path = item.config.getoption("--outcomes")
    if path:
        with open(f"{path}.running", "w") as out:
            out.write(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    key = _KEYS.get(report.nodeid)
    if key is None or (report.when != "call" and report.passed):
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xpassed" if report.passed else "xfailed"
    name = report.nodeid.rpartition("::")[2]
    _OUTCOMES[name] = {"test": key[0], "backend": key[1], "outcome": outcome}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--outcomes")
    if path:
        with open(path, "w") as out:
            json.dump(_OUTCOMES, out, indent=1, sort_keys=True)


def _params(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec is not None else {}


@pytest.fixture(scope="session", autouse=True)
def _ray_session() -> Iterator[None]:
    """Ray is up before the first test, so that no test sees its start (or its warnings)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="error")
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield
    ray.shutdown()
