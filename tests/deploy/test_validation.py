"""Every kustomize target renders, and every object passes kubernetes-validate --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import TARGETS, Rendered

KUBERNETES_VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
# The oldest Kubernetes the manifests support, and the newest the validator knows.
VERSIONS = ["1.30.0", "1.37.0"]


def validate(paths: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--quiet", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_overlay_is_rendered(all_rendered: dict[str, Rendered]) -> None:
    assert set(all_rendered) == set(TARGETS)
    assert {"base", "dev", "prod"} <= set(TARGETS)
    for rendered in all_rendered.values():
        kinds = {o["kind"] for o in rendered.objects}
        assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds, rendered.target
        assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job"} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_strict_validation(
    all_rendered: dict[str, Rendered], version: str, tmp_path: Path
) -> None:
    paths = []
    for target, rendered in all_rendered.items():
        path = tmp_path / f"{target}.yaml"
        path.write_text(rendered.text)
        paths.append(path)
    done = validate(paths, version)
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_catches_an_unknown_field(tmp_path: Path) -> None:
    """The validator bites: a misspelt field fails, so a pass above means something."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec:\n  selector: {a: b}\n  ports:\n    - {port: 80, targetPrt: http}\n"
    )
    done = validate([path], VERSIONS[0])
    assert done.returncode != 0
    assert "targetPrt" in done.stdout + done.stderr


def test_no_secret_object_is_kept_in_the_manifests(rendered: Rendered) -> None:
    """Secrets are created by the operator or Terraform; the manifests only refer to them."""
    assert rendered.of_kind("Secret") == []
