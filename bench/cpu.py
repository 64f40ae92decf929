"""How much CPU each process of the run used during a phase, in cores (CPU seconds per second)."""

from __future__ import annotations

import os
import time

import psutil

from cic_devstack.stack import Stack


def platform_processes(stack: Stack) -> dict[str, psutil.Process]:
    """The load generator (this process), each service, and the simulated node(s)."""
    found = {"loadgen": psutil.Process(os.getpid())}
    for name, service in stack.processes.items():
        if service.proc is not None:
            found[name] = psutil.Process(service.proc.pid)
    for i, child in enumerate(found["orchestrator"].children(recursive=True)):
        found[f"node{i}" if i else "node"] = child
    return found | signals_of(found["scheduler"])


def signals_of(scheduler: psutil.Process) -> dict[str, psutil.Process]:
    """The scheduler's signals process (its scrapes and probes), when it runs one."""
    children = scheduler.children()
    return {"signals": children[0]} if children else {}


class CpuMeter:
    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self._processes = processes
        self._start: dict[str, float] = {}
        self._started = 0.0

    def _used(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        used = {"machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)}
        for name, process in self._processes.items():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            used[name] = times.user + times.system
        return used

    def start(self) -> None:
        self._start, self._started = self._used(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Cores each process kept busy since :meth:`start`, and ``other``: what the rest of
        the machine took meanwhile (other work on it makes the figures less reliable)."""
        wall = time.perf_counter() - self._started
        now = self._used()
        busy = {name: (now[name] - self._start[name]) / wall for name in now if name in self._start}
        machine = busy.pop("machine")
        busy["other"] = max(0.0, machine - sum(busy.values()))
        return {name: round(cores, 2) for name, cores in busy.items()}
