"""Small in-process gRPC servicers standing in for the scheduler, billing and the orchestrator.

They record every call so that tests can check what the gateway asked, and can be told to fail.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from cic.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from cic_common.grpc_server import GrpcServer
from tests.unit.gateway.fake_budgets import FakeBudgets
from tests.unit.gateway.fake_notifications import FakeNotifications


@dataclass
class Release:
    lease_id: str
    outcome: int
    prompt_tokens: int
    completion_tokens: int


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Knows the nodes it is given; a model with no node is NOT_FOUND, one whose nodes are all
    not ready is UNAVAILABLE."""

    def __init__(self) -> None:
        self.nodes: list[scheduler_pb2.Node] = []
        self.picks: list[str] = []
        self.prefix_keys: list[str] = []
        self.regions: list[str] = []
        self.excluded: list[list[str]] = []
        self.releases: list[Release] = []
        self._lease_ids = itertools.count(1)
        self._released = asyncio.Condition()
        self.route = True  # serves the Route stream
        self.route_calls = 0
        self.route_streams = 0
        self.route_messages: list[scheduler_pb2.RouteRequest] = []
        self.route_delay_s = 0.0
        self.unary_picks = 0
        self._routes_broken = asyncio.Event()

    def add_node(self, node_id: str, model: str, endpoint: str, *, ready: bool = True) -> None:
        state = scheduler_pb2.NODE_STATE_READY if ready else scheduler_pb2.NODE_STATE_LAUNCHING
        self.nodes.append(
            scheduler_pb2.Node(
                id=node_id, model=model, endpoint=endpoint, state=state, healthy=ready, in_flight=0
            )
        )

    def _pick(
        self, request: scheduler_pb2.PickNodeRequest
    ) -> scheduler_pb2.PickNodeResponse | tuple[grpc.StatusCode, str]:
        self.picks.append(request.model)
        self.prefix_keys.append(request.prefix_key)
        self.regions.append(request.region)
        nodes = [n for n in self.nodes if n.model == request.model]
        if not nodes:
            return grpc.StatusCode.NOT_FOUND, f"unknown model {request.model}"
        self.excluded.append(list(request.exclude_node_ids))
        ready = [
            n
            for n in nodes
            if n.state == scheduler_pb2.NODE_STATE_READY and n.id not in request.exclude_node_ids
        ]
        if not ready:
            return grpc.StatusCode.UNAVAILABLE, f"no ready node for {request.model}"
        return scheduler_pb2.PickNodeResponse(
            node=ready[0], lease_id=f"lease-{next(self._lease_ids)}"
        )

    async def PickNode(self, request, context):
        self.unary_picks += 1
        picked = self._pick(request)
        if isinstance(picked, tuple):
            await context.abort(*picked)
        return picked

    async def Route(self, request_iterator, context):
        """As the real scheduler's: picks answered by id, releases unanswered. Answers UNIMPLEMENTED
        when ``route`` is False, as a scheduler without the stream would; each answer waits
        ``route_delay_s``; ``break_routes()`` ends every open stream with UNAVAILABLE."""
        self.route_calls += 1
        if not self.route:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.route_streams += 1
        broken = asyncio.ensure_future(self._routes_broken.wait())
        try:
            while True:
                message = asyncio.ensure_future(context.read())
                await asyncio.wait({message, broken}, return_when=asyncio.FIRST_COMPLETED)
                if broken.done():
                    message.cancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler going away")
                message = message.result()
                if message is grpc.aio.EOF:
                    return
                self.route_messages.append(message)
                for release in message.releases:
                    await self.ReleaseNode(release, context)
                answers = [self._route_answer(pick) for pick in message.picks]
                if answers:
                    await asyncio.sleep(self.route_delay_s)
                    await context.write(scheduler_pb2.RouteResponse(picks=answers))
        finally:
            broken.cancel()

    def _route_answer(self, pick: scheduler_pb2.RoutePick) -> scheduler_pb2.RoutePicked:
        picked = self._pick(pick.request)
        if isinstance(picked, tuple):
            code, text = picked
            return scheduler_pb2.RoutePicked(
                id=pick.id, error_code=code.value[0], error_message=text
            )
        return scheduler_pb2.RoutePicked(id=pick.id, picked=picked)

    def break_routes(self) -> None:
        self._routes_broken.set()
        self._routes_broken = asyncio.Event()

    async def ReleaseNode(self, request, context):
        self.releases.append(
            Release(
                request.lease_id, request.outcome, request.prompt_tokens, request.completion_tokens
            )
        )
        async with self._released:
            self._released.notify_all()
        return scheduler_pb2.ReleaseNodeResponse()

    async def ReleaseNodes(self, request, context):
        for release in request.releases:
            await self.ReleaseNode(release, context)
        return scheduler_pb2.ReleaseNodesResponse()

    async def wait_for_releases(self, count: int, timeout: float = 10.0) -> list[Release]:
        async with self._released:
            await asyncio.wait_for(
                self._released.wait_for(lambda: len(self.releases) >= count), timeout
            )
        return list(self.releases)

    async def ListNodes(self, request, context):
        return scheduler_pb2.ListNodesResponse(
            nodes=[n for n in self.nodes if not request.model or n.model == request.model]
        )


