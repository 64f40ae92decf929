"""The agent's settings, read once from the environment in ``__main__`` (the SkyPilot task sets
them: ``CIC_NODE_ID``, ``CIC_CONTROL_PLANE_URL``, ``CIC_VLLM_URL``, ``CIC_NODE_CLOUD`` as envs,
``CIC_NODE_TOKEN`` as a secret)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "CIC_"
Cloud = Literal["auto", "aws", "gcp", "azure", "none"]


class AgentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    node_id: str = Field(pattern=r"^node-[0-9a-f]{12}$")
    node_token: SecretStr
    # The gateway's public URL; the agent calls its node API under /internal/nodes/{id}/.
    control_plane_url: str
    vllm_url: str = "http://127.0.0.1:8000"
    # Whose spot-termination notice to watch: auto finds out from the metadata services.
    node_cloud: Cloud = "auto"
    aws_metadata_url: str = "http://169.254.169.254"
    gcp_metadata_url: str = "http://metadata.google.internal"
    azure_metadata_url: str = "http://169.254.169.254"
    heartbeat_interval_s: float = Field(default=10.0, gt=0, le=3600)
    # AWS asks for a look every 5 s; GCP gives about 30 s notice, Azure at least 30 s.
    notice_poll_interval_s: float = Field(default=5.0, gt=0, le=300)
    vllm_health_interval_s: float = Field(default=2.0, gt=0, le=300)
    http_timeout_s: float = Field(default=5.0, gt=0, le=120)
    log_level: str = "INFO"

    @field_validator(
        "control_plane_url",
        "vllm_url",
        "aws_metadata_url",
        "gcp_metadata_url",
        "azure_metadata_url",
    )
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @field_validator("node_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("cic-node-"):
            raise ValueError("must be the node token issued at launch (cic-node-...)")
        return value


class SettingsError(Exception):
    """A missing or bad setting; the message names the variable."""


def load_settings(environ: Mapping[str, str]) -> AgentSettings:
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX)
    }
    try:
        return AgentSettings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise SettingsError(f"{name}: {first['msg']}") from None
