"""API tokens: how they are made and how they are stored (hashed, never the token itself)."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    """A new bearer token: 'agg_' and 256 random bits."""
    return "agg_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored of a token: its SHA-256 (a token has 256 random bits, so no salt or stretching)."""
    return hashlib.sha256(token.encode()).hexdigest()
