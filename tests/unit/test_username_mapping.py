"""Username and groups from the provider's claims: configured claim, callable, refusals."""

from __future__ import annotations

import pytest
from traitlets import TraitError
from traitlets.config import Config

from casa_hub.auth.authenticator import CasaOIDCAuthenticator
from casa_hub.auth.oidc import OIDCError


def authenticator(**settings) -> CasaOIDCAuthenticator:
    c = Config()
    for name, value in settings.items():
        setattr(c.CasaOIDCAuthenticator, name, value)
    return CasaOIDCAuthenticator(config=c)


def test_default_claim_is_preferred_username_lower_cased():
    auth = authenticator()
    assert auth.user_info_to_username({"preferred_username": "Alice", "email": "x@y.example"}) == "alice"


def test_configured_claim_is_used_instead_of_preferred_username():
    auth = authenticator(username_claim="email")
    claims = {"preferred_username": "carol", "email": "Carol.Higgs@Uni.example"}
    assert auth.user_info_to_username(claims) == "carol.higgs@uni.example"


def test_callable_claim_receives_the_claims():
    # CILogon style: the local part of eduPersonPrincipalName
    auth = authenticator(username_claim=lambda claims: claims["eppn"].split("@")[0])
    assert auth.user_info_to_username({"eppn": "DHiggs@uni.example", "sub": "http://x/users/7"}) == "dhiggs"


def test_callable_result_is_checked_like_a_claim():
    auth = authenticator(username_claim=lambda claims: claims["sub"])
    with pytest.raises(OIDCError, match="cannot be used at this facility") as e:
        auth.user_info_to_username({"sub": "http://cilogon.org/serverA/users/12345"})
    assert e.value.reason == "unsafe_username"


@pytest.mark.parametrize("result", [None, "", 42, ["alice"]])
def test_callable_without_a_usable_result_is_refused_with_a_readable_message(result):
    auth = authenticator(username_claim=lambda claims: result)
    with pytest.raises(OIDCError) as e:
        auth.user_info_to_username({"preferred_username": "alice"})
    assert e.value.reason == "no_username"
    assert str(e.value).startswith("your account has no suitable claim to use as a username")
    assert "function" not in str(e.value) and "lambda" not in str(e.value)


def test_missing_claim_names_the_claim():
    auth = authenticator(username_claim="eppn")
    with pytest.raises(OIDCError, match="your account has no 'eppn' to use as a username") as e:
        auth.user_info_to_username({"preferred_username": "alice"})
    assert e.value.reason == "no_username"


@pytest.mark.parametrize("name", ["../bob", "a/b", "alice\nadmin", "bob\x00", ".hidden", "a" * 129])
def test_unsafe_usernames_are_refused_not_rewritten(name):
    with pytest.raises(OIDCError, match="cannot be used at this facility") as e:
        authenticator().user_info_to_username({"preferred_username": name})
    assert e.value.reason == "unsafe_username"


def test_username_claim_must_be_a_name_or_a_callable():
    with pytest.raises(TraitError):
        authenticator().username_claim = 42


@pytest.mark.parametrize("raw, groups", [
    (["/cms", "/cms/higgs", "/facility-admins/"], {"cms", "cms/higgs", "facility-admins"}),
    ("physicists  facility-admins", {"physicists", "facility-admins"}),
    (["/", "", 7, "ok"], {"ok"}),
    ({"cms": True}, set()),
])
async def test_groups_from_the_configured_claim(raw, groups):
    auth = authenticator(groups_claim="wlcg.groups")
    state = {"oauth_user": {"wlcg.groups": raw, "groups": ["decoy"]}}
    assert await auth.get_user_groups(state) == groups
