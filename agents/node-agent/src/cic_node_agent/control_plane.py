"""The gateway's node API as the agent calls it: ``POST /internal/nodes/{id}/register``,
``/heartbeat`` and ``/preemption``, authenticated with the node's own token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp

from cic_node_agent import __version__
from cic_node_agent.config import AgentSettings
from cic_node_agent.metadata import Notice


class ControlPlaneError(Exception):
    """The control plane refused a call or could not be reached; ``retry`` says whether
    trying again may help (not for a bad token or a node that is gone)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class ControlPlane:
    def __init__(self, settings: AgentSettings, session: aiohttp.ClientSession) -> None:
        self._base = f"{settings.control_plane_url}/internal/nodes/{settings.node_id}"
        self._auth = {"Authorization": f"Bearer {settings.node_token.get_secret_value()}"}
        self._session = session

    async def register(self) -> str:
        return await self._post("register", {"agent_version": __version__})

    async def heartbeat(self, vllm_healthy: bool) -> str:
        return await self._post("heartbeat", {"vllm_healthy": vllm_healthy})

    async def preempted(self, notice: Notice) -> str:
        body: dict[str, Any] = {"cloud": notice.cloud, "notice": notice.notice}
        if notice.not_after is not None:
            body["not_after"] = _iso(notice.not_after)
        return await self._post("preemption", body)

    async def _post(self, call: str, body: dict[str, Any]) -> str:
        """The node's state as the control plane answers it."""
        try:
            async with self._session.post(
                f"{self._base}/{call}", json=body, headers=self._auth, allow_redirects=False
            ) as reply:
                if reply.status >= 400:
                    message = await _error_message(reply)
                    retry = reply.status >= 500 or reply.status == 429
                    raise ControlPlaneError(f"{call}: {reply.status} {message}", retry)
                answer = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise ControlPlaneError(f"{call}: {type(err).__name__}: {err}", retry=True) from None
        return str(answer.get("state", "")) if isinstance(answer, dict) else ""


async def _error_message(reply: aiohttp.ClientResponse) -> str:
    try:
        body = await reply.json(content_type=None)
        return str(body["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return reply.reason or ""


def _iso(value: datetime) -> str:
    return value.isoformat()
