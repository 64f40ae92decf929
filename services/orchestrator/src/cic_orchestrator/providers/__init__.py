"""Node providers: how nodes are started and stopped (``local`` simulators, ``skypilot``
clusters, ``external`` servers that already run)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cic_common.settings import SettingsError
from cic_orchestrator.config import Settings
from cic_orchestrator.nodes import NoProviderForCloud
from cic_orchestrator.providers.base import NodeProvider
from cic_orchestrator.providers.external import ExternalProvider
from cic_orchestrator.providers.local import LocalProvider
from cic_orchestrator.task import check_agent_wheel_exists


class Providers:
    """Every provider that can manage existing nodes, and those LaunchNode may use."""

    def __init__(self, providers: Iterable[NodeProvider], enabled: Iterable[str]) -> None:
        self._by_name = {p.name: p for p in providers}
        self._enabled = [self._by_name[name] for name in enabled]

    def get(self, name: str) -> NodeProvider | None:
        return self._by_name.get(name)

    def for_cloud(self, cloud: str) -> NodeProvider:
        for provider in self._enabled:
            if provider.serves_cloud(cloud):
                return provider
        raise NoProviderForCloud(f"no node provider for cloud `{cloud}` is enabled")

    def __iter__(self) -> Iterator[NodeProvider]:
        return iter(self._by_name.values())


def build_providers(settings: Settings) -> Providers:
    """Every provider; SkyPilot's only when enabled (its SDK is configured on the way)."""
    providers: list[NodeProvider] = [
        LocalProvider(
            settings.local_sim_argv,
            settings.local_sim_host,
            spot_available=settings.local_spot_available,
            region=settings.local_sim_region,
        ),
        ExternalProvider(),
    ]
    if "skypilot" in settings.enabled_providers:
        from cic_orchestrator.providers.skypilot import SkyPilotProvider
        from cic_orchestrator.providers.skypilot_sdk import SkyClient, point_sdk_at

        try:
            check_agent_wheel_exists(settings.task_settings)
        except ValueError as err:
            raise SettingsError(f"NODE_AGENT_PACKAGE: {err}") from None

        point_sdk_at(settings.skypilot_api_server_endpoint)
        client = SkyClient(settings.skypilot_call_timeout_s, settings.skypilot_poll_interval_s)
        providers.append(
            SkyPilotProvider(
                client,
                settings.task_settings,
                settings.skypilot_cluster_prefix,
                settings.skypilot_launch_timeout_s,
                settings.orphan_grace_s,
            )
        )
    # local before skypilot: `local` is the one cloud the local provider serves.
    order = [p for p in ("local", "skypilot") if p in settings.enabled_providers]
    return Providers(providers, order)
