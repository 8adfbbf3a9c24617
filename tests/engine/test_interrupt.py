"""Ctrl-C in the driver: the work stops, the checkpoint keeps what finished, a rerun resumes."""

from __future__ import annotations

import signal
import sqlite3
import textwrap
from pathlib import Path

from helpers import driver_past, settled_line_count
from raypool import RayMap

_INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, time
    from raypool import RayMap

    # As in a terminal: a child of a process that ignores SIGINT (a CI runner) inherits the
    # ignoring, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    address, ckpt, log = sys.argv[1:4]

    def work(x):
        with open(log, "a") as f:
            f.write(f"{x}\\n")
        time.sleep(0.3)
        return x

    rmap = RayMap(work, address=address, checkpoint_path=ckpt, batch_size=1)
    try:
        for i, _ in enumerate(rmap.imap(range(300))):
            print(i, flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


def test_ctrl_c_stops_the_work_and_a_rerun_resumes(tmp_path: Path) -> None:
    ckpt, log = tmp_path / "run.sqlite", tmp_path / "calls.txt"
    driver = driver_past(_INTERRUPTED, [str(ckpt), str(log)], 10)
    driver.send_signal(signal.SIGINT)
    rest, _ = driver.communicate(timeout=60)
    assert "interrupted" in rest  # KeyboardInterrupt reached the caller
    assert driver.returncode != 0
    computed = settled_line_count(log, 2.0)
    assert computed < 300  # the rest of the work never ran
    with sqlite3.connect(ckpt) as conn:
        (recorded,) = conn.execute("SELECT count(*) FROM results").fetchone()
    assert recorded >= 11  # what the caller saw was flushed on the way out

    again = RayMap(lambda x: x, checkpoint_path=str(ckpt)).imap(range(300))
    assert list(again) == list(range(300))
    assert again.statistics().items_replayed == recorded
