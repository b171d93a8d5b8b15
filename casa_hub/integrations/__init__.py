"""Facility services a notebook is configured for; one small module each."""

from .base import Contribution, Integration, SpawnContext
from .xcache import XCacheIntegration

__all__ = ["Contribution", "Integration", "SpawnContext", "XCacheIntegration"]
