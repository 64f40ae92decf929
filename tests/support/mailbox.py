"""A real SMTP server (aiosmtpd) on the test's own event loop that keeps every mail it gets."""

from __future__ import annotations

import asyncio
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP, Envelope, Session

_LINK = re.compile(r"https?://\S+/dashboard/sign-in/link\?token=[A-Za-z0-9_\-]+")


class Mailbox:
    """``await start()``, point ``SMTP_HOST``/``SMTP_PORT`` at it, ``await next_mail(to)``."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mail = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(mail, EmailMessage)
        async with self._arrived:
            self.mails.append(mail)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="mail.test"), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def next_mail(self, to: str, timeout: float = 10.0) -> EmailMessage:
        """The first mail to ``to`` not taken yet."""

        def found() -> EmailMessage | None:
            for mail in self.mails:
                if mail["To"] == to:
                    return mail
            return None

        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: found() is not None), timeout)
        mail = found()
        assert mail is not None
        self.mails.remove(mail)
        return mail


def sign_in_link(mail: EmailMessage) -> str:
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    match = _LINK.search(body.get_content())
    assert match, body.get_content()
    return match.group(0)