# An embedding model of the fake catalog, for tests that send embeddings to the fake node.
EMBED_MODEL = "test-embed"
# The models the gateway tests call, and their types, in the fake catalog.
CATALOG_MODELS = {
    "test-model": billing_pb2.MODEL_TYPE_CHAT,
    "test-embed": billing_pb2.MODEL_TYPE_EMBEDDING,
    "cic-sim-small": billing_pb2.MODEL_TYPE_CHAT,
    "cic-sim-embed": billing_pb2.MODEL_TYPE_EMBEDDING,
    "cold-model": billing_pb2.MODEL_TYPE_CHAT,
}


def catalog_model(
    name: str, model_type: int = billing_pb2.MODEL_TYPE_CHAT
) -> billing_pb2.CatalogModel:
    model = billing_pb2.CatalogModel(
        name=name,
        type=model_type,  # type: ignore[arg-type]
        context_length=4096,
        prompt_micro_usd_per_mtok=100_000,
        completion_micro_usd_per_mtok=200_000,
    )
    model.created_at.FromSeconds(1_700_000_000)
    model.updated_at.FromSeconds(1_700_000_000)
    return model


class FakeBilling(FakeNotifications, FakeBudgets, billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[billing_pb2.UsageEvent] = []
        self.batches: list[int] = []
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.usage_queries: list[billing_pb2.GetUsageRequest] = []
        self.usage_reply = billing_pb2.GetUsageResponse()
        self.prices: dict[str, tuple[int, int]] = {"cic-sim-small": (100_000, 200_000)}
        self.webhooks: list[billing_pb2.StripeWebhookRequest] = []
        self.webhook_reply = billing_pb2.StripeWebhookResponse(event_id="evt_fake")
        self.webhook_error: tuple[grpc.StatusCode, str] | None = None
        self.confirmed: list[str] = []
        # GetBillingAccount answers account_reply (Stripe off by default) for the tenant asked
        # about; CreatePortalSession a session URL naming the tenant, or FAILED_PRECONDITION with
        # Stripe off. Either refuses with its *_error when set.
        self.account_queries: list[billing_pb2.GetBillingAccountRequest] = []
        self.account_reply = billing_pb2.BillingAccount()
        self.account_error: tuple[grpc.StatusCode, str] | None = None
        self.portal_requests: list[billing_pb2.CreatePortalSessionRequest] = []
        self.portal_url = "https://billing.stripe.com/p/session/test_fake"
        self.portal_error: tuple[grpc.StatusCode, str] | None = None
        # The model catalog the gateway's cache loads (ListModels), keyed by name; the models
        # the gateway tests serve are in it. ``catalog_error`` makes ListModels refuse.
        self.catalog: dict[str, billing_pb2.CatalogModel] = {
            name: catalog_model(name, model_type) for name, model_type in CATALOG_MODELS.items()
        }
        self.catalog_error: tuple[grpc.StatusCode, str] | None = None
        self.catalog_calls = 0
        self.regions: dict[str, billing_pb2.Region] = {
            "eu-west": billing_pb2.Region(
                code="eu-west", name="Europe West", cost_multiplier_ppm=1_500_000
            )
        }
        self._arrived = asyncio.Condition()

    async def RecordUsage(self, request, context):
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(self.fail_code, "billing cannot take this batch now")
        if any(not e.tenant_id for e in request.events):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant_id is required")
        seen = {e.request_id for e in self.events}
        fresh = [e for e in request.events if e.request_id not in seen]
        self.events.extend(fresh)
        self.batches.append(len(request.events))
        async with self._arrived:
            self._arrived.notify_all()
        return billing_pb2.RecordUsageResponse(
            recorded=len(fresh), duplicates=len(request.events) - len(fresh)
        )

    async def GetUsage(self, request, context):
        self.usage_queries.append(request)
        return self.usage_reply

    async def ListModels(self, request, context):
        self.catalog_calls += 1
        if self.catalog_error is not None:
            await context.abort(*self.catalog_error)
        return billing_pb2.ListModelsResponse(
            models=[self.catalog[n] for n in sorted(self.catalog)]
        )

    async def CreateModel(self, request, context):
        if request.model.name in self.catalog:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "model is in the catalog")
        model = billing_pb2.CatalogModel()
        model.CopyFrom(request.model)
        model.created_at.FromSeconds(1_700_000_000)
        model.updated_at.FromSeconds(1_700_000_000)
        self.catalog[model.name] = model
        return model

    async def UpdateModel(self, request, context):
        model = self.catalog.get(request.name)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        for name in (
            "type",
            "context_length",
            "prompt_micro_usd_per_mtok",
            "completion_micro_usd_per_mtok",
        ):
            if request.HasField(name):
                setattr(model, name, getattr(request, name))
        return model

    async def DeleteModel(self, request, context):
        if self.catalog.pop(request.name, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        return billing_pb2.DeleteModelResponse()

    async def ListRegions(self, request, context):
        return billing_pb2.ListRegionsResponse(
            regions=[self.regions[c] for c in sorted(self.regions)]
        )

    async def CreateRegion(self, request, context):
        if request.region.code in self.regions:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "region already exists")
        region = billing_pb2.Region()
        region.CopyFrom(request.region)
        region.created_at.FromSeconds(1_700_000_000)
        region.updated_at.FromSeconds(1_700_000_000)
        self.regions[region.code] = region
        return region

    async def UpdateRegion(self, request, context):
        region = self.regions.get(request.code)
        if region is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no region {request.code!r}")
        if request.HasField("name"):
            region.name = request.name
        if request.HasField("cost_multiplier_ppm"):
            region.cost_multiplier_ppm = request.cost_multiplier_ppm
        return region

    def _price(self, model: str) -> billing_pb2.ModelPrice:
        prompt, completion = self.prices[model]
        return billing_pb2.ModelPrice(
            model=model,
            prompt_micro_usd_per_mtok=prompt,
            completion_micro_usd_per_mtok=completion,
            updated_at=Timestamp(seconds=1),
        )

    async def ListPrices(self, request, context):
        return billing_pb2.ListPricesResponse(prices=[self._price(m) for m in sorted(self.prices)])

    async def SetPrice(self, request, context):
        self.prices[request.model] = (
            request.prompt_micro_usd_per_mtok,
            request.completion_micro_usd_per_mtok,
        )
        return self._price(request.model)

    async def DeletePrice(self, request, context):
        if self.prices.pop(request.model, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no price for model {request.model!r}")
        return billing_pb2.DeletePriceResponse()

    async def HandleStripeWebhook(self, request, context):
        """Takes every delivery (the real billing verifies the signature), or refuses it with
        ``webhook_error``."""
        self.webhooks.append(request)
        if self.webhook_error is not None:
            await context.abort(*self.webhook_error)
        return self.webhook_reply

    async def ConfirmStripeEvent(self, request, context):
        self.confirmed.append(request.event_id)
        return billing_pb2.ConfirmStripeEventResponse()

    async def GetBillingAccount(self, request, context):
        self.account_queries.append(request)
        if self.account_error is not None:
            await context.abort(*self.account_error)
        reply = billing_pb2.BillingAccount()
        reply.CopyFrom(self.account_reply)
        reply.tenant_id = request.tenant_id
        return reply

    async def CreatePortalSession(self, request, context):
        self.portal_requests.append(request)
        if self.portal_error is not None:
            await context.abort(*self.portal_error)
        if not self.account_reply.stripe_enabled:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "billing has no Stripe key")
        return billing_pb2.CreatePortalSessionResponse(
            url=f"{self.portal_url}_{request.tenant_id}", customer_id=f"cus_{request.tenant_id}"
        )

    async def wait_for_events(
        self, count: int, timeout: float = 10.0
    ) -> list[billing_pb2.UsageEvent]:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.events) >= count), timeout
            )
        return list(self.events)


