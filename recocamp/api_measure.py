"""The measurement part of the HTTP API: feedback answers and the latest report.

``api.create_app`` includes :func:`router`; ``require`` turns a scope name into the FastAPI
dependency that checks the caller's API key for it (see ``api``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter

from recocamp.clock import Clock
from recocamp.settings import Settings


def router(settings: Settings, engine: sa.Engine, clock: Clock,
           require: Callable[[str], Any]) -> APIRouter:  # fmt: skip
    """The measurement routes (``POST /v1/feedback``, ``GET /reports/latest``)."""
    return APIRouter()
