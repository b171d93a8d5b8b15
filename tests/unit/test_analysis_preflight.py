"""The analysis' pre-flight checks (casa_hub.analysis.preflight) without servers; the real XCache cases are
tests/site/test_analysis_through_xcache.py."""

from __future__ import annotations

import jwt
import pytest

from casa_hub.analysis.preflight import (
    DataAccessError,
    check_access,
    remote_servers,
    token_read_paths,
)
from casa_hub.common.ports import free_port


def test_remote_servers_are_found_with_their_default_ports():
    servers = remote_servers(["root://cache.example.org//store/a.root", "root://cache.example.org:1094//store/b",
                              "https://web.example.org/x.root", "file:///data/c.root", "/data/d.root"])
    assert sorted(servers) == [("https", "web.example.org", 443), ("root", "cache.example.org", 1094)]


def test_the_tokens_read_paths_are_below_the_storage_base(tmp_path, monkeypatch):
    f = tmp_path / "t"
    f.write_text(jwt.encode({"scope": "storage.read:/user/alice storage.create:/user/alice storage.read:/data",
                             "exp": 1}, "k" * 32, algorithm="HS256"))
    monkeypatch.delenv("CASA_STORAGE_BASE_PATH", raising=False)
    assert token_read_paths(str(f)) == ["/store/user/alice", "/store/data"]
    monkeypatch.setenv("CASA_STORAGE_BASE_PATH", "/eos/cms/")
    assert token_read_paths(str(f)) == ["/eos/cms/user/alice", "/eos/cms/data"]
    f.write_text("not a token")
    assert token_read_paths(str(f)) is None and token_read_paths(str(tmp_path / "missing")) is None


def test_a_server_that_refuses_connections_is_named_and_local_files_need_none():
    port = free_port()  # a port nobody listens on
    with pytest.raises(DataAccessError, match=rf"the data cache root://127.0.0.1:{port} is not reachable "
                                              r"\(Connection refused\): the analysis did not start"):
        check_access({"ttbar": {"files": [f"root://127.0.0.1:{port}//store/a.root"]}}, timeout=2)
    check_access({"ttbar": {"files": {"/data/a.root": "Events"}}, "other": ["file:///data/b.root"]})
