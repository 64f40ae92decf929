"""The dashboard's settings, part of :class:`cic_gateway.config.GatewaySettings` (read once in
``__main__`` like every other setting)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

InviteCodes = Annotated[tuple[str, ...], Field(default=())]


def _split_codes(value: object) -> object:
    if isinstance(value, str):
        return tuple(code.strip() for code in value.split(",") if code.strip())
    return value


class DashboardSettings(BaseModel):
    """Sign-in by email link needs ``SMTP_HOST``; by OpenID Connect, ``OIDC_ISSUER`` and
    ``OIDC_CLIENT_ID``. Either needs ``DASHBOARD_PUBLIC_URL`` (the links and the redirect URI
    are built from it, never from a request's Host header)."""

    smtp_host: str = Field(default="", max_length=253)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    # none: plain (a local relay); starttls: upgrade on connect; tls: TLS from the first byte.
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str = Field(default="", max_length=500)
    smtp_password: SecretStr = SecretStr("")
    smtp_from: str = Field(default="CIC <no-reply@localhost>", max_length=500)
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=120)
    oidc_issuer: str = Field(default="", max_length=500)
    oidc_client_id: str = Field(default="", max_length=500, validate_default=True)
    oidc_client_secret: SecretStr = SecretStr("")
    # The button's label: "Sign in with <name>".
    oidc_provider_name: str = Field(default="single sign-on", max_length=100)
    # open: a new verified email creates a tenant; invite: it also needs one of the invite codes.
    dashboard_signup: Literal["open", "invite"] = "open"
    # Comma-separated codes, each good for one new tenant.
    dashboard_invite_codes: InviteCodes
    # Honour X-Forwarded-Proto and X-Forwarded-For (only behind a proxy that sets them).
    dashboard_trust_forwarded: bool = False
    dashboard_session_ttl_s: int = Field(default=7 * 24 * 3600, ge=300, le=90 * 24 * 3600)
    dashboard_link_ttl_s: int = Field(default=15 * 60, ge=60, le=24 * 3600)
    # Sign-in attempts allowed per email address and per client address in each window.
    dashboard_signin_per_email: int = Field(default=5, ge=1, le=10_000)
    dashboard_signin_per_client: int = Field(default=30, ge=1, le=100_000)
    dashboard_signin_window_s: int = Field(default=15 * 60, ge=1, le=24 * 3600)
    dashboard_public_url: str = Field(default="", max_length=500, validate_default=True)

    @field_validator("dashboard_invite_codes", mode="before")
    @classmethod
    def _codes(cls, value: object) -> object:
        return _split_codes(value)

    @field_validator("oidc_issuer")
    @classmethod
    def _optional_url(cls, value: str) -> str:
        if value and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc
        ):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("dashboard_public_url")
    @classmethod
    def _public_url(cls, value: str, info: ValidationInfo) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise ValueError("must be the dashboard's http:// or https:// origin")
            return value.rstrip("/")
        if info.data.get("smtp_host") or info.data.get("oidc_issuer"):
            raise ValueError("is required when SMTP_HOST or OIDC_ISSUER is set")
        return value

    @field_validator("oidc_client_id")
    @classmethod
    def _client_id(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("oidc_issuer") and not value:
            raise ValueError("is required when OIDC_ISSUER is set")
        return value
