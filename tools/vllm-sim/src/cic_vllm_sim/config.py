"""The simulator's settings: fixed ones from the command line, and the knobs tests may turn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulated node is started with (`cic-vllm-sim --help` names each flag)."""

    model: str
    served_model_name: str | None = None
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    max_model_len: int = 4096
    max_num_seqs: int = 256
    embedding_dim: int = 32
    kv_cache_tokens: int = 131072
    enable_force_include_usage: bool = False
    vllm_version: str = "0.20.1"

    @property
    def model_name(self) -> str:
        """The name the API answers to (vLLM's `--served-model-name`, else `--model`)."""
        return self.served_model_name or self.model

    def __post_init__(self) -> None:
        for name in ("fail_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("ttft_ms", "itl_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("max_model_len", "max_num_seqs", "embedding_dim", "kv_cache_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class Knobs:
    """What `POST /sim/config` may change on a running node."""

    ttft_ms: float
    itl_ms: float
    fail_rate: float
    drop_rate: float
    hang: bool = False

    @classmethod
    def from_config(cls, config: SimConfig) -> Knobs:
        return cls(config.ttft_ms, config.itl_ms, config.fail_rate, config.drop_rate)

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "fail_rate": self.fail_rate,
            "drop_rate": self.drop_rate,
            "hang": self.hang,
        }
