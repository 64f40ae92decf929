"""The checks on what callers send, which guard every command line a node is started with."""

import pytest

from cic_common.settings import SettingsError, parse_settings
from cic_orchestrator.config import Settings
from cic_orchestrator.nodes import InvalidNodeRequest
from cic_orchestrator.providers.local import SIM_FLAGS
from cic_orchestrator.validation import (
    check_accelerators,
    check_cloud,
    check_endpoint,
    check_flag_args,
    check_model,
)


def test_flags_in_both_forms_come_back_as_flag_equals_value() -> None:
    args = ["--ttft-ms=5", "--itl-ms", "2.5", "--fail-rate", "0", "--seed=7", "--max-model-len=1"]
    assert check_flag_args(args, SIM_FLAGS) == [
        "--ttft-ms=5",
        "--itl-ms=2.5",
        "--fail-rate=0",
        "--seed=7",
        "--max-model-len=1",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port=1"], "vllm arg --port is not allowed"),
        (["--model", "x"], "vllm arg --model is not allowed"),
        (["--ttft-ms"], "vllm arg --ttft-ms needs a value"),
        (["--ttft-ms=5; rm -rf /"], "vllm arg --ttft-ms needs a number"),
        (["--ttft-ms", "$(id)"], "vllm arg --ttft-ms needs a number"),
        (["--ttft-ms=5\n"], "vllm arg --ttft-ms needs a number"),
        (["--seed=7\n"], "vllm arg --seed needs a whole number"),
        (["--ttft-ms\n=5"], "is not a --flag"),
        (["--fail-rate=2"], "vllm arg --fail-rate must be between 0 and 1"),
        (["--seed=1.5"], "vllm arg --seed needs a whole number"),
        (["--max-model-len=0"], "vllm arg --max-model-len must be at least 1"),
        (["ttft-ms=5"], "is not a --flag"),
        (["-x"], "is not a --flag"),
        (["--seed=1"] * 65, "at most 64 vllm args"),
    ],
)
def test_bad_flags_are_named(args: list[str], message: str) -> None:
    with pytest.raises(InvalidNodeRequest, match=message):
        check_flag_args(args, SIM_FLAGS)


@pytest.mark.parametrize("model", ["cic-sim-small", "meta-llama/Llama-3.1-8B", "org/m:v1.2"])
def test_good_models(model: str) -> None:
    assert check_model(model) == model


@pytest.mark.parametrize(
    "model", ["", "-rf", "a b", "x;y", "a" * 129, "$(id)", "/etc", "m\n", "m\r"]
)
def test_bad_models(model: str) -> None:
    with pytest.raises(InvalidNodeRequest, match="model must be"):
        check_model(model)


def test_accelerators() -> None:
    assert check_accelerators("H100:8") == "H100:8"
    assert check_accelerators("") == ""
    for bad in ("H100", "H100:0", "H100:x", ":1", "H100:1;ls", "A100:1,H100:1", "H100:1\n"):
        with pytest.raises(InvalidNodeRequest, match="NAME:COUNT"):
            check_accelerators(bad)


def test_clouds() -> None:
    for good in ("local", "aws", "aws/us-east-1", "gcp/us-central1/us-central1-a", "k8s"):
        assert check_cloud(good) == good
    for good in ("kubernetes/my-context", "ssh/my-pool", "aws/*/us-east-1a"):
        assert check_cloud(good) == good
    bad_clouds = ("Local", "a b", "x" * 33, "../x", "aws/", "aws/a/b/c", "aws/$(id)", "k8s/a b")
    for bad in (*bad_clouds, "aws\n"):
        with pytest.raises(InvalidNodeRequest, match="cloud must be"):
            check_cloud(bad)


def test_endpoints() -> None:
    assert check_endpoint("http://10.0.0.5:8000/") == "http://10.0.0.5:8000"
    assert check_endpoint("https://node.example.com") == "https://node.example.com"
    assert check_endpoint("http://[::1]:8000") == "http://[::1]:8000"
    for bad in (
        "10.0.0.5:8000",
        "ftp://x:1",
        "http://",
        "http://x:99999",
        "http://u:p@x:1",
        "http://x:1/v1",
        "http://x:1?a=b",
        "http://x y:1",
    ):
        with pytest.raises(InvalidNodeRequest, match="endpoint must be"):
            check_endpoint(bad)


def test_settings_defaults_and_errors() -> None:
    base = {"DATABASE_URL": "postgresql://u@h/db", "SCHEDULER_ADDR": "127.0.0.1:50051"}
    settings = parse_settings(Settings, base)
    assert (settings.grpc_port, settings.metrics_port) == (50053, 9103)
    assert settings.enabled_providers == {"local"}
    assert settings.local_sim_argv == ["cic-vllm-sim"]
    assert (settings.launch_timeout_s, settings.heartbeat_interval_s) == (120, 5)
    assert (settings.drain_timeout_s, settings.health_poll_interval_s) == (300, 0.5)
    assert (settings.vllm_version, settings.vllm_port) == ("0.33.0", 8000)
    assert (settings.scale_up_after_s, settings.scale_down_after_s) == (30, 300)
    skypilot = parse_settings(
        Settings,
        {
            **base,
            "NODE_PROVIDERS": "local,skypilot",
            "SKYPILOT_API_SERVER_ENDPOINT": "http://sky.internal:46580/",
        },
    )
    assert skypilot.enabled_providers == {"local", "skypilot"}
    assert skypilot.skypilot_api_server_endpoint == "http://sky.internal:46580"
    bad = [
        ({"DATABASE_URL": ""}, "DATABASE_URL is required"),
        ({"SCHEDULER_ADDR": ""}, "SCHEDULER_ADDR is required"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL is invalid"),
        ({"SCHEDULER_ADDR": "nohost"}, "SCHEDULER_ADDR is invalid"),
        ({"NODE_PROVIDERS": "local,cloudy"}, "NODE_PROVIDERS is invalid: .*cloudy"),
        (
            {"NODE_PROVIDERS": "local,skypilot"},
            "SKYPILOT_API_SERVER_ENDPOINT is invalid: .*required when NODE_PROVIDERS names",
        ),
        (
            {"NODE_PROVIDERS": "skypilot", "SKYPILOT_API_SERVER_ENDPOINT": "localhost:46580"},
            "SKYPILOT_API_SERVER_ENDPOINT is invalid: .*http",
        ),
        ({"VLLM_VERSION": "latest"}, "VLLM_VERSION is invalid"),
        ({"VLLM_VERSION": "0.33.0; curl x|sh"}, "VLLM_VERSION is invalid"),
        ({"SKYPILOT_CLUSTER_PREFIX": "Cic-"}, "SKYPILOT_CLUSTER_PREFIX is invalid"),
        ({"LOCAL_SIM_COMMAND": "  "}, "LOCAL_SIM_COMMAND is invalid"),
        ({"LAUNCH_TIMEOUT_S": "0"}, "LAUNCH_TIMEOUT_S is invalid"),
    ]
    for change, message in bad:
        environ = {k: v for k, v in {**base, **change}.items() if v}
        with pytest.raises(SettingsError, match=message):
            parse_settings(Settings, environ)
