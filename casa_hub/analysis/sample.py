"""The sample data set shipped with casa_hub: 200 events of CMS 2015 Open Data ttbar NanoAOD.

The file and its provenance note (``data/SOURCE``: origin, licence, checksum) are package data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_FILE = DATA_DIR / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
SAMPLE_SOURCE = DATA_DIR / "SOURCE"
TREE = "Events"


def sample_fileset(name: str = "ttbar") -> dict[str, dict[str, Any]]:
    """coffea's fileset reading the shipped sample file directly (no cache, no facility)."""
    return {name: {"files": {str(SAMPLE_FILE): TREE}}}
