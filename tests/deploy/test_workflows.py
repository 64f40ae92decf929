"""The GitHub workflows: ci.yaml lints and runs every test against Postgres and Redis service
containers through .ci/run; build.yaml builds each service's image (a matrix over the services
that have a Dockerfile) and pushes it to GHCR tagged by commit and by release. (Their schema and
actionlint run in `make lint` and .ci/run.)"""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.manifests import ROOT, SERVICES

WORKFLOWS = ROOT / ".github" / "workflows"


def workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as true.
    data["on"] = data.pop(True, data.get("on"))
    return dict(data)


def runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_ci_lints_with_actionlint_required() -> None:
    lint = workflow("ci.yaml")["jobs"]["lint"]
    assert "bash .ci/run lint" in runs(lint)
    assert lint["env"]["CIC_REQUIRE_ACTIONLINT"] == "1"


def test_ci_tests_against_postgres_and_redis_service_containers() -> None:
    ci = workflow("ci.yaml")
    assert {"push", "pull_request"} <= set(ci["on"])
    test = ci["jobs"]["test"]
    services = test["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for service in services.values():
        assert "--health-cmd" in service["options"]
    assert test["env"]["CIC_TEST_DATABASE_URL"].endswith("@127.0.0.1:5432/postgres")
    assert test["env"]["CIC_TEST_REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert "bash .ci/run manifests" in runs(test)
    assert "bash .ci/run test" in runs(test)


def test_ci_run_has_the_stages_the_workflow_calls() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    for stage in ("lint)", "manifests)", "test)"):
        assert stage in script


def test_build_pushes_each_service_image_to_ghcr() -> None:
    build = workflow("build.yaml")
    assert {"push", "release", "pull_request"} <= set(build["on"])
    assert build["on"]["release"]["types"] == ["published"]
    job = build["jobs"]["image"]
    assert job["permissions"]["packages"] == "write"
    built = job["strategy"]["matrix"]["service"]
    assert sorted(built) == [s for s in SERVICES if (ROOT / "services" / s / "Dockerfile").exists()]
    steps = {step.get("uses", "").split("@")[0]: step for step in job["steps"]}
    meta = steps["docker/metadata-action"]["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository_owner }}/cic-${{ matrix.service }}"
    tags = meta["tags"]
    assert "type=sha" in tags and "type=semver,pattern={{version}}" in tags
    push = steps["docker/build-push-action"]["with"]
    assert push["file"] == "services/${{ matrix.service }}/Dockerfile"
    assert push["context"] == "."
    assert push["tags"] == "${{ steps.meta.outputs.tags }}"
    assert steps["docker/login-action"]["with"]["registry"] == "ghcr.io"


def test_actions_are_pinned_to_a_version() -> None:
    for path in WORKFLOWS.glob("*.yaml"):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert "@v" in step["uses"], f"{path.name}: {step['uses']}"
