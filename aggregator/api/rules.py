"""/api/v1 endpoints: rules (being built)."""

from __future__ import annotations

from aggregator.api.framework import Api

api = Api()
