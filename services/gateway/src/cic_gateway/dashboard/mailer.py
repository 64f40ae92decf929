"""The sign-in mail, sent over SMTP (``SMTP_*``) with aiosmtplib."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from cic_gateway.config import GatewaySettings

SUBJECT = "Your CIC sign-in link"


class MailNotSent(Exception):
    """The SMTP server could not be reached or refused the mail."""


def sign_in_message(settings: GatewaySettings, to: str, link: str) -> EmailMessage:
    minutes = settings.dashboard_link_ttl_s // 60
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = SUBJECT
    message.set_content(
        "Open this link to sign in to the CrossLogic Inference Cloud dashboard:\n\n"
        f"{link}\n\n"
        f"It works once, within {minutes} minutes.\n"
        "If you did not ask to sign in, ignore this mail.\n"
    )
    return message


async def send(settings: GatewaySettings, message: EmailMessage) -> None:
    password = settings.smtp_password.get_secret_value()
    try:
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=password or None,
            use_tls=settings.smtp_security == "tls",
            start_tls=settings.smtp_security == "starttls",
            timeout=settings.smtp_timeout_s,
        )
    except (aiosmtplib.SMTPException, OSError) as err:
        raise MailNotSent(type(err).__name__) from None
