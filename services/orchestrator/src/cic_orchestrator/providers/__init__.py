"""Node providers: how nodes are started and stopped (``local`` simulators, ``external``
servers that already run)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cic_orchestrator.config import Settings
from cic_orchestrator.nodes import NoProviderForCloud
from cic_orchestrator.providers.base import NodeProvider
from cic_orchestrator.providers.external import ExternalProvider
from cic_orchestrator.providers.local import LocalProvider


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
    local = LocalProvider(settings.local_sim_argv, settings.local_sim_host)
    return Providers([local, ExternalProvider()], sorted(settings.enabled_providers))
