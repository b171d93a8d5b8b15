"""In-process verification throughput of FacilityTokenVerifier (scitokens) beside bare pyjwt decoding."""

from __future__ import annotations

import tempfile
from pathlib import Path

import jwt

from casa_hub.tokens.verifier import FacilityTokenVerifier

from .bench_mint import make_issuer
from .common import Context, Row, compare_throughput

TITLE = "verify"
ORDER = 20
NEEDS_FACILITY = False


def run(ctx: Context) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="casa-bench-verify-") as tmp:
        for alg in ("ES256", "RS256"):
            issuer = make_issuer(Path(tmp) / alg, alg, Path(tmp) / f"audit-{alg}.log")
            token = issuer.mint("alice", "xcache", ["physicists"]).token
            jwks = issuer.jwks()
            verifier = FacilityTokenVerifier(issuer.issuer_url, "casa-bench-xcache", jwks=jwks)
            public = jwt.PyJWK(jwks["keys"][0]).key

            def pyjwt_decode(t=token, k=public, a=alg, iss=issuer.issuer_url):
                return jwt.decode(t, k, algorithms=[a], audience="casa-bench-xcache", issuer=iss)

            rates = compare_throughput({
                "verify": lambda v=verifier, t=token: v.verify(t),
                "verify+test": lambda v=verifier, t=token: v.authorize(t, "read", "/user/alice/f"),
                "pyjwt": pyjwt_decode,
            }, ctx.options.duration, ctx.options.rounds)
            ctx.log(f"  {alg}: verify {rates['verify']:.0f}/s, authorize {rates['verify+test']:.0f}/s, "
                    f"jwt.decode {rates['pyjwt']:.0f}/s")
            baseline = "jwt.decode with parsed key, aud, iss"
            rows.append(Row("verify", f"FacilityTokenVerifier.verify {alg}", "tokens/s", rates["verify"],
                            baseline, rates["pyjwt"]))
            rows.append(Row("verify", f"FacilityTokenVerifier.authorize {alg} (read)", "tokens/s",
                            rates["verify+test"], baseline, rates["pyjwt"]))
            for h in issuer.log.handlers:
                h.close()
    ctx.notes.append(
        "verify: `FacilityTokenVerifier` with its keys already cached (checks, `scitokens.SciToken.deserialize`, "
        "`scitokens.Enforcer` over all claims; `authorize` adds the scope test) against `jwt.decode` of the "
        "same token with the parsed public key, audience and issuer."
    )
    return rows
