"""A client for /api/v1 as a web console would use it, and helpers that make users with tokens."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from aggregator.model import Role, new_id
from aggregator.store import Store
from aggregator.tokens import new_token


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code"))
        return None


@dataclass
class ApiClient:
    """Calls /api/v1 with one bearer token (or none)."""

    http: aiohttp.ClientSession
    base_url: str
    token: str | None

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        body = data
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        url = f"{self.base_url}/api/v1{path}"
        payload = io.BytesIO(body) if body is not None else None
        async with self.http.request(method, url, data=payload, params=params, headers=all_headers) as response:
            raw = await response.read()
            parsed: Any = None
            if raw and response.content_type == "application/json":
                parsed = json.loads(raw)
            elif raw:
                parsed = raw
            return Reply(response.status, parsed, response.headers)

    async def get(self, path: str, **params: str) -> Reply:
        return await self.call("GET", path, params=params or None)

    async def post(self, path: str, body: Any = None) -> Reply:
        return await self.call("POST", path, json_body=body)

    async def patch(self, path: str, body: Any) -> Reply:
        return await self.call("PATCH", path, json_body=body)

    async def delete(self, path: str) -> Reply:
        return await self.call("DELETE", path)

    def as_token(self, token: str | None) -> ApiClient:
        return ApiClient(self.http, self.base_url, token)


async def user_with_token(
    store: Store, workspace_id: str, role: Role, *, name: str | None = None, languages: tuple[str, ...] = ()
) -> tuple[str, str]:
    """A new user of that role in the workspace and a token for it: (user id, token)."""
    suffix = new_id()[-8:]
    user_id = await store.create_user(
        workspace_id, name or f"{role.value} {suffix}", f"{role.value}-{suffix}@example.test", role, languages
    )
    token = new_token()
    await store.create_token(workspace_id, role, token, user_id=user_id, name=f"{role.value} test token")
    return user_id, token