# The one node token the fake orchestrator takes (for the node API under /internal/nodes/).
FAKE_NODE_TOKEN = "cic-node-" + "a" * 43


class FakeOrchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self._ids = itertools.count(1)
        self.policies: dict[str, orchestrator_pb2.ScalingPolicy] = {}

    def _node(self, **fields) -> orchestrator_pb2.ManagedNode:
        return orchestrator_pb2.ManagedNode(id=f"node-{next(self._ids)}", **fields)

    async def RegisterNode(self, request, context):
        self.calls.append(("RegisterNode", request))
        node = self._node(
            model=request.model,
            endpoint=request.endpoint,
            provider="manual",
            state=orchestrator_pb2.NODE_STATE_LAUNCHING,
        )
        return orchestrator_pb2.RegisterNodeResponse(node=node)

    async def LaunchNode(self, request, context):
        self.calls.append(("LaunchNode", request))
        if any(arg.startswith("--evil") for arg in request.vllm_args):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "vllm arg --evil is not allowed")
        node = self._node(
            model=request.model,
            accelerators=request.accelerators,
            cloud=request.cloud,
            vllm_args=list(request.vllm_args),
            provider="skypilot",
            state=orchestrator_pb2.NODE_STATE_LAUNCHING,
        )
        return orchestrator_pb2.LaunchNodeResponse(node=node)

    async def TerminateNode(self, request, context):
        self.calls.append(("TerminateNode", request))
        if request.node_id == "node-terminated":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "node is already terminated")
        if not request.node_id.startswith("node-"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {request.node_id}")
        node = orchestrator_pb2.ManagedNode(
            id=request.node_id, model="m", state=orchestrator_pb2.NODE_STATE_DRAINING
        )
        return orchestrator_pb2.TerminateNodeResponse(node=node)

    async def ListNodes(self, request, context):
        node = orchestrator_pb2.ManagedNode(
            id="node-a",
            state=orchestrator_pb2.NODE_STATE_READY,
            health=orchestrator_pb2.NODE_HEALTH_HEALTHY,
        )
        return orchestrator_pb2.ListNodesResponse(nodes=[node])

    async def SetScalingPolicy(self, request, context):
        self.calls.append(("SetScalingPolicy", request))
        policy = request.policy
        if not policy.min_nodes <= policy.max_nodes or policy.max_nodes < 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "max_nodes must be between min_nodes and 1000"
            )
        self.policies[policy.model] = policy
        return orchestrator_pb2.SetScalingPolicyResponse(policy=policy)

    async def GetScalingPolicy(self, request, context):
        if request.model not in self.policies:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no scaling policy for {request.model}")
        return orchestrator_pb2.GetScalingPolicyResponse(policy=self.policies[request.model])

    async def ListScalingPolicies(self, request, context):
        return orchestrator_pb2.ListScalingPoliciesResponse(policies=list(self.policies.values()))

    async def DeleteScalingPolicy(self, request, context):
        self.calls.append(("DeleteScalingPolicy", request))
        if self.policies.pop(request.model, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no scaling policy for {request.model}")
        return orchestrator_pb2.DeleteScalingPolicyResponse()

    async def StreamNodeLogs(self, request, context):
        if not request.node_id.startswith("node-"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {request.node_id}")
        for text in ("launching", "ready"):
            line = orchestrator_pb2.NodeLogLine(text=f"node {request.node_id}: {text}")
            line.at.FromJsonString("2026-01-01T00:00:00Z")
            yield line

    async def _agent(self, method, request, context):
        self.calls.append((method, request))
        if request.token != FAKE_NODE_TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the node token is not valid")
        return orchestrator_pb2.AgentResponse(state=orchestrator_pb2.NODE_STATE_READY)

    async def AgentRegister(self, request, context):
        return await self._agent("AgentRegister", request, context)

    async def AgentHeartbeat(self, request, context):
        return await self._agent("AgentHeartbeat", request, context)

    async def AgentPreempted(self, request, context):
        return await self._agent("AgentPreempted", request, context)


@dataclass
class FakeServices:
    scheduler: FakeScheduler = field(default_factory=FakeScheduler)
    billing: FakeBilling = field(default_factory=FakeBilling)
    orchestrator: FakeOrchestrator = field(default_factory=FakeOrchestrator)
    server: GrpcServer | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = GrpcServer()
        self.server.add_service(
            "cic.scheduler.v1.SchedulerService",
            scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
            self.scheduler,
        )
        self.server.add_service(
            "cic.billing.v1.BillingService",
            billing_pb2_grpc.add_BillingServiceServicer_to_server,
            self.billing,
        )
        self.server.add_service(
            "cic.orchestrator.v1.OrchestratorService",
            orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
            self.orchestrator,
        )
        self.port = await self.server.start(0, host="127.0.0.1")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
