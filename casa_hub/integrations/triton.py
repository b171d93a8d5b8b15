"""Triton: the facility's inference endpoints and, if configured, model repository credentials.

The notebook gets ``triton.json`` in its config directory (``CASA_TRITON_CONFIG``) and
``TRITON_SERVER_URL`` (the default endpoint). Credentials are never values in env or in the
file: either a token grant (its token file, renewed in place) or the path of a credentials file
the site mounts into the notebook. ``endpoint_settings()`` reads the file in a notebook::

    import tritonclient.grpc as grpcclient
    from casa_hub.integrations.triton import endpoint_settings
    s = endpoint_settings()
    client = grpcclient.InferenceServerClient(url=s["address"], ssl=s["ssl"])
    client.is_server_ready(headers=s["headers"]())
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from traitlets import Dict, Unicode

from casa_hub.integrations.base import Contribution, Integration, SpawnContext
from casa_hub.integrations.checks import name_problem, path_problem, template_problem, url_problem

CONFIG_FILE = "triton.json"
ENV_CONFIG = "CASA_TRITON_CONFIG"
ENDPOINT_SCHEMES = ("grpc", "grpcs", "http", "https")
REPOSITORY_SCHEMES = ("s3", "gs", "as", "root", "roots", "https", "davs", "http")


class TritonIntegration(Integration):
    """Inference endpoints and model repository access for NVIDIA Triton."""

    name = "triton"
    title = "Triton"

    endpoints = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Inference endpoints, name -> URL (``grpc://``, ``grpcs://``, ``http://`` or
        ``https://``, with host and port), e.g. ``{"gpu": "grpcs://triton.example.org:443"}``.
        At least one is required.""",
    )

    default_endpoint = Unicode(
        "",
        config=True,
        help="""Name of the endpoint exported as ``TRITON_SERVER_URL``. Empty: the first of
        ``endpoints``.""",
    )

    grant = Unicode(
        "",
        config=True,
        help="""Issuer grant whose token clients send to the endpoints (``Authorization:
        Bearer``, checked by the site's proxy in front of Triton). Empty: no token. Users without
        this grant get no Triton configuration.""",
    )

    model_repository = Unicode(
        "",
        config=True,
        help="""Where users put models for the facility's Triton, e.g.
        ``s3://models/{username}`` or ``roots://eos.example.org//models/{username}``;
        ``{username}`` expands. Exported as ``CASA_TRITON_MODEL_REPOSITORY``. Empty: none.""",
    )

    model_repository_grant = Unicode(
        "",
        config=True,
        help="""Issuer grant whose token gives write access to ``model_repository`` (e.g. scope
        ``storage.modify:/models/{username}``); its path is exported as
        ``CASA_TRITON_MODEL_REPOSITORY_TOKEN_FILE``. Set this or
        ``model_repository_credentials_file``, not both.""",
    )

    model_repository_credentials_file = Unicode(
        "",
        config=True,
        help="""Path, in the notebook's filesystem, of a credentials file for
        ``model_repository`` that the site provides (e.g. an S3 credentials file mounted from
        a per-user Secret); exported as ``CASA_TRITON_MODEL_REPOSITORY_CREDENTIALS``. The hub
        never reads it. ``{username}`` expands.""",
    )

    def configuration_problem(self) -> str | None:
        where = type(self).__name__
        if not self.endpoints:
            return f"{where}.endpoints is empty: name at least one inference endpoint"
        for name, url in self.endpoints.items():
            problem = name_problem(f"{where}.endpoints", name) or url_problem(
                f"{where}.endpoints[{name!r}]", url, ENDPOINT_SCHEMES
            )
            if problem:
                return problem
            if urlsplit(url).port is None:  # tritonclient takes host:port
                return f"{where}.endpoints[{name!r}] {url!r} must name the port, e.g. grpcs://host:443"
        if self.default_endpoint and self.default_endpoint not in self.endpoints:
            return (f"{where}.default_endpoint {self.default_endpoint!r} is not one of "
                    f"{where}.endpoints ({', '.join(self.endpoints)})")
        if self.model_repository_grant and self.model_repository_credentials_file:
            return (f"{where}: set model_repository_grant or model_repository_credentials_file, "
                    "not both")
        if (self.model_repository_grant or self.model_repository_credentials_file) and not self.model_repository:
            return f"{where}: model repository credentials are set but model_repository is not"
        for setting in ("model_repository", "model_repository_credentials_file"):
            if problem := template_problem(f"{where}.{setting}", getattr(self, setting)):
                return problem
        if self.model_repository:
            repo = self.model_repository.format(username="user")
            if repo.startswith("/"):
                problem = path_problem(f"{where}.model_repository", repo)
            else:
                problem = url_problem(f"{where}.model_repository", repo, REPOSITORY_SCHEMES)
            if problem:
                return problem
        if self.model_repository_credentials_file:
            path = self.model_repository_credentials_file.format(username="user")
            if problem := path_problem(f"{where}.model_repository_credentials_file", path):
                return problem
        return None

    def describe(self) -> dict[str, Any]:
        endpoint = self.endpoints.get(self.default_name, "") if self.endpoints else ""
        return {**super().describe(), "endpoint": endpoint}

    def required_grant(self) -> str:
        return self.grant

    def service_grants(self) -> list[str]:
        return [g for g in (self.grant, self.model_repository_grant) if g]

    @property
    def default_name(self) -> str:
        return self.default_endpoint or next(iter(self.endpoints))

    def triton_config(self, ctx: SpawnContext) -> dict[str, Any]:
        """The content of ``triton.json``: endpoints and paths, no secret."""
        endpoints = {}
        for name, url in self.endpoints.items():
            parts = urlsplit(url)
            endpoints[name] = {
                "url": url,
                "protocol": "grpc" if parts.scheme.startswith("grpc") else "http",
                "address": parts.netloc,  # what tritonclient's InferenceServerClient(url=) takes
                "ssl": parts.scheme in ("grpcs", "https"),
            }
        config: dict[str, Any] = {
            "default": self.default_name,
            "endpoints": endpoints,
            "token_file": ctx.token_path(self.grant) if self.grant else None,
        }
        if self.model_repository:
            repo: dict[str, Any] = {"url": self.model_repository.format(username=ctx.username)}
            if self.model_repository_grant:
                if self.model_repository_grant in ctx.tokens:
                    repo["token_file"] = ctx.token_path(self.model_repository_grant)
                else:
                    self.log.info("triton: %s has no token for the model repository grant %r",
                                  ctx.username, self.model_repository_grant)
            if self.model_repository_credentials_file:
                repo["credentials_file"] = self.model_repository_credentials_file.format(
                    username=ctx.username)
            config["model_repository"] = repo
        return config

    def service_contribution(self, ctx: SpawnContext) -> Contribution:
        config = self.triton_config(ctx)
        env = {
            "TRITON_SERVER_URL": self.endpoints[config["default"]],
            ENV_CONFIG: f"{ctx.config_dir}/{CONFIG_FILE}",
        }
        if config["token_file"]:
            env["CASA_TRITON_TOKEN_FILE"] = config["token_file"]
        repo = config.get("model_repository")
        if repo:
            env["CASA_TRITON_MODEL_REPOSITORY"] = repo["url"]
            if "token_file" in repo:
                env["CASA_TRITON_MODEL_REPOSITORY_TOKEN_FILE"] = repo["token_file"]
            if "credentials_file" in repo:
                env["CASA_TRITON_MODEL_REPOSITORY_CREDENTIALS"] = repo["credentials_file"]
        body = json.dumps(config, indent=2) + "\n"
        return Contribution(env=env, files={CONFIG_FILE: body.encode()})


def endpoint_settings(name: str | None = None, config_file: str | None = None) -> dict[str, Any]:
    """In a notebook: the settings of one inference endpoint from ``triton.json``.

    Returns ``{"url", "protocol", "address", "ssl", "headers"}``; ``headers()`` gives the
    ``Authorization`` header with the current token (re-read on each call; ``{}`` without a
    token), to pass to each tritonclient call."""
    path = config_file or os.environ.get(ENV_CONFIG)
    if not path:
        raise RuntimeError(f"{ENV_CONFIG} is not set: this notebook has no Triton configuration")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    name = name or config["default"]
    if name not in config["endpoints"]:
        raise KeyError(f"no Triton endpoint {name!r}; known: {', '.join(config['endpoints'])}")
    token_file = config.get("token_file")

    def headers() -> dict[str, str]:
        if not token_file:
            return {}
        with open(token_file, encoding="ascii") as f:
            return {"Authorization": f"Bearer {f.read().strip()}"}

    settings: dict[str, Any] = dict(config["endpoints"][name])
    settings["headers"] = headers
    return settings


__all__ = ["TritonIntegration", "endpoint_settings"]
