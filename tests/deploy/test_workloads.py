"""Pods run locked down with requests and limits, under their own ServiceAccounts; the gateway
and the scheduler scale; every service has a disruption budget; the migrations Job migrates
every schema the services have."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, SERVICES, Obj, Rendered


def containers_of(spec: Obj) -> list[Obj]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def test_pods_run_as_non_root_with_a_read_only_root(rendered: Rendered) -> None:
    specs = list(rendered.pod_specs())
    assert len(specs) == len(SERVICES) + 1  # the Deployments and the migrations Job
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in containers_of(spec):
            security = container["securityContext"]
            name = f"{where}/{container['name']}"
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for where, spec in rendered.pod_specs():
        for container in containers_of(spec):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) == {"cpu", "memory"}, f"{where} {kind}"


@pytest.mark.parametrize("service", SERVICES)
def test_deployments_write_only_to_a_temporary_volume(rendered: Rendered, service: str) -> None:
    """HOME is /tmp in the images: with a read-only root, /tmp must be an emptyDir."""
    spec = rendered.deployment(service)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in rendered.container(service)["volumeMounts"]}
    assert set(mounts) == {"/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_each_workload_has_its_own_service_account(rendered: Rendered) -> None:
    accounts = {o["metadata"]["name"] for o in rendered.of_kind("ServiceAccount")}
    used = [spec["serviceAccountName"] for _, spec in rendered.pod_specs()]
    assert len(set(used)) == len(used), "a ServiceAccount is shared"
    assert set(used) == accounts


def test_images_are_the_services_with_a_tag(rendered: Rendered) -> None:
    for where, spec in rendered.pod_specs():
        for container in containers_of(spec):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository.rsplit("/", 1)[-1] in {f"cic-{s}" for s in SERVICES}, image
            assert tag, f"{where}: {image} has no tag"
            if rendered.target == "prod":
                assert tag not in ("latest", "main"), f"prod runs a moving tag: {image}"


@pytest.mark.parametrize("service", ["gateway", "scheduler"])
def test_gateway_and_scheduler_scale_horizontally(rendered: Rendered, service: str) -> None:
    hpa = rendered.get("HorizontalPodAutoscaler", f"cic-{service}")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", f"cic-{service}")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The autoscaler owns the count: a `replicas` in the Deployment would fight it on apply.
    assert "replicas" not in rendered.deployment(service)["spec"]
    # Utilisation targets need CPU requests to be computed against.
    assert rendered.container(service)["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_disruption_budget(rendered: Rendered, service: str) -> None:
    pdb = rendered.get("PodDisruptionBudget", f"cic-{service}")
    labels = rendered.deployment(service)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # maxUnavailable (not minAvailable) keeps a one-replica service drainable.
    assert pdb["spec"]["maxUnavailable"] == 1


def migrations_packages() -> dict[str, str]:
    """Each service package holding migrations, by the service it belongs to."""
    found = {}
    for folder in sorted((ROOT / "services").glob("*/src/cic_*/migrations")):
        if any(p.suffix == ".sql" for p in Path(folder).iterdir()):
            package = folder.parent.name
            found[package.removeprefix("cic_")] = f"{package}.migrations"
    return found


def test_the_migrations_job_migrates_every_schema(rendered: Rendered) -> None:
    spec = rendered.get("Job", "cic-migrate")["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    commands = {}
    for container in containers_of(spec):
        program, target = container["command"]
        assert program == "cic-migrate"
        schema, package = target.split("=")
        # Each schema is migrated by the image that carries its migrations.
        assert f"/cic-{schema}:" in container["image"], container["image"]
        commands[schema] = package
    assert commands == migrations_packages()
    assert set(commands) >= {"gateway", "billing", "orchestrator"}


MIGRATE_FIRST = {"config", "migrations"}


def test_the_migrations_phase_carries_everything_the_job_needs(rendered: Rendered) -> None:
    """`kubectl apply -k ... -l 'app.kubernetes.io/component in (config,migrations)'` applies
    the Job with its ConfigMaps and ServiceAccount, and no workload besides."""
    phase = [
        o
        for o in rendered.objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") in MIGRATE_FIRST
    ]
    names = {(o["kind"], o["metadata"]["name"]) for o in phase}
    spec = rendered.get("Job", "cic-migrate")["spec"]["template"]["spec"]
    assert ("ServiceAccount", spec["serviceAccountName"]) in names
    for container in containers_of(spec):
        for source in container.get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
    assert {kind for kind, _ in names} == {"ConfigMap", "Job", "ServiceAccount"}
