"""deploy/terraform parses (python-hcl2; no Terraform binary here) and holds together: every
variable used is declared and every declared one used, secrets are sensitive, the stores are
private and encrypted, and the Secret it writes has exactly the keys the manifests read."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.deploy.manifests import ROOT, Rendered

TERRAFORM = ROOT / "deploy" / "terraform"
OPTIONS = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)


def tf_files() -> list[Path]:
    return sorted(TERRAFORM.glob("*.tf"))


@cache
def parsed(path: Path) -> dict[str, Any]:
    with path.open() as file:
        return dict(hcl2.load(file, serialization_options=OPTIONS))


def blocks(kind: str) -> dict[str, Any]:
    """Every `kind` block (variable, output, locals...) of every file, by name."""
    found: dict[str, Any] = {}
    for path in tf_files():
        for block in parsed(path).get(kind, []):
            found.update({k: v for k, v in block.items() if not k.startswith("__")})
    return found


def resources(kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in tf_files():
        for block in parsed(path).get("resource", []):
            found.update(block.get(kind, {}))
    return found


def text() -> str:
    return "\n".join(p.read_text() for p in tf_files())


def test_every_file_parses() -> None:
    assert len(tf_files()) >= 5
    for path in tf_files():
        assert parsed(path), path.name


def test_providers_and_tool_are_pinned() -> None:
    (terraform,) = [b for p in tf_files() for b in parsed(p).get("terraform", [])]
    assert terraform["required_version"].startswith(">= 1.6")
    (providers,) = terraform["required_providers"]
    for name in ("aws", "kubernetes", "random"):
        assert providers[name]["version"].startswith("~> "), name


def test_variables_are_declared_and_used() -> None:
    declared = set(blocks("variable"))
    source = text()
    used = set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", source))
    assert used - declared == set(), "used but not declared"
    assert declared - used == set(), "declared but never used"
    for name, variable in blocks("variable").items():
        assert variable.get("description"), f"variable {name} has no description"


def test_locals_are_defined() -> None:
    defined = set(blocks("locals"))
    used = set(re.findall(r"\blocal\.([a-z_][a-z0-9_]*)", text()))
    assert used <= defined


@pytest.mark.parametrize("word", ["token", "key", "secret", "password", "endpoint"])
def test_secret_variables_and_outputs_are_sensitive(word: str) -> None:
    for name, variable in blocks("variable").items():
        if word in name and variable["type"] == "string":
            assert variable.get("sensitive") is True, f"variable {name}"
    for name in ("database_url", "redis_url", "admin_api_token", "secret_data"):
        assert blocks("output")[name]["sensitive"] is True, f"output {name}"


def test_stores_are_private_encrypted_and_reached_from_the_cluster_only() -> None:
    (db,) = resources("aws_db_instance").values()
    assert db["publicly_accessible"] is False
    assert db["storage_encrypted"] is True
    assert "random_password" in db["password"]
    (redis,) = resources("aws_elasticache_replication_group").values()
    assert redis["transit_encryption_enabled"] is True
    assert redis["at_rest_encryption_enabled"] is True
    assert "random_password" in redis["auth_token"]
    rules = resources("aws_vpc_security_group_ingress_rule")
    assert len(rules) == 2
    for rule in rules.values():
        assert "cluster_security_group_ids" in rule["for_each"]
        assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule


def secret_refs(rendered: Rendered) -> dict[str, bool]:
    """Keys of cic-secrets the manifests read, with whether each is optional."""
    refs: dict[str, bool] = {}
    for _, spec in rendered.pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "cic-secrets":
                    refs[ref["key"]] = ref.get("optional", False)
    return refs


def test_the_secret_written_has_the_keys_the_manifests_read(
    all_rendered: dict[str, Rendered],
) -> None:
    (secret,) = resources("kubernetes_secret_v1").values()
    (metadata,) = secret["metadata"]
    assert metadata["name"] == "cic-secrets"
    assert "local.secret_data" in secret["data"]
    expression = blocks("locals")["secret_data"]
    # merge({always}, cond ? {} : {optional}, ...): the first map holds what is always written.
    always = set(re.findall(r'"([a-z-]+)" =', expression.split("}", 1)[0]))
    written = set(re.findall(r'"([a-z-]+)" =', expression))
    for target, rendered in all_rendered.items():
        refs = secret_refs(rendered)
        assert set(refs) == written, target
        assert {key for key, optional in refs.items() if not optional} == always, target
