"""Deployments (a model's scaling policy): accelerators `auto` chosen from the model's size,
several clouds, and a deployment deleted with its nodes — on a real orchestrator."""

from __future__ import annotations

import grpc
import pytest

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_orchestrator.sizing import choose
from tests.unit.orchestrator.conftest import Orchestrator, eventually
from tests.unit.orchestrator.test_autoscaler import _live, _set, local_policy


@pytest.mark.parametrize(
    ("model", "accelerators", "args"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "L4:1", ()),
        ("Qwen/Qwen2.5-14B-Instruct", "L40S:1", ()),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "H100:2", ("--tensor-parallel-size=2",)),
        ("meta-llama/Llama-3.1-70B-Instruct", "H100:4", ("--tensor-parallel-size=4",)),
    ],
)
def test_auto_chooses_gpus_from_the_model_size(model: str, accelerators: str, args) -> None:
    assert choose(model, "aws", ()) == (accelerators, args)
    # A tensor parallelism the deployment sets is kept.
    if args:
        assert choose(model, "aws", ("--tensor-parallel-size=8",))[1] == (
            "--tensor-parallel-size=8",
        )


async def test_a_deployment_with_auto_accelerators_is_kept_and_deleted_with_its_nodes(
    start_orchestrator,
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(AUTOSCALE_INTERVAL_S="0.05")
    stored = await _set(
        orchestrator, local_policy(min_nodes=2, accelerators="auto", cloud="", clouds=["local"])
    )
    assert (stored.accelerators, list(stored.clouds)) == ("auto", ["local"])

    async def two_ready() -> list[pb.ManagedNode]:
        nodes = await _live(orchestrator)
        ready = [n for n in nodes if n.state == pb.NODE_STATE_READY]
        return ready if len(ready) == 2 else []

    nodes = await eventually(two_ready, "the deployment's two nodes")
    assert {(n.accelerators, n.cloud) for n in nodes} == {("SIM:1", "local")}

    await orchestrator.stub.DeleteScalingPolicy(
        pb.DeleteScalingPolicyRequest(model="cic-sim-small", terminate_nodes=True)
    )
    for node in nodes:
        await orchestrator.wait_state(node.id, pb.NODE_STATE_TERMINATED)
    assert await _live(orchestrator) == []


async def test_bad_deployments_are_refused(start_orchestrator) -> None:
    orchestrator: Orchestrator = await start_orchestrator(AUTOSCALE_INTERVAL_S="3600")
    for policy, code, message in [
        (
            local_policy(accelerators="auto", cloud="aws", vllm_args=[]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot tell the size of cic-sim-small",
        ),
        (
            local_policy(model="big-405B", accelerators="auto", cloud="aws", vllm_args=[]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs about 1013 GiB",
        ),
        (
            local_policy(cloud="", clouds=["local", "aws"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "`local` only alone",
        ),
        (
            local_policy(cloud="", clouds=["aws", "gcp;id"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cloud must be",
        ),
        (
            local_policy(cloud="", clouds=["aws", "gcp"], vllm_args=[]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no node provider for cloud `aws,gcp`",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _set(orchestrator, policy)
        assert refused.value.code() == code, message
        assert message in refused.value.details()
