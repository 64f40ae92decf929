"""Every kustomize target rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import TARGETS, Rendered, parse, render


@pytest.fixture(scope="session")
def all_rendered() -> dict[str, Rendered]:
    return {target: parse(target, render(target)) for target in TARGETS}


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest, all_rendered: dict[str, Rendered]) -> Rendered:
    return all_rendered[request.param]
