"""The nodes API of a hub running alone (SQLite): what a client and an
admin see, and what a plain user or a bad name is told."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.authsupport import rest, token_of
from tests.support import Client, Hub

PASSWORD = "dora-pass-1234"


def test_a_hub_alone_is_one_node_and_only_admins_run_nodes(
    tmp_path: Path, hub: Hub, client: Client
) -> None:
    rows = json.loads(client.run("admin", "nodes", "--json").stdout)
    assert [(r["name"], r["state"], r["url"]) for r in rows] == [
        (socket.gethostname(), "up", f"{hub.url}/")
    ]
    client.run("users", "add", "dora", "--password-stdin", input=PASSWORD + "\n")
    dora = Client(tmp_path / "dora", hub)
    dora.login(user="dora", password=PASSWORD)
    user = token_of(dora)
    status, body = rest(hub, "GET", "/v1/nodes", token=user)
    assert status == 200 and [n["state"] for n in body["nodes"]] == ["up"]
    assert set(body["nodes"][0]) == {"name", "url", "state"}  # no pid, host or load
    for method, path in (
        ("GET", "/v1/admin/nodes"),
        ("POST", f"/v1/admin/nodes/{socket.gethostname()}/drain"),
        ("DELETE", f"/v1/admin/nodes/{socket.gethostname()}"),
    ):
        status, body = rest(hub, method, path, token=user)
        assert (status, body["error"]["code"]) == (403, "forbidden"), (method, path)
    assert rest(hub, "GET", "/v1/nodes")[0] == 401
    res = client.run("admin", "drain", "nowhere", check=False)
    assert res.returncode == 7
    assert "there is no node 'nowhere'" in res.stderr and "freight admin nodes" in res.stderr
    res = client.run("admin", "remove-node", socket.gethostname(), check=False)
    assert res.returncode == 7 and "is up; drain and stop it before removing it" in res.stderr
    status, body = rest(
        hub, "POST", "/v1/admin/nodes/" + "x" * 65 + "/drain", token=token_of(client)
    )
    assert (status, body["error"]["code"]) == (400, "usage")
    # Still serving: nothing above drained it.
    assert json.loads(client.run("admin", "nodes", "--json").stdout)[0]["state"] == "up"
