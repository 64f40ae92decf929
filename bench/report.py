"""The figures of a gateway-overhead run: per-phase lines, the comparison against the targets,
and one JSON line for machines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson
from loadgen import PhaseResult

# Targets of issue 3 on a 2-core machine.
MAX_ADDED_P50_MS = 1.0
MAX_ADDED_P99_MS = 5.0
MIN_THROUGHPUT_RATIO = 0.5
# Cores the rest of the machine may take during a phase before the figures are called unreliable.
MAX_OTHER_CORES = 0.2

NOTE = """\
Notes: 'direct' is the node alone, 'gateway' the whole path (gateway, scheduler pick and release
over gRPC, billing). The load generator is Python on the same machine and takes CPU from the
servers. 'cpu' is what each process used during the phase, in cores and in CPU microseconds per
request; 'other' is what the rest of the machine took meanwhile (anything above
{other} makes the figures unreliable)."""


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when it is empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(result: PhaseResult) -> dict[str, Any]:
    values = sorted(result.latencies)
    return {
        "requests": len(values),
        "errors": result.errors,
        "p50_ms": round(percentile(values, 0.50) * 1000, 3),
        "p90_ms": round(percentile(values, 0.90) * 1000, 3),
        "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        "rps": round(len(values) / result.window_s, 1) if result.window_s else 0.0,
        "error_samples": result.error_samples,
    }


def _cpu_text(cores: dict[str, float], rps: float) -> str:
    parts = []
    for name, used in cores.items():
        if name == "other":
            parts.append(f"other={used:.2f}")
        elif used >= 0.01:
            per_request = f"/{used * 1e6 / rps:.0f}us" if rps else ""
            parts.append(f"{name}={used:.2f}{per_request}")
    return " ".join(parts)


@dataclass
class Figures:
    concurrency: int
    max_tokens: int
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def _key(mode: str, target: str, concurrency: int) -> str:
        return f"{mode}/{target}/c{concurrency}"

    def add(
        self,
        mode: str,
        target: str,
        concurrency: int,
        result: PhaseResult,
        cores: dict[str, float],
    ) -> None:
        self.phases[self._key(mode, target, concurrency)] = {**summary(result), "cores": cores}

    def get(self, mode: str, target: str, concurrency: int) -> dict[str, Any]:
        return self.phases[self._key(mode, target, concurrency)]

    def line(self, mode: str, target: str, concurrency: int) -> str:
        s = self.get(mode, target, concurrency)
        text = (
            f"{mode:6} {target:8} c={concurrency:<3} n={s['requests']:<7} err={s['errors']:<3}"
            f" p50={s['p50_ms']:8.3f}ms p90={s['p90_ms']:8.3f}ms p99={s['p99_ms']:8.3f}ms"
            f" {s['rps']:9.1f} req/s\n    cpu: {_cpu_text(s['cores'], s['rps'])}"
        )
        for sample in s["error_samples"]:
            text += f"\n    error: {sample}"
        return text

    def modes(self) -> list[str]:
        return list(dict.fromkeys(key.split("/")[0] for key in self.phases))

    def comparison(self, mode: str) -> dict[str, Any]:
        d1, g1 = self.get(mode, "direct", 1), self.get(mode, "gateway", 1)
        dn = self.get(mode, "direct", self.concurrency)
        gn = self.get(mode, "gateway", self.concurrency)
        return {
            "added_p50_ms": round(g1["p50_ms"] - d1["p50_ms"], 3),
            "added_p99_ms": round(g1["p99_ms"] - d1["p99_ms"], 3),
            "p50_ratio": round(g1["p50_ms"] / d1["p50_ms"], 2) if d1["p50_ms"] else None,
            "p99_ratio": round(g1["p99_ms"] / d1["p99_ms"], 2) if d1["p99_ms"] else None,
            "throughput_ratio": round(gn["rps"] / dn["rps"], 3) if dn["rps"] else 0.0,
        }

    def most_other_cores(self) -> float:
        return max((p["cores"].get("other", 0.0) for p in self.phases.values()), default=0.0)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _comparison_line(mode: str, c: dict[str, Any], concurrency: int) -> str:
    return (
        f"{mode:6} added at c=1: p50 {c['added_p50_ms']:+.3f} ms"
        f" [{_verdict(c['added_p50_ms'] <= MAX_ADDED_P50_MS)} <= {MAX_ADDED_P50_MS}]"
        f" (x{c['p50_ratio']} direct), p99 {c['added_p99_ms']:+.3f} ms"
        f" [{_verdict(c['added_p99_ms'] <= MAX_ADDED_P99_MS)} <= {MAX_ADDED_P99_MS}]"
        f" (x{c['p99_ratio']});"
        f" throughput at c={concurrency}: {c['throughput_ratio']:.1%} of direct"
        f" [{_verdict(c['throughput_ratio'] >= MIN_THROUGHPUT_RATIO)}"
        f" >= {MIN_THROUGHPUT_RATIO:.0%}]"
    )


def print_report(figures: Figures, *, pinned: bool, cpus: int) -> int:
    """Prints the comparison and the JSON line; returns the exit code (1 if a request failed)."""
    print()
    print(NOTE.format(other=MAX_OTHER_CORES))
    other = figures.most_other_cores()
    if other > MAX_OTHER_CORES:
        print(f"WARNING: other work took up to {other:.2f} cores during the run: unreliable.")
    print(f"cpus={cpus} pinned={pinned} max_tokens={figures.max_tokens}")
    results = {}
    for mode in figures.modes():
        results[mode] = figures.comparison(mode)
        print(_comparison_line(mode, results[mode], figures.concurrency))
    errors = sum(p["errors"] for p in figures.phases.values())
    print(f"failed requests: {errors}")
    phases = {
        key: {name: value for name, value in p.items() if name != "error_samples"}
        for key, p in figures.phases.items()
    }
    line = {
        "cpus": cpus,
        "pinned": pinned,
        "concurrency": figures.concurrency,
        "max_tokens": figures.max_tokens,
        "other_cores_max": other,
        **results,
        "phases": phases,
    }
    print(orjson.dumps(line).decode())
    return 1 if errors else 0
