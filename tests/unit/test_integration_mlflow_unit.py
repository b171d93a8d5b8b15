"""The MLflow integration's parts without servers: what the notebook gets, the client's header
provider (through MLflow's real provider registry), and the server's authorization function with
MLflow's real user store (sqlite) and tokens from a real CasaTokenIssuer."""

from __future__ import annotations

import logging
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, Response
from traitlets.config import Config
from werkzeug.datastructures import Authorization

from casa_hub.integrations import MLflowIntegration, SpawnContext, XCacheIntegration
from casa_hub.integrations.mlflow import server_auth as mlflow_server_auth
from casa_hub.integrations.mlflow.client import (
    CasaTokenHeaderProvider,
    is_facility_server,
    read_token,
    token_file,
)
from casa_hub.integrations.mlflow.server_auth import (
    ConfigError,
    FacilityTokenAuth,
    ServerAuthSettings,
)
from casa_hub.spawner import CasaLocalProcessSpawner
from casa_hub.tokens import CasaTokenIssuer
from casa_hub.tokens.renewal.files import write_token_file
from casa_hub.tokens.verifier import FacilityTokenVerifier

ISS = "https://hub.test/hub/casa-issuer"
SERVER = "https://mlflow.test"
GRANTS = {
    "mlflow": {"audience": "mlflow.test", "scopes": ["mlflow.write"]},
    "mlflow-read": {"audience": "mlflow.test", "scopes": ["mlflow.read"]},
    "xcache": {"audience": "xcache.test", "scopes": ["storage.read:/user/{username}"]},
}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> CasaTokenIssuer:
    return CasaTokenIssuer(issuer_url=ISS, key_dir=str(tmp_path_factory.mktemp("keys")),
                           generate_key_if_missing="ES256", grants=GRANTS)


def ctx(tmp_path, tokens: dict[str, str]) -> SpawnContext:
    return SpawnContext("alice", ["physicists"], str(tmp_path / "tokens"), str(tmp_path / "config"), tokens)


# ---- the integration: what a notebook gets ---------------------------------------------------------

def test_integration_exports_server_and_token_path_never_the_token(tmp_path, issuer):
    token = issuer.mint("alice", "mlflow").token
    integration = MLflowIntegration(tracking_uri=SERVER)
    assert integration.grants() == ["mlflow"], "the spawner must mint the mlflow grant"
    part = integration.contribute(ctx(tmp_path, {"mlflow": token}))
    assert part.env == {
        "MLFLOW_TRACKING_URI": SERVER,
        "CASA_MLFLOW_TRACKING_URI": SERVER,
        "CASA_MLFLOW_TOKEN_FILE": f"{tmp_path}/tokens/mlflow.token",
    }
    assert "MLFLOW_TRACKING_TOKEN" not in part.env, "a token in the env would never be renewed"
    assert not any(token in v for v in part.env.values()), "env vars carry paths, never token values"
    assert part.files == {}


def test_integration_names_its_grant(tmp_path):
    integration = MLflowIntegration(grant="tracking", tracking_uri=SERVER)
    assert integration.grants() == ["tracking"]
    part = integration.contribute(ctx(tmp_path, {"tracking": "x.y.z"}))
    assert part.env["CASA_MLFLOW_TOKEN_FILE"].endswith("/tokens/tracking.token")


def test_users_without_the_grant_get_no_mlflow_settings(tmp_path):
    part = MLflowIntegration(tracking_uri=SERVER).contribute(ctx(tmp_path, {"xcache": "x.y.z"}))
    assert part.env == {}, "without a token the server would refuse everything: configure nothing"


@pytest.mark.parametrize("uri, problem", [
    ("", "tracking_uri is not set"),
    ("mlflow.test", "must be a URL like https://host:port"),
    ("file:///tmp/mlruns", "must be a URL like https://host:port"),
    ("sqlite:///x.db", "must be a URL like https://host:port"),
    ("https://alice:secret@mlflow.test", "must not hold credentials"),
])
def test_a_misconfigured_server_is_skipped_with_a_warning_naming_the_setting(tmp_path, caplog, uri, problem):
    integration = MLflowIntegration(tracking_uri=uri)
    with caplog.at_level(logging.WARNING):
        assert integration.grants() == [], "no token is minted for a service that cannot be used"
        assert integration.contribute(ctx(tmp_path, {"mlflow": "x.y.z"})).env == {}
    assert "MLflowIntegration.tracking_uri" in caplog.text and problem in caplog.text, (
        "the hub log must name the setting to fix")


