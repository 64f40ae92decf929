"""Typed keys under which middlewares and handlers keep per-request values on the request."""

from typing import Any

from aiohttp import web

# The gateway's own id for the request (``req_<uuid4 hex>``): the billing key.
REQUEST_ID = web.RequestKey("request_id", str)
# The client's own ``x-request-id``, echoed back when it sent a sane one.
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)
# The model, once the scheduler knew it (so the metric label stays bounded).
MODEL_LABEL = web.RequestKey("model_label", str)
# What the audit row should say about an admin call (ids, never secrets).
AUDIT_DETAIL = web.RequestKey("audit_detail", dict[str, Any])
