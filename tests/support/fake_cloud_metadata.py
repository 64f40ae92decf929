"""Local fakes of the three clouds' instance metadata services, as far as a node agent reads
them for spot-termination notices (paths, headers and bodies as each cloud documents them).

- ``aws``: IMDSv2. ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
  gives a session token; ``GET /latest/meta-data/spot/instance-action`` with
  ``X-aws-ec2-metadata-token`` answers 401 without a valid token, 404 until the instance is
  marked, then ``{"action": "terminate", "time": "2026-01-01T00:02:00Z"}``.
- ``gcp``: ``GET /computeMetadata/v1/instance/...`` needs ``Metadata-Flavor: Google`` (403
  without) and answers with that header; ``instance/preempted`` is ``FALSE`` then ``TRUE``.
- ``azure``: ``GET /metadata/...`` needs ``Metadata: true`` and an ``api-version`` (400
  without); ``scheduledevents`` lists events. It always holds a Preempt event for another VM,
  which an agent must ignore.

``preempt()`` gives the notice; ``expire_tokens()`` (AWS) makes the session tokens stale.
"""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from aiohttp import web

VM_NAME = "cic-node-vm"
OTHER_VM = "someone-elses-vm"
CLOUDS = ("aws", "gcp", "azure")


class FakeCloudMetadata:
    def __init__(self, cloud: str) -> None:
        if cloud not in CLOUDS:
            raise ValueError(cloud)
        self.cloud = cloud
        self.notice_at: datetime | None = None
        self.requests: list[str] = []
        self._tokens: set[str] = set()
        self._incarnation = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def preempt(self, seconds_ahead: float = 120.0) -> datetime:
        self.notice_at = (datetime.now(UTC) + timedelta(seconds=seconds_ahead)).replace(
            microsecond=0
        )
        return self.notice_at

    def expire_tokens(self) -> None:
        self._tokens.clear()

    async def start(self) -> str:
        app = web.Application()
        routes = {
            "aws": [
                web.put("/latest/api/token", self._aws_token),
                web.get("/latest/meta-data/spot/instance-action", self._aws_action),
            ],
            "gcp": [web.get("/computeMetadata/v1/instance/{key}", self._gcp)],
            "azure": [
                web.get("/metadata/instance/compute/name", self._azure_name),
                web.get("/metadata/scheduledevents", self._azure_events),
            ],
        }[self.cloud]
        app.router.add_routes(routes)
        app.middlewares.append(self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests.append(f"{request.method} {request.path}")
        return await handler(request)

    async def _aws_token(self, request: web.Request) -> web.Response:
        ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return web.Response(status=400)
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return web.Response(text=token)

    async def _aws_action(self, request: web.Request) -> web.Response:
        if request.headers.get("X-aws-ec2-metadata-token") not in self._tokens:
            return web.Response(status=401)
        if self.notice_at is None:
            return web.Response(status=404, text="Not Found")
        body = {"action": "terminate", "time": self.notice_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return web.json_response(body)

    async def _gcp(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403)
        values = {"id": "4242424242", "preempted": "TRUE" if self.notice_at else "FALSE"}
        value = values.get(request.match_info["key"])
        if value is None:
            return web.Response(status=404)
        return web.Response(text=value, headers={"Metadata-Flavor": "Google"})

    def _azure_refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Metadata") != "true" or "api-version" not in request.query:
            return web.json_response({"error": "Bad request"}, status=400)
        return None

    async def _azure_name(self, request: web.Request) -> web.Response:
        return self._azure_refused(request) or web.Response(text=VM_NAME)

    async def _azure_events(self, request: web.Request) -> web.Response:
        refused = self._azure_refused(request)
        if refused is not None:
            return refused
        soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        events = [_azure_event("other", OTHER_VM, soon)]
        if self.notice_at is not None:
            events.append(_azure_event("ours", VM_NAME, format_datetime(self.notice_at, True)))
        return web.json_response({"DocumentIncarnation": next(self._incarnation), "Events": events})


def _azure_event(event_id: str, vm: str, not_before: str) -> dict[str, object]:
    return {
        "EventId": event_id,
        "EventType": "Preempt",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "EventStatus": "Scheduled",
        "NotBefore": not_before,
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }
