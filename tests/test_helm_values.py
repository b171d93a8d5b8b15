"""helm-values.yaml against the Zero to JupyterHub values schema and casa_hub's own settings."""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import yaml
from traitlets.config import Config

from casa_hub.tokens.grants import parse_grants

ROOT = Path(__file__).resolve().parent.parent
# the chart's values schema, kept beside the repository (override with CASA_Z2JH_SCHEMA)
SCHEMA = Path(os.environ.get("CASA_Z2JH_SCHEMA", ROOT.parent / "shared" / "z2jh" / "values.schema.yaml"))


def load(path: Path) -> dict:
    assert path.exists(), f"{path} not found; set CASA_Z2JH_SCHEMA to the Zero to JupyterHub values schema"
    return yaml.safe_load(path.read_text())


def without_required(node):
    """The schema as it applies to an overlay: Helm merges the chart's defaults (which supply every
    required key) before validating, so only types, names and additionalProperties apply here."""
    if isinstance(node, dict):
        return {k: without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [without_required(v) for v in node]
    return node


def test_values_validate_against_z2jh_schema():
    values = load(ROOT / "helm-values.yaml")
    jsonschema.validate(values, without_required(load(SCHEMA)))


def test_schema_check_catches_a_misspelled_key():
    values = load(ROOT / "helm-values.yaml")
    values["hub"]["extraEnvs"] = values["hub"].pop("extraEnv")
    try:
        jsonschema.validate(values, without_required(load(SCHEMA)))
    except jsonschema.ValidationError as e:
        assert "extraEnvs" in e.message
    else:
        raise AssertionError("a misspelled hub key must fail validation")


def test_values_carry_no_secret_values_and_valid_grants():
    text = (ROOT / "helm-values.yaml").read_text()
    values = load(ROOT / "helm-values.yaml")
    hub_config = Config(values["hub"]["config"])
    assert "client_secret" not in hub_config.CasaOIDCAuthenticator
    for env in values["hub"]["extraEnv"].values():
        assert "secretKeyRef" in env["valueFrom"], "secrets must come from Kubernetes Secrets"
    parse_grants(hub_config.CasaTokenIssuer.grants)
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
