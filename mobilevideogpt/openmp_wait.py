"""How torch's OpenMP threads wait between parallel regions; set in the environment before torch loads its runtime.

A thread that sleeps as soon as a region ends (OMP_WAIT_POLICY=PASSIVE) must be woken for the next one: on 2 cores
of a Xeon VM that cost ~130 us per region (an elementwise add of 1569 x 576 floats: 383 us passive, 252 us
spinning), and a first token runs thousands of regions. A thread that spins holds its core: when another process
needs that core, every region waits for a preempted spinner. The compiled kernels run on the same threads
(engine/csrc/threads.h), so the choice is one for the whole process. Measured with
`python benchmarks/bench_inference.py --full-size --paths auto,auto@0.25 [--busy 1]` (one run each, Xeon with AMX,
2 cores, neighbours on the host busy):

| wait | first token, 2402 / 600 visual tokens | decode | with one busy process: first token (600), decode |
|---|---|---|---|
| PASSIVE | 5.1 / 2.5 s | 8.0 tok/s | 4.5 s, 6.6 tok/s |
| GOMP_SPINCOUNT=10000 | 4.5 / 2.4 s | 9.1 tok/s | 4.9 s, 4.9 tok/s |
| libgomp's default (300000 spins) | 4.0 / 2.3 s | 9.8 tok/s | 7.2 s, 1.7 tok/s |

So the package spins briefly where no other process is running when it is imported, and never where one is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

SPIN_COUNT = 10000  # libgomp spins per wait: about 0.1 ms at its estimate of 100000 spins per ms
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
APPLIED: dict[str, str] = {}  # what importing the package added to the environment


def other_running_processes(loadavg: str | None = None, samples: int = 5, interval_s: float = 0.002) -> int | None:
    """Processes (threads) running or runnable besides this one: the 4th field of /proc/loadavg ("running/total"),
    less this process, the least of `samples` readings `interval_s` apart (a CPU-bound process is in every one, a
    passing one seldom: 2 of 20 single readings here counted one while nothing else ran). None where the file is not
    readable. Instantaneous, unlike the load averages, which would still show a job of the user's that ended a minute
    ago. `loadavg`: one reading to parse instead."""
    readings = []
    for i in range(1 if loadavg is not None else samples):
        if loadavg is None:
            if i:
                time.sleep(interval_s)
            try:
                with open("/proc/loadavg", encoding="ascii") as f:
                    text = f.read()
            except OSError:
                return None
        else:
            text = loadavg
        try:
            readings.append(max(0, int(text.split()[3].split("/")[0]) - 1))
        except (IndexError, ValueError):
            return None
    return min(readings)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def wait_settings(environ: Mapping[str, str], others_running: int | None, cpus: int) -> dict[str, str]:
    """The variables to add to `environ`: none where the user set either of USER_SETTINGS; PASSIVE where another
    process is running (or that is unknown); else PASSIVE for OpenMP runtimes other than libgomp and a short libgomp
    spin (GOMP_SPINCOUNT takes precedence over the policy in libgomp). A single CPU never spins."""
    if any(name in environ for name in USER_SETTINGS):
        return {}
    if others_running is None or others_running > 0 or cpus < 2:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(SPIN_COUNT)}
