"""How each channel type sends one notification, behind one small interface.

- Slack: ``POST`` ``{"text": ...}`` to the incoming-webhook URL (``&``, ``<``, ``>`` escaped).
- Discord: ``POST`` ``{"content": ..., "allowed_mentions": {"parse": []}}`` to the webhook URL.
- Webhook: ``POST`` the event (:func:`messages.webhook_body`) with ``X-CIC-Event``,
  ``X-CIC-Delivery`` and ``X-CIC-Signature: t=<unix>,v1=<hex>``, the HMAC-SHA256 of
  ``"<t>.<body>"`` under the channel's secret (Stripe's scheme: a receiver recomputes it and
  refuses an old ``t``).
- Email: one mail over SMTP (``SMTP_*``).

Every attempt has a deadline (``NOTIFY_TIMEOUT_S``) and never follows a redirect. A tenant's URL
may not lead to a loopback, private, link-local or otherwise non-public address unless
``NOTIFY_ALLOW_PRIVATE_TARGETS`` (the control plane must not be a way into its own network).
A network error, 429 or 5xx is worth retrying; any other answer is final.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from cic_billing.notify import messages
from cic_billing.notify.channels import Channel, ChannelType, target_hint
from cic_common.events_bus import Event

USER_AGENT = "CIC-Notifier/1.0"
DISCORD_MAX_CHARS = 2000
_MAX_ERROR_CHARS = 300
_MAX_RETRY_AFTER_S = 86400.0


@dataclass(frozen=True, slots=True)
class SendResult:
    status_code: int | None  # the HTTP status or SMTP reply code; None: no answer
    error: str = ""  # empty when delivered
    retryable: bool = False
    retry_after_s: float | None = None  # the receiver's Retry-After, when it sent one

    @property
    def delivered(self) -> bool:
        return not self.error


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-CIC-Signature`` header of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: NAT64's well-known
# prefix (RFC 6052; an IPv6-only cluster reaches 169.254.169.254 as 64:ff9b::a9fe:a9fe) and the
# deprecated IPv4-compatible addresses. NAT64's local-use prefix (RFC 8215) is never public.
_IPV4_IN_LOW_BITS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def not_public(address: str) -> bool:
    """True unless ``address`` is a global unicast address, also when it is an IPv6 address that
    leads to an IPv4 one (mapped, NAT64, 6to4, Teredo, IPv4-compatible) that is not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return True
        inner = _embedded_ipv4(ip)
        if inner is not None:
            if not inner.is_global or inner.is_multicast:
                return True
            if ip.ipv4_mapped is not None or any(ip in net for net in _IPV4_IN_LOW_BITS):
                return False  # a public IPv4 address, reached through NAT64 or mapped
    return not ip.is_global or ip.is_multicast


class RefusedAddress(OSError):
    """The URL leads to an address a tenant's channel may not reach."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses non-public addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if any(not_public(entry["host"]) for entry in found):
            raise RefusedAddress(f"{host} resolves to a non-public address")
        return found

    async def close(self) -> None:
        await self._inner.close()


class Sender(Protocol):
    async def send(self, channel: Channel, event: Event, delivery_id: str) -> SendResult: ...


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text[:_MAX_ERROR_CHARS]


def _scrubbed(err: BaseException, channel: Channel) -> str:
    """The error without the channel's URL (a Slack or Discord URL is a credential)."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text.replace(channel.target, target_hint(channel))[:_MAX_ERROR_CHARS]


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S) if seconds is not None else None


