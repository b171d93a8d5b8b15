"""``casa-hub explain CONFIG --user NAME --groups G...``: what one user's server would get, as a dry run.

Prints the login decision, the grants, the claims of each token (never a token value), the env vars,
the files (names, sizes, modes) and, for a Kubernetes spawner, the pod and Secret manifests with
token values redacted. ``--json`` prints the same for scripts. The dry run itself
(``casa_hub.cli.explain_dry_run``) runs the spawner's own code with a stand-in user and a throwaway
signing key; it mints nothing with the facility's keys, writes no file and contacts no cluster.
Exit status: 0 (explained, including "would be refused"), 2 (bad configuration, unknown group or
profile, unsafe username).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from casa_hub.tokens.issuer import PER_MINT_CLAIMS

HELP = ("dry run: the grants, token claims, env, files (and pod and Secret) a user's server would get; "
        "no token values")


def render_text(doc: dict[str, Any]) -> str:
    """The explanation for people."""
    import yaml

    out = [f"casa-hub explain: {doc['user']} (groups: {', '.join(doc['groups']) or 'none'}) "
           f"with {doc['config']}", ""]
    login = doc["login"]
    verdict = "allowed" if login["allowed"] else "REFUSED"
    out.append(f"Login: {verdict} ({login['reason']})" + ("; hub admin" if login["admin"] else ""))
    out.append(f"Spawner: {doc['spawner']}" + (f"; profile: {doc['profile']['slug']} "
                                                f"({doc['profile']['display_name']})" if doc.get("profile") else ""))
    if doc.get("statement"):
        out += ["", f">>> {doc['statement']}"]
    out += ["", "Grants:"]
    for name, g in doc["grants"].items():
        if g.get("delivered"):
            state = "delivered to the server"
        elif g["allowed"]:
            state = "allowed (minted at login); no integration of this server asks for it"
        else:
            state = f"not allowed (only for: {', '.join(g['groups'])})"
        out.append(f"  {name:<12} {state}; aud {g['audience']}, {g['lifetime']} s")
    if doc.get("tokens"):
        out += ["", "Token claims (never values; per-mint claims " + ", ".join(PER_MINT_CLAIMS) + " are set at each mint):"]
        for t in doc["tokens"]:
            h = t["header"]
            out.append(f"  {t['grant']}: header alg {h['alg']}, kid {h['kid']}, typ {h['typ']}; lifetime {t['lifetime']} s")
            for claim, value in t["claims"].items():
                shown = " ".join(value) if isinstance(value, list) else value
                out.append(f"    {claim:<12} {shown}")
    if "env" in doc:
        out += ["", "Environment (facility variables; paths and endpoints only):"]
        out += [f"  {k}={v}" for k, v in doc["env"].items()] or ["  (none)"]
        out += ["", f"Files (tokens in {doc['token_dir']}, config in {doc['config_dir']}):"]
        out += [f"  {f['mode']} {f['size']:>6} bytes  {f['path']}  ({f['holds']})" for f in doc["files"]] or ["  (none)"]
        out += ["", "Integrations:"]
        for i in doc["integrations"]:
            detail = f"problem: {i['problem']}" if i["problem"] else (
                f"grants {', '.join(i['grants']) or 'none'}; env {', '.join(i['env']) or 'none'}; "
                f"files {', '.join(i['files']) or 'none'}")
            skipped = "; its prepare step (e.g. creating a cluster) was not run" if i["prepare_skipped"] else ""
            out.append(f"  {i['name']} ({i['title']}): {detail}{skipped}")
    if doc.get("notes"):
        out += ["", "Notes:"] + [f"  - {n}" for n in doc["notes"]]
    for kind, title in (("pod", "Pod"), ("secret", "Secret")):
        if doc.get(kind):
            out += ["", f"{title} manifest (token values redacted):",
                    yaml.safe_dump(doc[kind], sort_keys=False, default_flow_style=False).rstrip()]
    return "\n".join(out) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the hub's jupyterhub_config.py (drop-in files it loads are included)")
    parser.add_argument("--user", required=True, help="the username, as the hub would see it after login")
    parser.add_argument("--groups", nargs="*", default=[], metavar="G",
                        help="the user's groups (as the provider sends them, without leading '/')")
    parser.add_argument("--profile", default=None, help="the server profile to choose (default: the user's default)")
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from casa_hub.cli.explain_dry_run import ExplainError, explain

    groups = [g.strip("/") for arg in args.groups for g in arg.split(",") if g.strip("/")]
    try:
        doc = asyncio.run(explain(args.config, args.user, groups, args.profile))
    except ExplainError as e:
        print(f"casa-hub explain: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else render_text(doc), end="" if not args.json else "\n")
    return 0
