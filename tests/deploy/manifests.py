"""Reading rendered Kubernetes manifests: the objects of an overlay, a container's environment
with its ConfigMaps resolved, and the services' settings classes they must satisfy."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cic_common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# What is rendered: the base and every overlay directory.
TARGETS = ["base", *sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())]
# The services, one folder each under services/.
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
GRPC_SERVICES = [s for s in SERVICES if s != "gateway"]

Obj = dict[str, Any]


def target_dir(target: str) -> Path:
    return K8S / target if target == "base" else K8S / "overlays" / target


def renderer() -> list[str]:
    """kustomize's own renderer: `kubectl kustomize`, else a standalone `kustomize build`."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise RuntimeError(
        "neither kubectl nor kustomize is on PATH: install kubectl to render deploy/k8s"
    )


def render(target: str) -> str:
    done = subprocess.run(
        [*renderer(), str(target_dir(target))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"rendering {target} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Rendered:
    target: str
    text: str
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.target}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def deployment(self, service: str) -> Obj:
        return self.get("Deployment", f"cic-{service}")

    def container(self, service: str) -> Obj:
        containers = self.deployment(service)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, f"cic-{service} should run one container"
        return dict(containers[0])

    def pod_specs(self) -> Iterator[tuple[str, Obj]]:
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "Job"):
                yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def parse(target: str, text: str) -> Rendered:
    return Rendered(target, text, [o for o in yaml.safe_load_all(text) if o])


@dataclass(frozen=True)
class EnvValue:
    """Where one environment variable of a container comes from."""

    source: str  # "value", "configmap", "secret" or "field"
    value: str = ""
    secret: tuple[str, str] = ("", "")
    optional: bool = False


def container_env(rendered: Rendered, container: Obj) -> dict[str, EnvValue]:
    """The container's variables as Kubernetes sets them: envFrom in order, then env."""
    env: dict[str, EnvValue] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"unexpected envFrom {source}"
        config = rendered.get("ConfigMap", source["configMapRef"]["name"])
        for key, value in config.get("data", {}).items():
            env[key] = EnvValue("configmap", str(value))
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = EnvValue("value", str(item["value"]))
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            secret = ref["secretKeyRef"]
            env[name] = EnvValue(
                "secret",
                secret=(secret["name"], secret["key"]),
                optional=secret.get("optional", False),
            )
        elif "fieldRef" in ref:
            env[name] = EnvValue("field", ref["fieldRef"]["fieldPath"])
        else:
            raise AssertionError(f"unexpected valueFrom for {name}: {ref}")
    return env


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class ``cic_<service>.config`` defines (whatever its name)."""
    module = importlib.import_module(f"cic_{service}.config")
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings) and cls.__module__ == module.__name__
    ]
    assert len(found) == 1, f"cic_{service}.config should define one settings class: {found}"
    return found[0]


def variables(cls: type[BaseModel]) -> set[str]:
    """The environment variables a settings class reads (parse_settings upper-cases names)."""
    return {name.upper() for name in cls.model_fields}


def is_secret(cls: type[BaseModel], name: str) -> bool:
    """Tokens, keys and secrets (SecretStr fields) and store URLs (PostgresUrl, RedisUrl: they
    carry passwords)."""
    field = cls.model_fields[name]
    store_url = any(
        getattr(getattr(m, "func", None), "__qualname__", "").startswith("_url_with_scheme")
        for m in field.metadata
    )
    return "SecretStr" in repr(field.annotation) or store_url


def callers_of(service: str) -> set[str]:
    """The services whose settings hold ``<SERVICE>_ADDR``: they call ``service``."""
    return {s for s in SERVICES if f"{service}_addr" in settings_class(s).model_fields}
