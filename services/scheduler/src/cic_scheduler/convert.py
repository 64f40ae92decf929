"""Between protobuf messages and the scheduler's own types, validating what callers send."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc
from yarl import URL

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_scheduler.nodes import (
    BreakerState,
    Lease,
    LeaseReturn,
    ModelNotServed,
    NodeNotFound,
    NodeSpec,
    NodeState,
    NodeTerminated,
    NodeView,
    NoReadyNode,
    Outcome,
    PickRequest,
    RegistryUnavailable,
    SchedulerError,
)

MAX_ID_CHARS = 128
MAX_MODEL_CHARS = 256
MAX_ENDPOINT_CHARS = 2048
MAX_LABELS = 64
MAX_LABEL_CHARS = 256
MAX_PREFIX_KEY_CHARS = 128
MAX_EXCLUDED_NODES = 256
MAX_LEASE_ID_CHARS = 128

_STATE_FROM_PROTO: dict[int, NodeState] = {
    pb.NODE_STATE_UNSPECIFIED: NodeState.READY,
    pb.NODE_STATE_LAUNCHING: NodeState.LAUNCHING,
    pb.NODE_STATE_READY: NodeState.READY,
    pb.NODE_STATE_DRAINING: NodeState.DRAINING,
    pb.NODE_STATE_TERMINATED: NodeState.TERMINATED,
    pb.NODE_STATE_FAILED: NodeState.FAILED,
}
_STATE_TO_PROTO = {
    NodeState.LAUNCHING: pb.NODE_STATE_LAUNCHING,
    NodeState.READY: pb.NODE_STATE_READY,
    NodeState.DRAINING: pb.NODE_STATE_DRAINING,
    NodeState.TERMINATED: pb.NODE_STATE_TERMINATED,
    NodeState.FAILED: pb.NODE_STATE_FAILED,
}
_BREAKER_TO_PROTO = {
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}
_OUTCOME_FROM_PROTO: dict[int, Outcome] = {
    pb.OUTCOME_SUCCESS: Outcome.SUCCESS,
    pb.OUTCOME_NODE_ERROR: Outcome.NODE_ERROR,
    pb.OUTCOME_CLIENT_ERROR: Outcome.CLIENT_ERROR,
}


class InvalidArgument(SchedulerError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""


def _token(value: str, field: str, max_chars: int) -> str:
    """A required identifier: non-empty, printable, no whitespace, bounded."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is longer than {max_chars} characters")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidArgument(f"{field} must be printable and contain no whitespace")
    return value


def node_id(value: str, field: str = "node_id") -> str:
    return _token(value, field, MAX_ID_CHARS)


def model_name(value: str) -> str:
    return _token(value, "model", MAX_MODEL_CHARS)


def optional_model(value: str) -> str | None:
    """A model filter: empty means every model."""
    return model_name(value) if value else None


def prefix_key(value: str) -> str:
    """The gateway's hash of the prompt prefix; empty means none."""
    if len(value) > MAX_PREFIX_KEY_CHARS:
        raise InvalidArgument(f"prefix_key is longer than {MAX_PREFIX_KEY_CHARS} characters")
    if not value.isprintable():
        raise InvalidArgument("prefix_key must be printable")
    return value


def region(value: str) -> str:
    """A preferred region: a node label value; empty means none."""
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"region is longer than {MAX_LABEL_CHARS} characters")
    if not value.isprintable():
        raise InvalidArgument("region must be printable")
    return value


def exclude_node_ids(values: Iterable[str]) -> frozenset[str]:
    ids = list(values)
    if len(ids) > MAX_EXCLUDED_NODES:
        raise InvalidArgument(f"exclude_node_ids holds more than {MAX_EXCLUDED_NODES} ids")
    return frozenset(node_id(value, "exclude_node_ids") for value in ids)


def lease_id(value: str, field: str = "lease_id") -> str:
    return _token(value, field, MAX_LEASE_ID_CHARS)


def endpoint(value: str) -> str:
    """An absolute http(s) base URL without credentials, query or fragment, with no trailing
    slash (callers append paths such as ``/v1/chat/completions``)."""
    if not value:
        raise InvalidArgument("endpoint is required")
    if len(value) > MAX_ENDPOINT_CHARS:
        raise InvalidArgument(f"endpoint is longer than {MAX_ENDPOINT_CHARS} characters")
    try:
        url = URL(value)
        port = url.port
    except ValueError as err:
        raise InvalidArgument(f"endpoint is not a valid URL: {err}") from None
    if url.scheme not in ("http", "https") or not url.host or port is None:
        raise InvalidArgument("endpoint must be an absolute http:// or https:// URL with a host")
    if url.user is not None or url.password is not None:
        raise InvalidArgument("endpoint must not carry credentials")
    if url.query_string or url.fragment:
        raise InvalidArgument("endpoint must not have a query or a fragment")
    return str(url).rstrip("/")


def labels(values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels")
    for key, value in values.items():
        if not key or len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
            raise InvalidArgument(
                f"label keys must be 1 to {MAX_LABEL_CHARS} characters, values "
                f"at most {MAX_LABEL_CHARS}"
            )
    return dict(values)


def node_spec(request: pb.RegisterNodeRequest) -> NodeSpec:
    state = _STATE_FROM_PROTO.get(request.state)
    if state is None:
        raise InvalidArgument(f"unknown node state {request.state}")
    return NodeSpec(
        id=node_id(request.id, "id"),
        model=model_name(request.model),
        endpoint=endpoint(request.endpoint),
        state=state,
        labels=labels(request.labels),
    )


def outcome(value: int) -> Outcome:
    """Unknown values count as unspecified: the lease is given back all the same."""
    return _OUTCOME_FROM_PROTO.get(value, Outcome.UNSPECIFIED)


def node_to_proto(node: NodeView) -> pb.Node:
    message = pb.Node(
        id=node.id,
        model=node.model,
        endpoint=node.endpoint,
        state=_STATE_TO_PROTO[node.state],
        in_flight=node.in_flight,
        healthy=node.healthy,
        labels=dict(node.labels),
    )
    message.last_heartbeat.FromDatetime(node.last_heartbeat)
    message.breaker = _BREAKER_TO_PROTO[node.breaker]
    if node.load is not None:
        message.load.running = node.load.running
        message.load.waiting = node.load.waiting
        message.load.kv_cache_usage = node.load.kv_cache_usage
        message.load.scraped_at.FromNanoseconds(int(node.load.scraped_at * 1e9))
    return message


def pick_request(request: pb.PickNodeRequest) -> PickRequest:
    return PickRequest(
        model=model_name(request.model),
        exclude_node_ids=exclude_node_ids(request.exclude_node_ids),
        prefix_key=prefix_key(request.prefix_key),
        region=region(request.region),
    )


def picked(lease: Lease) -> pb.PickNodeResponse:
    return pb.PickNodeResponse(node=node_to_proto(lease.node), lease_id=lease.lease_id)


def lease_return(request: pb.ReleaseNodeRequest) -> LeaseReturn:
    return LeaseReturn(
        request.lease_id, outcome(request.outcome), request.prompt_tokens, request.completion_tokens
    )


_STATUS_CODES: dict[type[SchedulerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NodeNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotServed: grpc.StatusCode.NOT_FOUND,
    NoReadyNode: grpc.StatusCode.UNAVAILABLE,
    RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    NodeTerminated: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(err: SchedulerError) -> grpc.StatusCode:
    """The gRPC status a call ends with when it fails with ``err``."""
    return _STATUS_CODES.get(type(err), grpc.StatusCode.FAILED_PRECONDITION)
