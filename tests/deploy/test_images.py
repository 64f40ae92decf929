"""Each service's Dockerfile: multi-stage from a pinned base, stubs generated in the build stage,
the locked install of every workspace member's metadata, a non-root user, the ports the
manifests use, and the service's own console script. (hadolint runs in `make lint`.)"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, SERVICES, Rendered
from tests.deploy.test_ports_probes import container_ports


def instructions(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages(service: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(service):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def workspace_members() -> list[Path]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members += [p for p in sorted(ROOT.glob(pattern)) if (p / "pyproject.toml").exists()]
    return members


@pytest.mark.parametrize("service", SERVICES)
def test_build_is_multi_stage_from_a_pinned_base(service: str) -> None:
    args = dict(a.split("=", 1) for word, a in instructions(service) if word == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    froms = [a for word, a in instructions(service) if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


@pytest.mark.parametrize("service", SERVICES)
def test_stubs_are_generated_in_the_build_stage(service: str) -> None:
    builder, final = stages(service)
    runs = " ".join(a for word, a in builder if word == "RUN")
    assert "grpc_tools.protoc -I protos" in runs
    assert "--grpc_python_out=libs/common/src" in runs
    # Generated before the workspace packages are built (cic-common ships them).
    protoc = next(i for i, (w, a) in enumerate(builder) if "grpc_tools.protoc" in a)
    install = next(i for i, (w, a) in enumerate(builder) if "--no-editable" in a)
    assert protoc < install
    assert f"--package cic-{service}" in builder[install][1]
    assert "--frozen" in builder[install][1] and "--no-dev" in builder[install][1]
    assert all(word != "RUN" for word, _ in final), "the final stage runs nothing"


@pytest.mark.parametrize("service", SERVICES)
def test_every_workspace_members_metadata_reaches_the_lock_install(service: str) -> None:
    copied = {a.split()[0] for word, a in instructions(service) if word == "COPY"}
    for member in workspace_members():
        assert str((member / "pyproject.toml").relative_to(ROOT)) in copied, member


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_the_service_as_non_root(
    service: str, all_rendered: dict[str, Rendered]
) -> None:
    _, final = stages(service)
    user = [a for word, a in final if word == "USER"]
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), user
    uid = int(user[0].split(":")[0])
    spec = all_rendered["base"].deployment(service)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == uid
    env = " ".join(a for word, a in final if word == "ENV")
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    pyproject = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    (script,) = pyproject["project"]["scripts"]
    assert [a for word, a in final if word == "ENTRYPOINT"] == [f'["{script}"]']
    exposed = {int(p) for word, a in final if word == "EXPOSE" for p in a.split()}
    assert exposed == set(container_ports(all_rendered["base"].container(service)).values())


def test_the_build_context_keeps_what_the_dockerfiles_copy() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "libs/common/src/cic" in ignored, "stale local stubs would reach the image"
    for service in SERVICES:
        for word, args in instructions(service):
            if word != "COPY" or args.startswith("--from"):
                continue
            source = args.split()[0]
            for pattern in ignored:
                assert not fnmatch.fnmatch(source, pattern), f"{service}: {source} ~ {pattern}"
                assert not source.startswith(pattern.rstrip("/") + "/"), f"{service}: {source}"
