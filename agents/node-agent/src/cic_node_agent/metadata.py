"""The clouds' spot-termination notices, as each cloud's instance metadata service gives them.

- AWS (IMDSv2): ``PUT /latest/api/token`` for a session token, then
  ``GET /latest/meta-data/spot/instance-action`` — 404 until the instance is marked for
  interruption, then ``{"action": "terminate"|"stop"|"hibernate", "time": "...Z"}`` (about two
  minutes ahead).
- GCP: ``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` —
  ``TRUE`` once the VM is being preempted (about 30 s ahead).
- Azure: ``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true`` — an
  event with ``EventType`` ``Preempt`` whose ``Resources`` name this VM, ``NotBefore`` an
  RFC 1123 time (at least 30 s ahead).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

log = logging.getLogger(__name__)

AWS_TOKEN_TTL_S = 21600
AZURE_EVENTS_API = "2020-07-01"
AZURE_INSTANCE_API = "2021-02-01"


@dataclass(frozen=True)
class Notice:
    cloud: str
    notice: str  # what the metadata service said, e.g. "terminate" or "Preempt"
    not_after: datetime | None = None  # when the machine goes, if the notice says


class NoticeSource(abc.ABC):
    cloud: str

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url
        self._session = session

    @abc.abstractmethod
    async def detect(self) -> bool:
        """Whether this machine runs on this cloud (its metadata service answers as its own)."""

    @abc.abstractmethod
    async def poll(self) -> Notice | None:
        """The notice, once there is one; raises aiohttp.ClientError when the service fails."""


class AwsImds(NoticeSource):
    cloud = "aws"

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        super().__init__(base_url, session)
        self._token: str | None = None

    async def _session_token(self) -> str:
        async with self._session.put(
            f"{self._base}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)},
        ) as reply:
            reply.raise_for_status()
            return (await reply.text()).strip()

    async def detect(self) -> bool:
        try:
            self._token = await self._session_token()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return bool(self._token)

    async def poll(self) -> Notice | None:
        for _ in range(2):  # once more with a new session token if the old one expired
            if self._token is None:
                self._token = await self._session_token()
            async with self._session.get(
                f"{self._base}/latest/meta-data/spot/instance-action",
                headers={"X-aws-ec2-metadata-token": self._token},
            ) as reply:
                if reply.status == 401:
                    self._token = None
                    continue
                if reply.status == 404:
                    return None
                reply.raise_for_status()
                body = await reply.json(content_type=None)
            action = str(body.get("action", "terminate"))
            return Notice(self.cloud, action, _iso_time(body.get("time")))
        raise aiohttp.ClientResponseError(reply.request_info, (), status=401)


class GcpMetadata(NoticeSource):
    cloud = "gcp"
    _headers = {"Metadata-Flavor": "Google"}

    async def detect(self) -> bool:
        try:
            async with self._session.get(
                f"{self._base}/computeMetadata/v1/instance/id", headers=self._headers
            ) as reply:
                return reply.status == 200 and reply.headers.get("Metadata-Flavor") == "Google"
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def poll(self) -> Notice | None:
        async with self._session.get(
            f"{self._base}/computeMetadata/v1/instance/preempted", headers=self._headers
        ) as reply:
            reply.raise_for_status()
            preempted = (await reply.text()).strip().upper() == "TRUE"
        return Notice(self.cloud, "preempted") if preempted else None


class AzureScheduledEvents(NoticeSource):
    cloud = "azure"
    _headers = {"Metadata": "true"}

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        super().__init__(base_url, session)
        self._vm_name: str | None = None

    async def _name(self) -> str:
        async with self._session.get(
            f"{self._base}/metadata/instance/compute/name",
            params={"api-version": AZURE_INSTANCE_API, "format": "text"},
            headers=self._headers,
        ) as reply:
            reply.raise_for_status()
            return (await reply.text()).strip()

    async def detect(self) -> bool:
        try:
            self._vm_name = await self._name()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return bool(self._vm_name)

    async def poll(self) -> Notice | None:
        if self._vm_name is None:
            self._vm_name = await self._name()
        async with self._session.get(
            f"{self._base}/metadata/scheduledevents",
            params={"api-version": AZURE_EVENTS_API},
            headers=self._headers,
        ) as reply:
            reply.raise_for_status()
            body = await reply.json(content_type=None)
        for event in body.get("Events") or []:
            resources = event.get("Resources") or []
            if event.get("EventType") == "Preempt" and (
                not resources or self._vm_name in resources
            ):
                return Notice(self.cloud, "Preempt", _rfc1123_time(event.get("NotBefore")))
        return None


SOURCES: dict[str, type[NoticeSource]] = {
    "aws": AwsImds,
    "gcp": GcpMetadata,
    "azure": AzureScheduledEvents,
}


async def find_source(
    cloud: str, urls: dict[str, str], session: aiohttp.ClientSession
) -> NoticeSource | None:
    """The notice source of ``cloud``; for ``auto`` the first whose metadata service answers;
    None for ``none`` or when no metadata service answers (on-premise, Kubernetes)."""
    if cloud == "none":
        return None
    if cloud != "auto":
        return SOURCES[cloud](urls[cloud], session)
    for name, kind in SOURCES.items():
        source = kind(urls[name], session)
        if await source.detect():
            log.info("running on %s: watching its spot-termination notice", name)
            return source
    log.info("no cloud metadata service answers: no spot-termination notice to watch")
    return None


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _rfc1123_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
