"""Provider errors: logged without the provider's answer, and a refused client authentication named as such."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from casa_hub.auth.provider_http import (
    CLIENT_AUTH_REFUSED,
    SIGN_IN_REFUSED,
    oauth_error_code,
    token_request_failure,
)

SECRET_ISH = "eyJhbGciOiJSUzI1NiJ9.secret-refresh-token-value.sig"


def error(code: int, body: dict | str) -> HTTPClientError:
    raw = body if isinstance(body, str) else json.dumps(body)
    response = HTTPResponse(HTTPRequest("https://idp.example.org/token"), code, buffer=io.BytesIO(raw.encode()))
    return HTTPClientError(code, response=response)


def auth(basic: bool, caplog) -> SimpleNamespace:
    return SimpleNamespace(basic_auth=basic, log=logging.getLogger("test-provider-http"))


def test_a_refused_client_authentication_names_the_cause_not_groups(caplog):
    with caplog.at_level(logging.INFO, "test-provider-http"):
        page = token_request_failure(auth(True, caplog), error(401, {"error": "invalid_client",
                                                                    "error_description": SECRET_ISH}))
    assert page.status_code == 502 and page.log_message == CLIENT_AUTH_REFUSED
    assert "group" not in page.log_message and "not a problem with your account" in page.log_message
    assert "basic_auth=True sends client_secret_basic" in caplog.text and "invalid_client" in caplog.text
    assert SECRET_ISH not in caplog.text, "the provider's answer is never logged"
    post = token_request_failure(auth(False, caplog), error(400, {"error": "invalid_client"}))
    assert post.log_message == CLIENT_AUTH_REFUSED and "client_secret_post" in caplog.text


def test_other_failures_keep_the_generic_message_and_log_only_the_code(caplog):
    with caplog.at_level(logging.INFO, "test-provider-http"):
        page = token_request_failure(auth(True, caplog), error(400, {"error": "invalid_grant",
                                                                    "error_description": SECRET_ISH}))
    assert page.status_code == 403 and page.log_message == SIGN_IN_REFUSED
    assert "invalid_grant" in caplog.text and SECRET_ISH not in caplog.text


def test_only_a_short_lower_case_error_code_is_taken_from_a_response():
    assert oauth_error_code(error(400, {"error": "invalid_grant"})) == "invalid_grant"
    assert oauth_error_code(error(400, {"error": "x\nmint user=bob"})) is None
    assert oauth_error_code(error(400, {"error": SECRET_ISH})) is None
    assert oauth_error_code(error(502, "<html>bad gateway</html>")) is None
