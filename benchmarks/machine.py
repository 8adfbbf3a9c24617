"""What the machine did besides the benchmark: the CPU time its hypervisor took (steal).

On a shared virtual machine the host may take a large share of the CPUs for minutes at a
time; every contender slows down, unevenly. The benchmarks print the share stolen during
their run next to their results, so that a run on a busy host is seen as one.
"""

from __future__ import annotations


def _cpu_times() -> list[int] | None:
    """The ``cpu`` line of ``/proc/stat`` (Linux): user, nice, system, idle, iowait, irq,
    softirq, steal... in clock ticks; ``None`` elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    return [int(value) for value in fields[1:9]] if fields[:1] == ["cpu"] else None


class StealMeter:
    """The share of CPU time stolen by the hypervisor since the meter was made."""

    def __init__(self) -> None:
        self._start = _cpu_times()

    def share(self) -> float | None:
        end = _cpu_times()
        if self._start is None or end is None:
            return None
        spent = [after - before for before, after in zip(self._start, end, strict=True)]
        return spent[7] / sum(spent) if sum(spent) else 0.0

    def describe(self) -> str:
        share = self.share()
        if share is None:
            return "CPU steal: not measured (no /proc/stat)"
        return f"CPU steal by the host during the run: {share:.0%}"
