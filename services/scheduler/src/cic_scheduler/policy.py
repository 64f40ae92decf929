"""Routing policies: given the nodes that may serve a request, choose one.

A policy only chooses; the registry takes the slot on the chosen node atomically. Issue 4 adds
round-robin and prefix affinity behind this same interface.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from cic_scheduler.nodes import NodeView, PickRequest


class Policy(Protocol):
    name: str

    def choose(self, request: PickRequest, candidates: Sequence[NodeView]) -> NodeView:
        """One of ``candidates`` (never empty; every one ready, healthy and not excluded)."""
        ...


class LeastLoadedPolicy:
    """The node with the fewest leases in flight; ties go round in turn, so idle nodes share."""

    name = "least_loaded"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, request: PickRequest, candidates: Sequence[NodeView]) -> NodeView:
        fewest = min(node.in_flight for node in candidates)
        tied = sorted((n for n in candidates if n.in_flight == fewest), key=lambda n: n.id)
        return tied[next(self._turn) % len(tied)]