class HttpPoster:
    """POSTs for the URL channels: a public-only session for tenants' channels and an open one
    for the operator's."""

    def __init__(self, timeout_s: float, allow_private: bool) -> None:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        headers = {"User-Agent": USER_AGENT}
        self._open = aiohttp.ClientSession(timeout=timeout, headers=headers)
        self._allow_private = allow_private
        self._public = (
            self._open
            if allow_private
            else aiohttp.ClientSession(
                timeout=timeout,
                headers=headers,
                connector=aiohttp.TCPConnector(resolver=PublicOnlyResolver()),
            )
        )

    async def close(self) -> None:
        await self._open.close()
        if self._public is not self._open:
            await self._public.close()

    async def post(
        self, channel: Channel, body: bytes, headers: dict[str, str] | None = None
    ) -> SendResult:
        operator = channel.tenant_id is None
        host = urlsplit(channel.target).hostname or ""
        if not (operator or self._allow_private) and _is_ip(host) and not_public(host):
            return SendResult(None, "the URL names a non-public address")
        session = self._open if operator else self._public
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with session.post(
                channel.target, data=body, headers=all_headers, allow_redirects=False
            ) as resp:
                await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except RefusedAddress as err:
            return SendResult(None, _scrubbed(err, channel))
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, RefusedAddress):
                return SendResult(None, _scrubbed(err.os_error, channel))
            return SendResult(None, _scrubbed(err, channel), retryable=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            return SendResult(None, _scrubbed(err, channel), retryable=True)
        if 200 <= status < 300:
            return SendResult(status)
        retryable = status == 429 or status >= 500
        return SendResult(status, f"HTTP {status}", retryable, retry_after if retryable else None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SlackSender:
    def __init__(self, http: HttpPoster) -> None:
        self._http = http

    async def send(self, channel: Channel, event: Event, delivery_id: str) -> SendResult:
        # Slack's control characters escaped: a tenant's name cannot @-mention the channel.
        text = messages.chat_text(event)
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return await self._http.post(channel, _json({"text": text}))


class DiscordSender:
    def __init__(self, http: HttpPoster) -> None:
        self._http = http

    async def send(self, channel: Channel, event: Event, delivery_id: str) -> SendResult:
        text = messages.chat_text(event)[:DISCORD_MAX_CHARS]
        # No mentions: a tenant's name cannot ping @everyone.
        body = {"content": text, "allowed_mentions": {"parse": []}}
        return await self._http.post(channel, _json(body))


class WebhookSender:
    def __init__(self, http: HttpPoster) -> None:
        self._http = http

    async def send(self, channel: Channel, event: Event, delivery_id: str) -> SendResult:
        body = messages.webhook_body(event)
        headers = {
            "X-CIC-Event": event.kind,
            "X-CIC-Delivery": delivery_id,
            "X-CIC-Signature": sign(channel.secret or "", int(time.time()), body),
        }
        return await self._http.post(channel, body, headers)


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: str  # none, starttls, tls
    username: str
    password: str = field(repr=False)  # never in a log line or a traceback's locals
    sender: str
    timeout_s: float


class EmailSender:
    def __init__(self, smtp: SmtpSettings) -> None:
        self._smtp = smtp

    async def send(self, channel: Channel, event: Event, delivery_id: str) -> SendResult:
        s = self._smtp
        if not s.host:
            return SendResult(None, "billing has no SMTP_HOST")
        mail = EmailMessage()
        mail["From"] = s.sender
        mail["To"] = channel.target
        mail["Subject"] = messages.mail_subject(event)
        mail["X-CIC-Event"] = event.kind
        mail["X-CIC-Delivery"] = delivery_id
        mail.set_content(messages.mail_body(event))
        try:
            await aiosmtplib.send(
                mail,
                hostname=s.host,
                port=s.port,
                username=s.username or None,
                password=s.password or None,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [r.code for r in err.recipients]
            return _smtp_refusal(codes[0] if codes else 550, _short(err))
        except aiosmtplib.SMTPResponseException as err:
            return _smtp_refusal(err.code, _short(err))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            return SendResult(None, _short(err), retryable=True)
        return SendResult(250)


def _smtp_refusal(code: int, error: str) -> SendResult:
    """A 4xx SMTP reply is temporary (retried), a 5xx permanent."""
    return SendResult(code, error, retryable=400 <= code < 500)


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def build_senders(http: HttpPoster, smtp: SmtpSettings) -> dict[ChannelType, Sender]:
    return {
        ChannelType.SLACK: SlackSender(http),
        ChannelType.DISCORD: DiscordSender(http),
        ChannelType.WEBHOOK: WebhookSender(http),
        ChannelType.EMAIL: EmailSender(smtp),
    }
