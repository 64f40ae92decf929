"""Every HTTP route of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from cic_gateway import (
    admin,
    admin_deployments,
    admin_ops,
    admin_prices,
    health,
    node_api,
    openai_api,
    openapi,
    stripe_webhook,
)


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/healthz", health.healthz, allow_head=False),
            web.get("/readyz", health.readyz, allow_head=False),
            web.get("/openapi.json", openapi.openapi_json, allow_head=False),
            # Tenant API (OpenAI's, as vLLM serves it).
            web.post("/v1/chat/completions", openai_api.chat_completions),
            web.post("/v1/completions", openai_api.completions),
            web.post("/v1/embeddings", openai_api.embeddings),
            web.get("/v1/models", openai_api.list_models, allow_head=False),
            # Admin API (operator token; every call audited).
            web.post("/admin/tenants", admin.create_tenant),
            web.get("/admin/tenants", admin.list_tenants, allow_head=False),
            web.get("/admin/tenants/{tenant_id}", admin.get_tenant, allow_head=False),
            web.patch("/admin/tenants/{tenant_id}", admin.update_tenant),
            web.post("/admin/tenants/{tenant_id}/keys", admin.create_key),
            web.get("/admin/tenants/{tenant_id}/keys", admin.list_keys, allow_head=False),
            web.get("/admin/tenants/{tenant_id}/usage", admin_ops.tenant_usage, allow_head=False),
            web.delete("/admin/keys/{key_id}", admin.revoke_key),
            web.get("/admin/nodes", admin_ops.list_nodes, allow_head=False),
            web.post("/admin/nodes", admin_ops.register_node),
            web.post("/admin/nodes/launch", admin_ops.launch_node),
            web.delete("/admin/nodes/{node_id}", admin_ops.terminate_node),
            web.get("/admin/nodes/{node_id}/logs", admin_ops.node_logs, allow_head=False),
            web.get("/admin/audit", admin_ops.list_audit, allow_head=False),
            # Model deployments, kept true by the orchestrator (a model name may hold slashes).
            web.post("/admin/deployments", admin_deployments.create_deployment),
            web.get("/admin/deployments", admin_deployments.list_deployments, allow_head=False),
            web.get(
                r"/admin/deployments/{model:.+}",
                admin_deployments.get_deployment,
                allow_head=False,
            ),
            web.patch(r"/admin/deployments/{model:.+}", admin_deployments.change_deployment),
            web.delete(r"/admin/deployments/{model:.+}", admin_deployments.delete_deployment),
            # Model prices, kept by billing (a model name may hold slashes).
            web.get("/admin/prices", admin_prices.list_prices, allow_head=False),
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
