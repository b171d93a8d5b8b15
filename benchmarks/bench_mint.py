"""In-process mint throughput of CasaTokenIssuer (ES256, RS256) beside bare pyjwt signing."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from casa_hub.tokens import CasaTokenIssuer

from .common import Context, Row, compare_throughput

TITLE = "mint"
ORDER = 10
NEEDS_FACILITY = False

GRANTS = {"xcache": {"audience": "casa-bench-xcache", "scopes": ["storage.read:/user/{username}"],
                     "groups": ["physicists"]}}


def make_issuer(key_dir: Path, alg: str, audit_file: Path) -> CasaTokenIssuer:
    """An issuer as the hub has it, its audit lines going to a file as they go to the hub's log."""
    logger = logging.getLogger(f"casa_bench.{alg}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(audit_file)
    handler.setFormatter(logging.Formatter("[%(levelname)s %(asctime)s %(name)s] %(message)s"))
    logger.handlers[:] = [handler]
    return CasaTokenIssuer(issuer_url="https://hub.bench/hub/casa-issuer", key_dir=str(key_dir),
                           generate_key_if_missing=alg, grants=GRANTS, log=logger)


def run(ctx: Context) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="casa-bench-mint-") as tmp:
        for alg in ("ES256", "RS256"):
            issuer = make_issuer(Path(tmp) / alg, alg, Path(tmp) / f"audit-{alg}.log")
            first = issuer.mint("alice", "xcache", ["physicists"])
            claims, headers = first.claims, jwt.get_unverified_header(first.token)
            private_key = load_pem_private_key(next((Path(tmp) / alg).rglob("*.pem")).read_bytes(), None)
            rates = compare_throughput({
                "mint": lambda issuer=issuer: issuer.mint("alice", "xcache", ["physicists"]),
                "pyjwt": lambda k=private_key, h=headers, c=claims, a=alg: jwt.encode(c, k, algorithm=a, headers=h),
            }, ctx.options.duration, ctx.options.rounds)
            size = private_key.key_size
            ctx.log(f"  {alg}: {rates['mint']:.0f} mints/s, pyjwt.encode {rates['pyjwt']:.0f}/s")
            rows.append(Row("mint", f"CasaTokenIssuer.mint {alg} ({size}-bit key)", "tokens/s", rates["mint"],
                            "jwt.encode, same claims and parsed key", rates["pyjwt"]))
            for h in issuer.log.handlers:
                h.close()
    ctx.notes.append(
        "mint: one `CasaTokenIssuer.mint` per call (grant lookup, claims, uuid4 jti, signature, one audit "
        "line written to a log file) against `jwt.encode` of the same claims with the already-parsed key. "
        "RS256 keys are the 3072-bit keys the issuer generates."
    )
    return rows
