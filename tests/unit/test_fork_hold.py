"""``_lifecycle``'s fork hook, with no Ray running: ``SIGTERM`` is held until the child's
resets ran; ``_runtime`` knows Ray's handlers from the user's."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no fork")

#: A parent whose ``SIGTERM`` handler raises, as Ray's does; a reset that is sent ``SIGTERM``
#: (a pool terminating a worker as it starts) and then sets the default action, as
#: ``_runtime``'s does. The child goes on to exit 0 if it lost the signal.
_CHILD_TERMINATED_WHILE_RESETTING = """
import os, signal, sys
from raypool import _lifecycle

def ray_like(signum, frame):
    raise SystemExit(9)

def reset():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10_000):  # bytecode, where a Python handler would run
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

signal.signal(signal.SIGTERM, ray_like)
_lifecycle.on_fork(reset)
pid = os.fork()
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
print("parent holds SIGTERM", signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""


def test_a_sigterm_sent_to_a_child_during_its_resets_is_acted_on_after_them() -> None:
    """Unheld, the parent's handler would raise in the reset - an exception Python only
    prints after a fork - and the child would go on, its ``SIGTERM`` lost."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD_TERMINATED_WHILE_RESETTING)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"child {-signal.SIGTERM}" in proc.stdout, proc.stdout + proc.stderr
    assert "parent holds SIGTERM False" in proc.stdout
    assert "Exception ignored" not in proc.stderr


def test_only_ray_s_signal_handlers_are_taken_for_ray_s() -> None:
    from raypool._runtime import set_by_ray

    def handler(signum: int, frame: object) -> None: ...

    for module, ray_s in (
        ("ray._private.worker", True),
        ("ray._private.node", True),
        ("ray", True),
        ("rayleigh", False),
        ("myapp", False),
    ):
        handler.__module__ = module
        assert set_by_ray(handler) is ray_s, module
    assert not set_by_ray(signal.SIG_DFL)
    assert not set_by_ray(signal.SIG_IGN)
    assert not set_by_ray(None)
