"""The labels a node is registered with in the scheduler: ``provider``, ``cloud``, ``region``,
``accelerator`` (and ``accelerators``, its count included). The scheduler picks nodes whose
``region`` is a request's preferred region first; billing prices usage with the serving
node's ``region``.

What the launch asked tells the first guess (``aws/us-east-1`` names cloud and region); what a
provider learnt (SkyPilot's cluster record, LOCAL_SIM_REGION, a registered server's region)
is stored in the node's provider handle under ``labels`` and wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cic_orchestrator.nodes import InvalidNodeRequest, NodeRecord

HANDLE_KEY = "labels"
KNOWN = ("cloud", "region", "accelerator")
# Region codes as billing keeps them.
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


def check_region(region: str) -> str:
    """Empty (none) or a region code: 1-64 letters, digits and . _ - ."""
    if region and not _REGION.fullmatch(region):
        raise InvalidNodeRequest(
            "region must be 1-64 letters, digits and . _ - starting with a letter or digit"
        )
    return region


def from_infra(cloud: str, accelerators: str) -> dict[str, str]:
    """Labels a launch's own fields tell: one infra ``cloud[/region[/zone]]`` names its cloud
    and region (several infras name neither); ``H100:1`` is accelerator ``H100``."""
    labels = {"accelerator": accelerators.split(":", 1)[0]}
    if cloud and "," not in cloud:
        parts = cloud.split("/")
        labels["cloud"] = parts[0]
        if len(parts) > 1 and parts[1] != "*":
            labels["region"] = parts[1]
    return {k: v for k, v in labels.items() if v}


def learnt(values: Mapping[str, Any]) -> dict[str, str]:
    """The known labels among ``values`` whose values are safe label text (others dropped)."""
    return {
        key: value
        for key, value in values.items()
        if key in KNOWN and isinstance(value, str) and _VALUE.fullmatch(value)
    }


def node_labels(record: NodeRecord) -> dict[str, str]:
    labels = {"provider": record.provider, "accelerators": record.accelerators}
    labels |= from_infra(record.cloud, record.accelerators)
    stored = record.provider_handle.get(HANDLE_KEY)
    if isinstance(stored, Mapping):
        labels |= learnt(stored)
    return {k: v for k, v in labels.items() if v}
