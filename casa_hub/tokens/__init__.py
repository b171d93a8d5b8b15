"""Facility tokens: keys, grants, the issuer, its publication and storage in auth_state."""

from casa_hub.tokens.grants import Grant, GrantConfigError, UnsafeUsername, check_username
from casa_hub.tokens.issuer import CasaTokenIssuer, IssuerError, MintedToken

__all__ = [
    "CasaTokenIssuer",
    "Grant",
    "GrantConfigError",
    "IssuerError",
    "MintedToken",
    "UnsafeUsername",
    "check_username",
]
