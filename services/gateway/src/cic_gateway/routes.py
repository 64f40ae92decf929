"""Every HTTP route of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from cic_gateway import (
    admin,
    admin_budgets,
    admin_catalog,
    admin_deployments,
    admin_environments,
    admin_ops,
    admin_prices,
    docs,
    health,
    node_api,
    notification_routes,
    openai_api,
    openapi,
    stripe_webhook,
    tenant_billing,
    tenant_keys,
    usage_api,
)


def _get(path: str, handler: Handler) -> web.RouteDef:
    """A GET route without the HEAD aiohttp would add (the API describes no HEAD)."""
    return web.get(path, handler, allow_head=False)


def _channel_routes(
    prefix: str,
    list_channels: Handler,
    create_channel: Handler,
    delete_channel: Handler,
    list_deliveries: Handler,
    send_test: Handler,
) -> list[web.RouteDef]:
    """The notification-channel routes under ``prefix`` (the tenant's or the operator's)."""
    base = f"{prefix}/notification-channels"
    return [
        _get(base, list_channels),
        web.post(base, create_channel),
        web.delete(base + "/{channel_id}", delete_channel),
        _get(base + "/{channel_id}/deliveries", list_deliveries),
        web.post(base + "/{channel_id}/test", send_test),
    ]


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            _get("/healthz", health.healthz),
            _get("/readyz", health.readyz),
            _get("/openapi.json", openapi.openapi_json),
            # Browsable API docs (Swagger UI's files served from the gateway itself).
            _get("/docs", docs.docs_page),
            _get("/docs/assets/{name}", docs.docs_asset),
            # Tenant API (OpenAI's, as vLLM serves it).
            web.post("/v1/chat/completions", openai_api.chat_completions),
            web.post("/v1/completions", openai_api.completions),
            web.post("/v1/embeddings", openai_api.embeddings),
            _get("/v1/models", openai_api.list_models),
            _get(r"/v1/models/{model:.+}", openai_api.get_model),
            # The tenant's own usage and cost (an admin or read-only key).
            _get("/v1/usage", usage_api.tenant_usage),
            # The tenant's month-to-date spend, credit, budgets and invoices (admin or read-only).
            _get("/v1/billing", tenant_billing.tenant_billing),
            # The tenant's own keys (an admin-role key).
            _get("/v1/api-keys", tenant_keys.list_keys),
            web.post("/v1/api-keys", tenant_keys.create_key),
            web.delete("/v1/api-keys/{key_id}", tenant_keys.revoke_key),
            # The tenant's own notification channels, kept by billing (an admin-role key).
            *_channel_routes(
                "/v1",
                notification_routes.list_channels,
                notification_routes.create_channel,
                notification_routes.delete_channel,
                notification_routes.list_deliveries,
                notification_routes.send_test,
            ),
            # Admin API (operator token; every call audited).
            web.post("/admin/tenants", admin.create_tenant),
            _get("/admin/tenants", admin.list_tenants),
            _get("/admin/tenants/{tenant_id}", admin.get_tenant),
            web.patch("/admin/tenants/{tenant_id}", admin.update_tenant),
            web.post("/admin/tenants/{tenant_id}/keys", admin.create_key),
            _get("/admin/tenants/{tenant_id}/keys", admin.list_keys),
            web.post(
                "/admin/tenants/{tenant_id}/environments", admin_environments.create_environment
            ),
            _get("/admin/tenants/{tenant_id}/environments", admin_environments.list_environments),
            web.patch(
                "/admin/environments/{environment_id}", admin_environments.update_environment
            ),
            _get("/admin/tenants/{tenant_id}/usage", admin_ops.tenant_usage),
            web.delete("/admin/keys/{key_id}", admin.revoke_key),
            _get("/admin/nodes", admin_ops.list_nodes),
            web.post("/admin/nodes", admin_ops.register_node),
            web.post("/admin/nodes/launch", admin_ops.launch_node),
            web.delete("/admin/nodes/{node_id}", admin_ops.terminate_node),
            _get("/admin/nodes/{node_id}/logs", admin_ops.node_logs),
            _get("/admin/audit", admin_ops.list_audit),
            # The operator's notification channels, kept by billing.
            *_channel_routes(
                "/admin",
                notification_routes.admin_list_channels,
                notification_routes.admin_create_channel,
                notification_routes.admin_delete_channel,
                notification_routes.admin_list_deliveries,
                notification_routes.admin_send_test,
            ),
            # Model deployments, kept true by the orchestrator (a model name may hold slashes).
            web.post("/admin/deployments", admin_deployments.create_deployment),
            _get("/admin/deployments", admin_deployments.list_deployments),
            _get(r"/admin/deployments/{model:.+}", admin_deployments.get_deployment),
            web.patch(r"/admin/deployments/{model:.+}", admin_deployments.change_deployment),
            web.delete(r"/admin/deployments/{model:.+}", admin_deployments.delete_deployment),
            # The model catalog and the regions, kept by billing (a model name may hold slashes).
            _get("/admin/models", admin_catalog.list_models),
            web.post("/admin/models", admin_catalog.create_model),
            web.patch(r"/admin/models/{model:.+}", admin_catalog.update_model),
            web.delete(r"/admin/models/{model:.+}", admin_catalog.delete_model),
            _get("/admin/regions", admin_catalog.list_regions),
            web.post("/admin/regions", admin_catalog.create_region),
            web.patch("/admin/regions/{code:[^/]+}", admin_catalog.update_region),
            # Model prices, kept by billing (a model name may hold slashes).
            _get("/admin/prices", admin_prices.list_prices),
            # Prepaid credits and budgets, kept by billing.
            web.post("/admin/tenants/{tenant_id}/credits", admin_budgets.create_grant),
            _get("/admin/tenants/{tenant_id}/credits", admin_budgets.list_grants),
            _get("/admin/tenants/{tenant_id}/credits/draws", admin_budgets.list_draws),
            web.put("/admin/tenants/{tenant_id}/budget", admin_budgets.set_tenant_budget),
            _get("/admin/tenants/{tenant_id}/budget", admin_budgets.get_tenant_budget),
            web.put(
                "/admin/environments/{environment_id}/budget",
                admin_budgets.set_environment_budget,
            ),
            _get(
                "/admin/environments/{environment_id}/budget", admin_budgets.get_environment_budget
            ),
            web.put(r"/admin/prices/{model:.+}", admin_prices.set_price),
            web.delete(r"/admin/prices/{model:.+}", admin_prices.delete_price),
            # The node agent's calls from GPU nodes (a per-node token).
            web.post("/internal/nodes/{node_id:[^/]+}/register", node_api.register),
            web.post("/internal/nodes/{node_id:[^/]+}/heartbeat", node_api.heartbeat),
            web.post("/internal/nodes/{node_id:[^/]+}/preemption", node_api.preemption),
            # Stripe's events (signed; no API key or admin token).
            web.post("/webhooks/stripe", stripe_webhook.stripe_webhook),
        ]
    )
