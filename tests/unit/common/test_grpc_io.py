"""Every service's gRPC does its socket I/O on grpc.aio's own polling thread (GRPC_EXPERIMENTS,
set before gRPC is imported), unless the operator says otherwise."""

import os
import subprocess
import sys

import pytest

from cic_common.grpc_io import GRPC_EXPERIMENTS

SERVICES = ["cic_gateway", "cic_scheduler", "cic_billing", "cic_orchestrator"]


def _experiments_seen(code: str, **env: str) -> tuple[str, str]:
    """What ``GRPC_EXPERIMENTS`` is after ``code`` runs in a fresh interpreter, and its stderr."""
    clean = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport os; print(os.environ.get('GRPC_EXPERIMENTS'))"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("package", SERVICES)
def test_importing_a_service_settles_grpc_io_before_grpc_loads(package: str) -> None:
    seen, _ = _experiments_seen(f"import {package}\nimport grpc")
    assert seen == GRPC_EXPERIMENTS


def test_an_operators_own_setting_is_kept() -> None:
    seen, _ = _experiments_seen("import cic_scheduler", GRPC_EXPERIMENTS="-event_engine_dns")
    assert seen == "-event_engine_dns"


def test_too_late_once_grpc_is_imported_and_says_so() -> None:
    code = "import logging; logging.basicConfig()\nimport grpc\nimport cic_scheduler"
    seen, stderr = _experiments_seen(code)
    assert seen == "None"
    assert "take no effect" in stderr
