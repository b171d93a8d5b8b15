"""Group claims as real providers shape them, from site-file settings alone (the drop-ins' path):
Keycloak's nested ``realm_access.roles``, EGI Check-in's ``eduperson_entitlement`` URNs mapped to
WLCG group paths, WLCG IAM's ``wlcg.groups``, CILogon's ``isMemberOf``; names with control characters
dropped; a bad pattern refused naming the setting."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from casa_hub.auth.authenticator import CasaOIDCAuthenticator
from casa_hub.site_file import SiteSettingsError, apply_section

EGI = "urn:mace:egi.eu:group:{vo}:role={role}#aai.egi.eu"


def from_site(section: dict) -> CasaOIDCAuthenticator:
    c = Config()
    apply_section(c, section, CasaOIDCAuthenticator, "casa.auth")
    return CasaOIDCAuthenticator(config=c)


async def groups(auth: CasaOIDCAuthenticator, claims: dict) -> set[str]:
    return await auth.get_user_groups({auth.user_auth_state_key: claims})


async def test_keycloak_realm_roles_by_dotted_path():
    auth = from_site({"groups_claim": "realm_access.roles", "keep_unmapped_groups": False,
                      "group_table": {"cms-physicist": "physicists", "facility-admin": "facility-admins"}})
    claims = {"sub": "f3a1", "realm_access": {"roles": ["offline_access", "cms-physicist", "uma_authorization"]},
              "groups": ["ignored"]}
    assert await groups(auth, claims) == {"physicists"}, "Keycloak's default roles are not groups"


async def test_egi_entitlement_urns_become_wlcg_group_paths():
    auth = from_site({"groups_claim": "eduperson_entitlement", "keep_unmapped_groups": False,
                      "group_patterns": [
                          {"match": r"urn:mace:egi\.eu:group:([a-z0-9.-]+):role=member#aai\.egi\.eu", "group": r"\1"},
                          {"match": r"urn:mace:egi\.eu:group:([a-z0-9.-]+):role=manager#aai\.egi\.eu",
                           "group": r"\1/admins"},
                      ],
                      "group_table": {EGI.format(vo="vo.cms.example", role="member"): "cms/physicists"}})
    claims = {"sub": "abc@egi.eu", "eduperson_entitlement": [
        EGI.format(vo="vo.cms.example", role="member"),   # the table wins over the pattern
        EGI.format(vo="atlas", role="member"),
        EGI.format(vo="atlas", role="manager"),
        "urn:geant:other:thing",                          # neither: dropped
    ]}
    assert await groups(auth, claims) == {"cms/physicists", "atlas", "atlas/admins"}


async def test_wlcg_iam_group_paths_with_a_dot_in_the_claim_name():
    auth = from_site({"groups_claim": "wlcg.groups"})
    assert await groups(auth, {"wlcg.groups": ["/cms", "/cms/higgs"]}) == {"cms", "cms/higgs"}


async def test_cilogon_space_separated_and_unmapped_kept():
    auth = from_site({"groups_claim": "isMemberOf"})
    assert await groups(auth, {"isMemberOf": "physicists  cms:higgs"}) == {"physicists", "cms:higgs"}


async def test_a_callable_claim_gets_the_claims():
    auth = CasaOIDCAuthenticator(config=Config({"CasaOIDCAuthenticator": {
        "groups_claim": lambda claims: [r.upper() for r in claims["roles"]]}}))
    assert await groups(auth, {"roles": ["a", "b"]}) == {"A", "B"}


async def test_names_with_control_characters_are_dropped(caplog):
    auth = from_site({})
    got = await groups(auth, {"groups": ["physicists", "x\nmint user=bob grant=operations", "a\x1bb", "c\u2028d"]})
    assert got == {"physicists"}
    assert "\nmint user=bob" not in caplog.text and "Ignoring 3 group name(s)" in caplog.text


async def test_mapped_values_are_checked_too():
    auth = from_site({"group_table": {"evil": "x\ny"}})
    assert await groups(auth, {"groups": ["evil", "ok"]}) == {"ok"}


def test_a_bad_pattern_is_refused_naming_the_setting():
    with pytest.raises(SiteSettingsError, match=r"casa\.auth\.group_patterns.*group_patterns\[0\]\.match"):
        from_site({"group_patterns": [{"match": "([unclosed", "group": "x"}]})
    with pytest.raises(SiteSettingsError, match=r"exactly the keys 'match' and 'group'"):
        from_site({"group_patterns": [{"regex": "x", "group": "x"}]})
