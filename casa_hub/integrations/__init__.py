"""Facility services a notebook is configured for; one small module each."""

from .base import Contribution, Integration, SpawnContext
from .checks import CheckedIntegration
from .htcondor import HTCondorIntegration
from .mlflow import MLflowIntegration
from .servicex import ServiceXIntegration
from .triton import TritonIntegration
from .xcache import XCacheIntegration

__all__ = [
    "CheckedIntegration",
    "Contribution",
    "HTCondorIntegration",
    "Integration",
    "MLflowIntegration",
    "ServiceXIntegration",
    "SpawnContext",
    "TritonIntegration",
    "XCacheIntegration",
]