def test_spawner_configuration_enables_the_integration():
    config = Config()
    config.CasaSpawnerMixin.integration_classes = [XCacheIntegration, "casa_hub.integrations.mlflow.integration.MLflowIntegration"]
    config.MLflowIntegration.tracking_uri = SERVER
    spawner = CasaLocalProcessSpawner(config=config)
    [mlflow] = [i for i in spawner.integrations if isinstance(i, MLflowIntegration)]
    assert mlflow.tracking_uri == SERVER, "c.MLflowIntegration settings reach the spawner's integration"
    assert "mlflow" in spawner.casa_grants() and "xcache" in spawner.casa_grants()


# ---- the client's header provider ---------------------------------------------------------------------

@pytest.fixture
def notebook_env(tmp_path, monkeypatch, issuer):
    """The environment the integration gives a notebook, with alice's token file in place."""
    import mlflow

    path = tmp_path / "tokens" / "mlflow.token"
    path.parent.mkdir(mode=0o700)
    write_token_file(path, issuer.mint("alice", "mlflow").token)
    for var in ("CASA_MLFLOW_TOKEN_FILE", "CASA_TOKEN_DIR", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    monkeypatch.setenv("CASA_MLFLOW_TRACKING_URI", SERVER)
    monkeypatch.setenv("CASA_MLFLOW_TOKEN_FILE", str(path))
    mlflow.set_tracking_uri(None)  # follow MLFLOW_TRACKING_URI, as a fresh notebook does
    yield path
    mlflow.set_tracking_uri(None)


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("Authorization")
    return value.removeprefix("Bearer ") if value else None


def test_mlflow_loads_the_provider_from_the_entry_point():
    from mlflow.tracking.request_header.registry import _request_header_provider_registry

    assert any(isinstance(p, CasaTokenHeaderProvider) for p in _request_header_provider_registry), (
        "setup.cfg must register casa_hub.integrations.mlflow.client:CasaTokenHeaderProvider under "
        "mlflow.request_header_provider (reinstall casa_hub after changing entry points)")


def test_mlflow_sends_the_token_file_content_as_bearer(notebook_env):
    from mlflow.tracking.request_header.registry import resolve_request_headers

    assert CasaTokenHeaderProvider().in_context()
    sent = bearer(resolve_request_headers()) == notebook_env.read_text()
    assert sent, "MLflow's own header resolution must carry the token file's content"


def test_a_replaced_token_file_is_read_by_the_next_request(notebook_env, issuer):
    from mlflow.tracking.request_header.registry import resolve_request_headers

    first = bearer(resolve_request_headers())
    renewed = issuer.mint("alice", "mlflow", now=time.time() + 5).token  # what the renewal agent writes
    write_token_file(notebook_env, renewed)
    changed, sent = renewed != first, bearer(resolve_request_headers()) == renewed
    assert changed and sent, "the next request must use the replaced file"


def test_requests_during_atomic_replacements_always_get_a_whole_token(notebook_env, issuer):
    tokens = [issuer.mint("alice", "mlflow", now=time.time() + i).token for i in range(4)]
    whole = {notebook_env.read_text(), *tokens}
    provider, stop, seen = CasaTokenHeaderProvider(), threading.Event(), []

    def renew():
        i = 0
        while not stop.is_set():
            write_token_file(notebook_env, tokens[i % len(tokens)])
            i += 1

    agent = threading.Thread(target=renew, daemon=True)
    agent.start()
    try:
        for _ in range(2000):
            seen.append(bearer(provider.request_headers()))
    finally:
        stop.set()
        agent.join()
    broken = sum(1 for t in seen if t not in whole)  # counts only: no token values in test output
    assert broken == 0, f"{broken} of {len(seen)} requests carried a missing, empty or half-written token"
    assert len(set(seen)) > 1, "the replacements must have been seen while they happened"


def test_no_header_outside_casa_hub(monkeypatch, tmp_path):
    for var in ("CASA_MLFLOW_TOKEN_FILE", "CASA_TOKEN_DIR", "CASA_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    provider = CasaTokenHeaderProvider()
    assert token_file() is None
    assert not provider.in_context() and provider.request_headers() == {}, (
        "without casa_hub's settings MLflow must work exactly as before")


def test_no_header_when_the_token_file_is_gone(notebook_env):
    notebook_env.unlink()
    provider = CasaTokenHeaderProvider()
    assert not provider.in_context() and provider.request_headers() == {}


def test_token_dir_fallback(monkeypatch, notebook_env):
    monkeypatch.delenv("CASA_MLFLOW_TOKEN_FILE")
    monkeypatch.setenv("CASA_TOKEN_DIR", str(notebook_env.parent))
    assert token_file() == notebook_env
    assert CasaTokenHeaderProvider().in_context()


def test_the_token_is_not_sent_to_another_server(notebook_env):
    import mlflow
    from mlflow.tracking.request_header.registry import resolve_request_headers

    mlflow.set_tracking_uri("https://someone-elses-mlflow.example.com")
    assert not CasaTokenHeaderProvider().in_context()
    assert "Authorization" not in resolve_request_headers(), "the facility token must stay at the facility"


@pytest.mark.parametrize("content", [
    "", "not a token", "a.b.c\r\nX-Injected: yes", "a.b.c d.e.f", "x" * 20000,
])
def test_file_content_that_is_not_a_token_is_not_sent(notebook_env, content):
    notebook_env.write_text(content)
    assert read_token(notebook_env) is None
    assert CasaTokenHeaderProvider().request_headers() == {}


@pytest.mark.parametrize("uri, ok", [
    ("https://mlflow.test", True),
    ("https://MLflow.test:443/", True),
    ("https://mlflow.test/#/experiments/1", True),
    ("http://mlflow.test", False),
    ("https://mlflow.test:8443", False),
    ("https://mlflow.test.evil.example", False),
    ("databricks", False),
    ("file:///tmp/mlruns", False),
])
def test_which_tracking_uris_are_the_facility_server(uri, ok):
    assert is_facility_server(uri, SERVER) is ok


def test_a_server_below_a_path_gets_the_token_only_below_it():
    assert is_facility_server("https://hub.test/services/mlflow/", "https://hub.test/services/mlflow")
    assert not is_facility_server("https://hub.test/", "https://hub.test/services/mlflow")
    assert not is_facility_server("https://hub.test/services/mlflow-other", "https://hub.test/services/mlflow")


# ---- the server's authorization function ---------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """MLflow's real auth user store on sqlite."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    s = SqlAlchemyStore()
    s.init_db(f"sqlite:///{tmp_path_factory.mktemp('mlflow-auth')}/auth.db")
    return s


@pytest.fixture(scope="module")
def flask_app() -> Flask:
    return Flask("test-mlflow-auth")


def make_auth(issuer, store, **settings) -> FacilityTokenAuth:
    s = ServerAuthSettings(ISS, ("mlflow.test",), **settings)
    return FacilityTokenAuth(s, FacilityTokenVerifier(ISS, "mlflow.test", jwks=issuer.jwks()), store, {"admin"})


def call(flask_app, auth: FacilityTokenAuth, header: str | None):
    headers = {"Authorization": header} if header is not None else {}
    with flask_app.test_request_context("/api/2.0/mlflow/runs/create", method="POST", headers=headers):
        return auth.authenticate(header, "/api/2.0/mlflow/runs/create")


def test_a_facility_token_becomes_the_mlflow_user_of_its_subject(flask_app, issuer, store):
    auth = make_auth(issuer, store)
    result = call(flask_app, auth, f"Bearer {issuer.mint('carol', 'mlflow').token}")
    assert isinstance(result, Authorization) and result.username == "carol"
    user = store.get_user("carol")
    assert not user.is_admin, "a facility user is an ordinary MLflow user unless admin_groups says otherwise"
    again = call(flask_app, auth, f"bearer {issuer.mint('carol', 'mlflow').token}")
    assert again.username == "carol" and store.get_user("carol").id == user.id, "created once, then reused"


def foreign_token(issuer: CasaTokenIssuer, same_kid: bool) -> str:
    real = issuer.mint("alice", "mlflow")
    kid = jwt.get_unverified_header(real.token)["kid"] if same_kid else "someone-elses-key"
    return jwt.encode(real.claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"kid": kid, "typ": "JWT"})


def real_key_token(issuer: CasaTokenIssuer, header: dict | None = None, **claims) -> str:
    """Signed with the issuer's REAL key: a real mint's claims changed by ``claims`` (None removes one),
    ``header`` merged over ``{"kid": <the real kid>, "typ": "JWT"}`` (None removes a parameter)."""
    body = {k: v for k, v in {**issuer.mint("alice", "mlflow").claims, **claims}.items() if v is not None}
    key = issuer.signing_key
    headers = {k: v for k, v in {"kid": key.kid, "typ": "JWT", **(header or {})}.items() if v is not None}
    return jwt.encode(body, key.private_key, algorithm=key.alg, headers=headers)


def now() -> int:
    return int(time.time())


REFUSED = {  # case: (token maker, reason, part of the answer's message)
    "expired": (lambda i: i.mint("alice", "mlflow", now=time.time() - 3600).token, "expired", "has expired"),
    "wrong audience": (lambda i: i.mint("alice", "xcache").token, "wrong_audience", "not meant for"),
    "foreign key, real kid": (lambda i: foreign_token(i, True), "bad_signature", "does not match its key"),
    "foreign key": (lambda i: foreign_token(i, False), "unknown_kid", "not published"),
    "not a JWT": (lambda i: "garbage", "malformed", "not a JWT"),
    # signed with the real key, one odd header parameter or time claim each
    "7 h lifetime": (lambda i: real_key_token(i, iat=now() - 60, nbf=now() - 60, exp=now() - 60 + 7 * 3600),
                     "lifetime_too_long", "longer than the maximum of 21600 s"),
    "exp = 2**53": (lambda i: real_key_token(i, exp=2**53), "lifetime_too_long", "longer than the maximum"),
    "exp as a string": (lambda i: real_key_token(i, exp=str(now() + 600)), "invalid_time_claim", "exp is a str"),
    "exp as a float": (lambda i: real_key_token(i, exp=float(now() + 600)), "invalid_time_claim",
                       "exp is a float"),
    "iat as a float": (lambda i: real_key_token(i, iat=float(now())), "invalid_time_claim", "iat is a float"),
    "nbf as a string": (lambda i: real_key_token(i, nbf=str(now())), "invalid_time_claim", "nbf is a str"),
    "missing kid": (lambda i: real_key_token(i, {"kid": None}), "missing_kid", "no key id"),
    "unknown kid": (lambda i: real_key_token(i, {"kid": "not-published"}), "unknown_kid", "not published"),
    'crit: ["exp"]': (lambda i: real_key_token(i, {"crit": ["exp"]}), "unsupported_crit", "crit"),
    "iat in the future": (lambda i: real_key_token(i, iat=now() + 600, exp=now() + 1200), "not_yet_valid",
                          "issued in the future (iat)"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_tokens_get_401_without_the_token_in_answer_or_log(flask_app, issuer, store, caplog, case):
    make, reason, message = REFUSED[case]
    token = make(issuer)
    caplog.set_level(logging.DEBUG)
    result = call(flask_app, make_auth(issuer, store), f"Bearer {token}")
    assert isinstance(result, Response) and result.status_code == 401, f"a {case} token must be refused"
    assert result.headers["WWW-Authenticate"] == 'Bearer realm="mlflow", error="invalid_token"'
    body = result.get_data(as_text=True)
    assert f"({reason})" in body, f"the answer says why, so a person can act on it: {body}"
    assert message in body
    assert token not in body and token not in caplog.text, "no token value in answers or logs"
    assert f"refused a facility token for /api/2.0/mlflow/runs/create: {reason}" in caplog.text


def test_a_token_of_exactly_6_hours_is_accepted(flask_app, issuer, store):
    t = now()
    result = call(flask_app, make_auth(issuer, store), f"Bearer {real_key_token(issuer, iat=t, nbf=t, exp=t + 21600)}")
    assert isinstance(result, Authorization) and result.username == "alice"


def test_the_servers_lifetime_and_leeway_apply_whatever_verifier_it_was_given(flask_app, issuer, store, caplog):
    """make_auth gives FacilityTokenAuth a verifier with the default policy (6 h, 30 s): the server's own
    settings are still applied to every token."""
    normal = issuer.mint("alice", "mlflow").token  # 20 minutes
    t = now()
    early = real_key_token(issuer, iat=t + 20, nbf=t + 20, exp=t + 620)  # the issuer's clock 20 s ahead
    assert call(flask_app, make_auth(issuer, store), f"Bearer {normal}").username == "alice"
    assert call(flask_app, make_auth(issuer, store), f"Bearer {early}").username == "alice", "within 30 s"
    short = call(flask_app, make_auth(issuer, store, max_lifetime=600), f"Bearer {normal}")
    assert isinstance(short, Response) and short.status_code == 401
    assert "(lifetime_too_long)" in short.get_data(as_text=True) and "maximum of 600 s" in short.get_data(as_text=True)
    strict = call(flask_app, make_auth(issuer, store, leeway=0), f"Bearer {early}")
    assert isinstance(strict, Response) and "(not_yet_valid)" in strict.get_data(as_text=True)
    assert "refused a facility token for /api/2.0/mlflow/runs/create: lifetime_too_long" in caplog.text


def test_the_verifier_the_server_builds_has_its_settings():
    auth = FacilityTokenAuth(ServerAuthSettings(ISS, ("mlflow.test",), max_lifetime=3600, leeway=5))
    assert (auth.verifier.max_lifetime, auth.verifier.leeway) == (3600, 5)
    default = FacilityTokenAuth(ServerAuthSettings(ISS, ("mlflow.test",)))
    assert (default.verifier.max_lifetime, default.verifier.leeway) == (21600, 30)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic YWRtaW46cGFzc3dvcmQxMjM0"])
def test_requests_without_a_bearer_token_get_a_bearer_challenge(flask_app, issuer, store, header):
    result = call(flask_app, make_auth(issuer, store), header)
    assert isinstance(result, Response) and result.status_code == 401
    assert result.headers["WWW-Authenticate"] == 'Bearer realm="mlflow"', (
        "MLflow's basic-auth passwords are not accepted by this function")


def test_a_required_scope_refuses_tokens_without_it_with_403(flask_app, issuer, store):
    auth = make_auth(issuer, store, required_scope="mlflow.write")
    assert call(flask_app, auth, f"Bearer {issuer.mint('alice', 'mlflow').token}").username == "alice"
    result = call(flask_app, auth, f"Bearer {issuer.mint('alice', 'mlflow-read').token}")
    assert isinstance(result, Response) and result.status_code == 403
    assert 'error="insufficient_scope"' in result.headers["WWW-Authenticate"]


def test_the_reserved_mlflow_admin_account_cannot_be_claimed_by_a_token(flask_app, issuer, store):
    result = call(flask_app, make_auth(issuer, store), f"Bearer {issuer.mint('admin', 'mlflow').token}")
    assert isinstance(result, Response) and result.status_code == 403, (
        "a hub user named like MLflow's bootstrap admin must not become that admin")


def test_admin_groups_decide_who_is_an_mlflow_admin(flask_app, issuer, store):
    auth = make_auth(issuer, store, admin_groups=frozenset({"facility-admins"}))
    bob_admin = issuer.mint("bob", "mlflow", ["physicists", "facility-admins"]).token
    assert call(flask_app, auth, f"Bearer {bob_admin}").username == "bob"
    assert store.get_user("bob").is_admin
    assert call(flask_app, auth, f"Bearer {issuer.mint('dave', 'mlflow', ['physicists']).token}").username == "dave"
    assert not store.get_user("dave").is_admin
    call(flask_app, auth, f"Bearer {issuer.mint('bob', 'mlflow', ['physicists']).token}")
    assert not store.get_user("bob").is_admin, "leaving the admin group must end MLflow admin rights"


def test_authenticate_request_verifies_once_per_request(flask_app, issuer, store, monkeypatch):
    auth = make_auth(issuer, store)
    calls = []
    original = auth.authenticate
    monkeypatch.setattr(auth, "authenticate", lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(mlflow_server_auth, "_auth", auth)
    token = issuer.mint("alice", "mlflow").token
    with flask_app.test_request_context("/api/2.0/mlflow/experiments/create", method="POST",
                                        headers={"Authorization": f"Bearer {token}"}):
        first = mlflow_server_auth.authenticate_request()
        second = mlflow_server_auth.authenticate_request()
    assert first.username == "alice" and second is first
    assert len(calls) == 1, "MLflow asks several times per request; the token is checked once"


# ---- settings --------------------------------------------------------------------------------------------

def test_settings_from_env_win_over_the_auth_ini(tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n[casa_hub]\nissuer = https://ini.test/iss\n"
                   "audience = a1, a2\nrequired_scope = mlflow.write\nadmin_groups = /facility-admins ops\n")
    s = ServerAuthSettings.load({"MLFLOW_AUTH_CONFIG_PATH": str(ini)})
    assert s == ServerAuthSettings("https://ini.test/iss", ("a1", "a2"), "mlflow.write",
                                   frozenset({"facility-admins", "ops"}))
    s = ServerAuthSettings.load({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "CASA_MLFLOW_ISSUER": ISS,
                                 "CASA_MLFLOW_AUDIENCE": "mlflow.test"})
    assert (s.issuer, s.audiences, s.required_scope) == (ISS, ("mlflow.test",), "mlflow.write")
    assert (s.max_lifetime, s.leeway) == (21600, 30), "defaults: the WLCG maximum of 6 h, 30 s of leeway"


def test_lifetime_and_leeway_from_the_ini_or_the_env(tmp_path):
    ini = tmp_path / "auth.ini"
    ini.write_text(f"[casa_hub]\nissuer = {ISS}\naudience = mlflow.test\nmax_lifetime = 3600\nleeway = 10\n")
    s = ServerAuthSettings.load({"MLFLOW_AUTH_CONFIG_PATH": str(ini)})
    assert (s.max_lifetime, s.leeway) == (3600, 10)
    s = ServerAuthSettings.load({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "CASA_MLFLOW_MAX_LIFETIME": "1200",
                                 "CASA_MLFLOW_LEEWAY": "0"})
    assert (s.max_lifetime, s.leeway) == (1200, 0), "the environment wins over the ini, and 0 is a value"


@pytest.mark.parametrize("env, message", [
    ({}, "set CASA_MLFLOW_ISSUER"),
    ({"CASA_MLFLOW_ISSUER": ISS}, "set CASA_MLFLOW_AUDIENCE"),
    ({"CASA_MLFLOW_ISSUER": ISS, "CASA_MLFLOW_AUDIENCE": "a", "CASA_MLFLOW_REQUIRED_SCOPE": "read:data"},
     "must be `name` or `name:/path`"),
    ({"CASA_MLFLOW_ISSUER": ISS, "CASA_MLFLOW_AUDIENCE": "a", "CASA_MLFLOW_MAX_LIFETIME": "7h"},
     r"max_lifetime \(CASA_MLFLOW_MAX_LIFETIME\) must be a whole number of seconds"),
    ({"CASA_MLFLOW_ISSUER": ISS, "CASA_MLFLOW_AUDIENCE": "a", "CASA_MLFLOW_MAX_LIFETIME": "25200"},
     r"max_lifetime: a whole number of seconds from 1 to 21600 .* \(set CASA_MLFLOW_MAX_LIFETIME"),
    ({"CASA_MLFLOW_ISSUER": ISS, "CASA_MLFLOW_AUDIENCE": "a", "CASA_MLFLOW_LEEWAY": "-5"},
     r"leeway \(CASA_MLFLOW_LEEWAY\) must be a whole number"),
    ({"CASA_MLFLOW_ISSUER": ISS, "CASA_MLFLOW_AUDIENCE": "a", "CASA_MLFLOW_LEEWAY": "3600"},
     r"leeway: a whole number of seconds from 0 to 300, got 3600 \(set CASA_MLFLOW_LEEWAY"),
])
def test_missing_or_bad_settings_name_what_to_set(env, message):
    with pytest.raises(ConfigError, match=message):
        ServerAuthSettings.load(env, ini_path="")


def test_a_misconfigured_server_refuses_everything_with_500(flask_app, monkeypatch):
    monkeypatch.setattr(mlflow_server_auth, "_auth", None)
    for var in ("CASA_MLFLOW_ISSUER", "CASA_MLFLOW_AUDIENCE", "MLFLOW_AUTH_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)
    with flask_app.test_request_context("/api/2.0/mlflow/runs/create", headers={"Authorization": "Bearer a.b.c"}):
        result = mlflow_server_auth.authenticate_request()
    assert isinstance(result, Response) and result.status_code == 500, "no settings must never mean open access"
