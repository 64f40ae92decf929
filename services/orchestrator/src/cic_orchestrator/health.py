"""A ready node's health from three independent signals:

1. the node agent's heartbeats (once its agent has reported at all),
2. the control plane's own probes of the node's ``GET /health``,
3. the provider's status of the machine (SkyPilot's cluster status, the local process).

The agent's heartbeats carry its own view of vLLM (``vllm_healthy``: its ``/health`` on the
machine answers): an agent that reports vLLM failing counts as a failing signal, like a silent
one.

| machine | /health probe | agent | health |
|---|---|---|---|
| gone | any | any | dead |
| runs | answers | reports vLLM healthy (or has none) | healthy |
| runs | answers | silent, or reports vLLM failing | degraded |
| runs | failing | any | suspect |
| runs | failing for NODE_DEAD_AFTER_S | silent, reports vLLM failing (or has none) | dead |

Only healthy nodes take traffic; a dead node fails and is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from cic_orchestrator.nodes import NodeHealth


@dataclass(frozen=True)
class Signals:
    machine_alive: bool
    probe_ok: bool
    probe_failing_for_s: float  # 0 while the probe answers
    agent_silent_for_s: float | None  # None: the node's agent never reported
    agent_vllm_healthy: bool | None = None  # what the agent last said of vLLM's /health


def judge(signals: Signals, agent_silent_after_s: float, dead_after_s: float) -> NodeHealth:
    if not signals.machine_alive:
        return NodeHealth.DEAD
    silent = signals.agent_silent_for_s
    agent_reports = silent is not None and silent < agent_silent_after_s
    # The agent vouches for vLLM: it reports, and does not say vLLM's /health fails.
    agent_vouches = agent_reports and signals.agent_vllm_healthy is not False
    if signals.probe_ok:
        return NodeHealth.HEALTHY if silent is None or agent_vouches else NodeHealth.DEGRADED
    if signals.probe_failing_for_s >= dead_after_s and not agent_vouches:
        return NodeHealth.DEAD
    return NodeHealth.SUSPECT


def takes_traffic(health: NodeHealth) -> bool:
    return health in (NodeHealth.HEALTHY, NodeHealth.UNKNOWN)
