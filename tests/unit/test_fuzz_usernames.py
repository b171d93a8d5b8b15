"""Fuzzing the claim-to-username mapping (``CasaOIDCAuthenticator.user_info_to_username``).

Whatever the provider sends in the username claim (any Unicode text, any JSON type, any size), the
result is either a username of the documented safe form that is the claim itself with ASCII letters
lower-cased, or an ``OIDCError`` refusal with reason ``no_username``/``unsafe_username``. Never an
exception of another type, never a name with ``/``, ``..`` or a control character, and never a
non-ASCII claim turned into an ASCII name (which could be another user's account).

Examples are derandomized and no example database is kept, so CI runs are reproducible; set
``CASA_FUZZ_SCALE`` to multiply the number of examples, ``CASA_FUZZ_RANDOM=1`` for new ones.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from casa_hub.auth.authenticator import CasaOIDCAuthenticator
from casa_hub.auth.oidc import OIDCError

SCALE = int(os.environ.get("CASA_FUZZ_SCALE", "1"))
# CI: the same examples on every run (derandomized, no example database). CASA_FUZZ_SCALE=N runs N
# times as many; CASA_FUZZ_RANDOM=1 draws new ones (a failure prints the example to paste in @example).
FUZZ = settings(deadline=None, derandomize=os.environ.get("CASA_FUZZ_RANDOM") != "1", database=None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    """The shared profile with ``examples`` examples (times ``CASA_FUZZ_SCALE``)."""
    return settings(FUZZ, max_examples=examples * SCALE)

# the documented form after lower-casing: ASCII letters, digits and . _ @ + -, not starting with . @ + -
SAFE = re.compile(r"[a-z0-9_][a-z0-9._@+-]{0,127}")

# characters that look like or turn into ASCII letters, and characters that reorder or hide text
CONFUSABLES = ["\u0430", "\u0435", "\u043e", "\u0440", "\u0441", "\u0455", "\u0456", "\u212a", "\u0130",
               "\u017f", "\uff41", "\uff4c", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e",
               "\u202d", "\u2066", "\u00a0", "\u2028", "\u0000", "\u001b", "\u0085", "\u00ad", "\u0301"]
PATHLIKE = ["/", "\\", "..", ".", "%2e", "%2f", "~", ":", "\n", "\r", "\t", " ", "@", "+", "-", "_"]

name_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from([*"abcAlice019", *CONFUSABLES, *PATHLIKE]), max_size=16).map("".join),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._@+-]{0,20}", fullmatch=True),
    st.text(alphabet="aA", min_size=120, max_size=140),  # around the 128-character limit
)
# a safe name with one confusable or path character put in
one_odd_character = st.tuples(
    st.from_regex(r"[A-Za-z0-9_]{0,6}", fullmatch=True), st.sampled_from(CONFUSABLES + PATHLIKE),
    st.from_regex(r"[A-Za-z0-9._@+-]{0,6}", fullmatch=True)).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | name_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
claim_values = st.one_of(name_text, one_odd_character, one_odd_character, json_values, st.binary(max_size=10))


@pytest.fixture(scope="module")
def authenticators() -> dict[str, CasaOIDCAuthenticator]:
    def make(**settings) -> CasaOIDCAuthenticator:
        c = Config()
        for name, value in settings.items():
            setattr(c.CasaOIDCAuthenticator, name, value)
        return CasaOIDCAuthenticator(config=c)

    return {
        "preferred_username": make(),
        "email": make(username_claim="email"),
        "callable": make(username_claim=lambda claims: claims.get("eppn")),
    }


def check_mapping(auth: CasaOIDCAuthenticator, claims: dict, raw: object) -> None:
    """The outcome rules every claim value must follow (see the module docstring)."""
    try:
        name = auth.user_info_to_username(claims)
    except OIDCError as e:
        assert e.reason in {"no_username", "unsafe_username"}, e.reason
        assert str(e), "a refusal says why"
        if isinstance(raw, str) and raw:
            assert e.reason == "unsafe_username", "a non-empty string claim is refused as unsafe, not missing"
        return
    assert isinstance(raw, str), f"a {type(raw).__name__} claim was accepted as {name!r}"
    assert isinstance(name, str) and SAFE.fullmatch(name), f"{raw!r} became the unsafe name {name!r}"
    assert ".." not in name and "/" not in name and name.isprintable()
    assert raw.isascii(), f"the non-ASCII claim {raw!r} was turned into the ASCII name {name!r}"
    assert name == raw.lower(), f"{raw!r} was rewritten into {name!r} (only ASCII lower-casing is allowed)"


@fuzz(400)
@given(raw=claim_values, others=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
@example(raw="\u212aate", others={})          # KELVIN SIGN lower-cases to an ASCII 'k'
@example(raw="\u0130nci", others={})          # LATIN CAPITAL I WITH DOT lower-cases to 'i' + U+0307
@example(raw="\u0430lice", others={})         # Cyrillic a
@example(raw="\uff41lice", others={})         # fullwidth a
@example(raw="al\u200dice", others={})        # zero-width joiner
@example(raw="\u202eecila", others={})        # right-to-left override
@example(raw="Alice", others={})
@example(raw="a" * 128, others={})
@example(raw="a" * 129, others={})
@example(raw="a..b", others={})
def test_preferred_username_claim(authenticators, raw, others):
    claims = dict(others, preferred_username=raw)
    check_mapping(authenticators["preferred_username"], claims, raw)


@fuzz(150)
@given(raw=claim_values, preferred=claim_values)
@example(raw="Carol.Higgs@Uni.example", preferred="carol")
@example(raw="\u212aarl@uni.example", preferred="karl")
def test_configured_email_claim_ignores_preferred_username(authenticators, raw, preferred):
    check_mapping(authenticators["email"], {"email": raw, "preferred_username": preferred}, raw)


@fuzz(150)
@given(raw=claim_values)
@example(raw="\u212aevin")
def test_callable_claim(authenticators, raw):
    check_mapping(authenticators["callable"], {"eppn": raw, "preferred_username": "alice"}, raw)


def test_the_rules_can_fail(authenticators):
    """The checker itself rejects a rewritten name: a mapping that folded KELVIN SIGN would fail."""
    with pytest.raises(AssertionError, match="non-ASCII claim"):
        check_mapping(_FoldingAuthenticator(), {"preferred_username": "\u212aate"}, "\u212aate")


class _FoldingAuthenticator(CasaOIDCAuthenticator):
    def user_info_to_username(self, user_info: dict) -> str:
        return user_info["preferred_username"].lower()


def test_a_non_ascii_name_the_site_maps_explicitly_is_still_accepted():
    """``username_map`` is the way to admit a non-ASCII claim: the site names the result itself."""
    c = Config()
    c.CasaOIDCAuthenticator.username_map = {"j\u00f6rg": "joerg"}
    auth = CasaOIDCAuthenticator(config=c)
    assert auth.user_info_to_username({"preferred_username": "J\u00f6rg"}) == "joerg"
    with pytest.raises(OIDCError) as e:
        auth.user_info_to_username({"preferred_username": "\u212aate"})
    assert e.value.reason == "unsafe_username"
