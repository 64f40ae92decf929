"""A few admin API calls the local stack makes for the demo tenant."""

from __future__ import annotations

import aiohttp


class AdminClient:
    def __init__(self, session: aiohttp.ClientSession, gateway_url: str, token: str) -> None:
        self._session = session
        self._base = gateway_url.rstrip("/")
        self._headers = {"X-Admin-Token": token}

    async def _call(self, method: str, path: str, json: object | None = None) -> tuple[int, object]:
        async with self._session.request(
            method, self._base + path, json=json, headers=self._headers
        ) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body

    async def create_tenant(self, name: str, email: str) -> dict:
        status, body = await self._call("POST", "/admin/tenants", {"name": name, "email": email})
        if status != 201 or not isinstance(body, dict):
            raise RuntimeError(f"creating tenant {email} answered {status}: {body}")
        return body

    async def find_tenant(self, email: str) -> dict | None:
        status, body = await self._call("GET", "/admin/tenants")
        if status != 200:
            raise RuntimeError(f"listing tenants answered {status}: {body}")
        tenants = body.get("data", []) if isinstance(body, dict) else []
        for tenant in tenants:
            if tenant["email"].lower() == email.lower():
                return tenant
        return None

    async def create_key(
        self, tenant_id: str, name: str, role: str = "developer", **limits: int
    ) -> dict:
        """A new key; ``limits`` are its ``rpm_limit`` / ``tpm_limit`` when given."""
        fields = {"name": name, "role": role, **limits}
        status, body = await self._call("POST", f"/admin/tenants/{tenant_id}/keys", fields)
        if status != 201 or not isinstance(body, dict):
            raise RuntimeError(f"creating a key answered {status}: {body}")
        return body

    async def list_nodes(self) -> list[dict]:
        status, body = await self._call("GET", "/admin/nodes")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"listing nodes answered {status}: {body}")
        return list(body.get("data", []))

    async def usage(self, tenant_id: str) -> dict:
        status, body = await self._call("GET", f"/admin/tenants/{tenant_id}/usage")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"reading usage answered {status}: {body}")
        return body
