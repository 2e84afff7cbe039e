"""Links through a real hub: ``freight share`` / ``fetch`` / ``links`` between
two accounts, and the by-reference data path (sealed data behind a
single-use link) with the SDK. Hostile: guessed tokens are counted and
blocked, used and expired links refused alike, a file replaced after it was
shared answers 410, names that would escape are refused, tampered
ciphertext is detected by the receiver."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest

import freight
from freight.client.references import fetch_reference
from freight.errors import IntegrityError, NotFound
from tests.authsupport import Rest, db_rows, rest, token_of
from tests.support import (
    Client,
    Hub,
    assert_same_tree,
    make_tree,
    random_file,
    same_bytes,
    wait_until,
)

UNKNOWN = "no such link: it is unknown, expired, used up or revoked; ask for a new link"
CHANGED = "the file changed since it was shared; ask for a new link"
CAROL_PASSWORD = "carol-secret-pass"


def sdk(cli: Client) -> freight.Client:
    return freight.Client(cli.hub.url, config_dir=cli.config)


def share(cli: Client, name: str, *args: str) -> dict[str, Any]:
    return dict(json.loads(cli.run("share", name, *args, "--json").stdout))


def fetch(cli: Client, link: str, out: Path, *, check: bool = True) -> Any:
    return cli.run("fetch", link, "-o", str(out), "--json", check=check)


def digest(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def get_link(hub: Hub, path: str, *, source: str = "127.0.0.1", token: str = "") -> tuple[int, Any]:
    """GET a link from ``source``: the status and the JSON answer, or the bytes."""
    with Rest(hub, source) as r:
        r.conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = r.conn.getresponse()
        raw = resp.read()
        if (resp.getheader("Content-Type") or "").startswith("application/json"):
            return resp.status, json.loads(raw)
        return resp.status, raw


def path_of(url: str) -> str:
    return "/" + url.split("#", 1)[0].split("/", 3)[3]


@pytest.fixture(scope="module")
def carol(tmp_path_factory: pytest.TempPathFactory, shared_hub: Hub, admin: Client) -> Client:
    admin.run("users", "add", "carol", "--password-stdin", input=CAROL_PASSWORD + "\n")
    c = Client(tmp_path_factory.mktemp("client-carol"), shared_hub)
    c.login(user="carol", password=CAROL_PASSWORD)
    return c


def test_share_to_another_user_who_fetches_identical_bytes(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "report.bin", 5 * 1024 * 1024 + 17, seed=1)
    admin.run("push", str(src), "--as", "share/report.bin", "--quiet")
    res = admin.run("share", "share/report.bin", "--to", "bob", "--expires", "1h")
    link = res.stdout.strip()
    assert link.startswith(f"{admin.hub.url}/v1/links/")
    assert link.endswith("#" + admin.hub.fingerprint)  # the pin travels with the link
    assert f"They run (logged in as bob):  freight fetch '{link}'" in res.stderr

    out = tmp_path / "out"
    out.mkdir()
    got = json.loads(fetch(bob, link, out).stdout)
    assert same_bytes(src, out / "report.bin")
    assert got["digest"] == digest(src)
    assert got["size"] == src.stat().st_size

    mine = json.loads(admin.run("links", "--json").stdout)
    theirs = json.loads(bob.run("links", "--json").stdout)
    row = next(r for r in mine if r["name"] == "share/report.bin")
    assert row["to"] == "bob" and row["state"] == "used" and row["mine"]
    assert any(r["id"] == row["id"] and not r["mine"] and r["owner"] == "admin" for r in theirs)
    line = next(ln for ln in bob.run("links").stdout.splitlines() if ln.startswith(row["id"]))
    assert "used" in line and "from admin" in line and "share/report.bin (5.0 MiB)" in line


def test_a_link_for_one_user_needs_that_users_login(
    tmp_path: Path, shared_hub: Hub, admin: Client, bob: Client, carol: Client
) -> None:
    src = random_file(tmp_path / "for-bob.bin", 70_000, seed=2)
    admin.run("push", str(src), "--as", "share/for-bob.bin", "--quiet")
    link = share(admin, "share/for-bob.bin", "--to", "bob")["url"]

    out = tmp_path / "out"
    out.mkdir()
    nobody = Client(tmp_path / "nobody", shared_hub)
    refused = fetch(nobody, link, out, check=False)
    assert refused.returncode == 3, refused.stderr
    assert "this link was shared with one account: log in as that user" in refused.stderr

    refused = fetch(carol, link, out, check=False)
    assert refused.returncode == 3, refused.stderr
    assert "this link was shared with another account; log in as that user" in refused.stderr
    assert list(out.iterdir()) == []

    fetch(bob, link, out)  # neither refusal spent it
    assert same_bytes(src, out / "for-bob.bin")


def test_a_single_use_link_is_refused_the_second_time(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "once.bin", 100_000, seed=3)
    admin.run("push", str(src), "--as", "share/once.bin", "--quiet")
    link = share(admin, "share/once.bin", "--to", "bob", "--uses", "1")["url"]
    fetch(bob, link, tmp_path / "first.bin")
    again = fetch(bob, link, tmp_path / "second.bin", check=False)
    assert again.returncode == 7, again.stderr
    assert UNKNOWN in again.stderr
    assert not (tmp_path / "second.bin").exists()


def test_an_expired_link_answers_as_an_unknown_one(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "brief.bin", 1000, seed=4)
    admin.run("push", str(src), "--as", "share/brief.bin", "--quiet")
    made = share(admin, "share/brief.bin", "--expires", "0.2s", "--uses", "1000")
    path = path_of(made["url"])
    # At most 0.2 s: the hub's clock decides.
    wait_until(lambda: get_link(admin.hub, path)[0] == 404, timeout=10, what="the link to expire")
    status, body = get_link(admin.hub, path)
    assert status == 404
    assert body["error"]["message"] == UNKNOWN
    late = fetch(bob, made["url"], tmp_path, check=False)
    assert late.returncode == 7 and UNKNOWN in late.stderr


def test_a_file_replaced_after_sharing_answers_410(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    first = random_file(tmp_path / "v.bin", 50_000, seed=5)
    admin.run("push", str(first), "--as", "share/v.bin", "--quiet")
    link = share(admin, "share/v.bin", "--to", "bob")["url"]
    second = random_file(tmp_path / "v2.bin", 50_000, seed=6)
    admin.run("push", str(second), "--as", "share/v.bin", "--quiet")
    res = fetch(bob, link, tmp_path / "got.bin", check=False)
    assert res.returncode == 7, res.stderr
    assert CHANGED in res.stderr
    status, body = get_link(admin.hub, path_of(link), token=token_of(bob))
    assert status == 410
    assert body["error"]["message"] == CHANGED


def test_guessed_tokens_are_counted_and_then_blocked(tmp_path: Path, admin: Client) -> None:
    src_name = "share/guess.bin"
    random_file(tmp_path / "guess.bin", 10_000, seed=7)
    admin.run("push", str(tmp_path / "guess.bin"), "--as", src_name, "--quiet")
    link = share(admin, src_name, "--uses", "5")["url"]
    guesser = "127.0.0.3"
    with Rest(admin.hub, guesser) as conn:
        for _ in range(20):
            status, body, _ = conn.call("GET", f"/v1/links/{secrets.token_urlsafe(32)}")
            assert status == 404
            assert body["error"]["message"] == UNKNOWN
        status, body, headers = conn.call("GET", f"/v1/links/{secrets.token_urlsafe(32)}")
        assert status == 429
        assert "too many failed link tokens" in body["error"]["message"]
        assert int(headers["Retry-After"]) > 0
        status, _, _ = conn.call("GET", path_of(link))  # blocked, the right token too
        assert status == 429
    status, _ = get_link(admin.hub, path_of(link), source="127.0.0.4")  # others are not
    assert status == 200


def test_hostile_names_tokens_and_numbers_are_refused(tmp_path: Path, admin: Client) -> None:
    token = token_of(admin)
    hub = admin.hub
    for name in ("../etc/passwd", "/etc/passwd", "a\x00b", "", "a/../../b", "x\u202e"):
        status, body = rest(hub, "POST", "/v1/links", {"name": name}, token=token)
        assert status == 400, name
        assert "invalid name" in body["error"]["message"]
    status, body = rest(hub, "POST", "/v1/links", {"name": "nothing-here"}, token=token)
    assert status == 404
    assert "no file named 'nothing-here'" in body["error"]["message"]
    random_file(tmp_path / "ok.bin", 10, seed=8)
    admin.run("push", str(tmp_path / "ok.bin"), "--as", "share/ok.bin", "--quiet")
    for bad in (
        {"expires": -1},
        {"expires": 31 * 86400},
        {"expires": "1d"},
        {"uses": 0},
        {"uses": 1.5},
        {"uses": 10**6},
        {"to": "../bob"},
        {"to": 5},
    ):
        status, body = rest(hub, "POST", "/v1/links", {"name": "share/ok.bin", **bad}, token=token)
        assert status == 400, (bad, body)
    status, body = rest(
        hub, "POST", "/v1/links", {"name": "share/ok.bin", "to": "nobody"}, token=token
    )
    assert status == 404 and "no user named 'nobody'" in body["error"]["message"]
    status, _ = rest(hub, "POST", "/v1/links", {"name": "share/ok.bin"})
    assert status == 401
    for garbage in ("..%2F..%2Fetc", "%00", "x" * 43, "A" * 400):
        status, _ = get_link(hub, f"/v1/links/{garbage}", source="127.0.0.5")
        assert status == 404, garbage
    status, body = rest(hub, "DELETE", "/v1/links/" + "0" * 12, token=token)
    assert status == 404 and "no link of yours" in body["error"]["message"]


def test_a_link_never_serves_another_users_file(tmp_path: Path, admin: Client, bob: Client) -> None:
    random_file(tmp_path / "admins.bin", 1000, seed=9)
    admin.run("push", str(tmp_path / "admins.bin"), "--as", "share/admins.bin", "--quiet")
    status, body = rest(
        admin.hub, "POST", "/v1/links", {"name": "share/admins.bin"}, token=token_of(bob)
    )
    assert status == 404
    assert "no file named 'share/admins.bin'" in body["error"]["message"]


def test_ranges_resume_and_only_a_whole_delivery_spends_a_use(
    tmp_path: Path, admin: Client
) -> None:
    src = random_file(tmp_path / "r.bin", 300_000, seed=10)
    admin.run("push", str(src), "--as", "share/r.bin", "--quiet")
    made = share(admin, "share/r.bin")
    path = path_of(made["url"])
    with Rest(admin.hub, "127.0.0.6") as conn:
        conn.conn.request("GET", path, headers={"Range": "bytes=1000-1999"})
        resp = conn.conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == "bytes 1000-1999/300000"
        assert resp.read() == src.read_bytes()[1000:2000]
        conn.conn.request("GET", path, headers={"Range": "bytes=400000-"})
        resp = conn.conn.getresponse()
        resp.read()
        assert resp.status == 416
        conn.conn.request("GET", path, headers={"Range": "bytes=299000-"})
        resp = conn.conn.getresponse()
        assert resp.status == 206 and resp.read() == src.read_bytes()[299000:]
        status, _, _ = conn.call("GET", path)
        assert status == 404  # the range that reached the end spent the one use


def test_a_large_file_is_served_exactly_in_unaligned_ranges(tmp_path: Path, admin: Client) -> None:
    """A file large enough to be read around the page cache (engine.direct)
    is served byte for byte, whatever the alignment of the range."""
    size = 9 * 1024 * 1024 + 4097
    src = random_file(tmp_path / "big.bin", size, seed=11)
    data = src.read_bytes()
    admin.run("push", str(src), "--as", "share/big.bin", "--quiet")
    path = path_of(share(admin, "share/big.bin")["url"])
    with Rest(admin.hub, "127.0.0.6") as conn:
        for first, last in ((1, 4096), (4095, 8 * 1024 * 1024 + 1), (size - 4099, size - 2)):
            conn.conn.request("GET", path, headers={"Range": f"bytes={first}-{last}"})
            resp = conn.conn.getresponse()
            assert resp.status == 206
            assert resp.read() == data[first : last + 1], (first, last)
        conn.conn.request("GET", path)
        resp = conn.conn.getresponse()
        assert resp.status == 200 and resp.read() == data


def test_revoked_links_stop_at_once(tmp_path: Path, admin: Client) -> None:
    random_file(tmp_path / "rv.bin", 1000, seed=11)
    admin.run("push", str(tmp_path / "rv.bin"), "--as", "share/rv.bin", "--quiet")
    made = share(admin, "share/rv.bin", "--uses", "3")
    res = admin.run("links", "revoke", made["id"])
    assert "Revoked 1 link." in res.stderr
    status, body = get_link(admin.hub, path_of(made["url"]), source="127.0.0.7")
    assert status == 404 and body["error"]["message"] == UNKNOWN


def test_a_reference_round_trip_of_a_folder_tree(tmp_path: Path, admin: Client) -> None:
    tree = make_tree(tmp_path / "tree", seed=12)
    out = tmp_path / "out"

    async def go() -> tuple[dict[str, Any], tuple[int, str]]:
        async with sdk(admin) as client:
            ref = await client.put_reference([tree], expires=60)
            got = await fetch_reference(ref, out)
            with pytest.raises(NotFound, match="unknown, expired, used up or revoked"):
                await fetch_reference(ref, tmp_path / "again")
            names = [f["name"] for f in await client.ls()]
            return ref, got, names

    ref, (size, plain_digest), names = asyncio.run(go())
    assert_same_tree(tree, out / "tree")
    assert (size, plain_digest) == (ref["bytes"], ref["blake3"])
    assert ref["files"] == 6
    assert ref["size"] > ref["bytes"]  # sealed: the tags and the header on top
    assert not [n for n in names if n.startswith(".jobs/")]  # spent: removed


def test_tampered_ciphertext_on_the_hub_is_detected(
    tmp_path: Path, shared_hub: Hub, admin: Client
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    random_file(src / "big.bin", 3 * 1024 * 1024, seed=13)

    async def put() -> dict[str, Any]:
        async with sdk(admin) as client:
            return await client.put_reference([src], expires=60)

    ref = asyncio.run(put())
    stored = next(
        p for p in (shared_hub.data / "files").glob("*/.jobs/*") if p.stat().st_size == ref["size"]
    )
    with open(stored, "r+b") as f:
        f.seek(2 * 1024 * 1024 + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(IntegrityError, match="does not authenticate"):
        asyncio.run(fetch_reference(ref, tmp_path / "out"))
    assert not (tmp_path / "out" / "src" / "big.bin").exists()


def test_a_plain_url_reference_is_fetched_as_one_file(tmp_path: Path, admin: Client) -> None:
    src = random_file(tmp_path / "plain.bin", 200_000, seed=14)
    admin.run("push", str(src), "--as", "share/plain.bin", "--quiet")
    made = share(admin, "share/plain.bin")
    url, fingerprint = made["url"].split("#")
    ref = {"url": url, "fingerprint": fingerprint, "size": 200_000, "blake3": digest(src)}
    got = asyncio.run(fetch_reference(ref, tmp_path / "in"))
    assert got == (200_000, digest(src))
    assert same_bytes(src, tmp_path / "in" / "plain.bin")


def test_fetch_resumes_from_a_partial_file(tmp_path: Path, admin: Client, bob: Client) -> None:
    src = random_file(tmp_path / "resume.bin", 2 * 1024 * 1024 + 5, seed=15)
    admin.run("push", str(src), "--as", "share/resume.bin", "--quiet")
    made = share(admin, "share/resume.bin", "--to", "bob")
    out = tmp_path / "out"
    out.mkdir()
    held = 1024 * 1024 + 3
    (out / f"resume.bin.{made['digest'][:16]}.freight-part").write_bytes(src.read_bytes()[:held])
    got = json.loads(fetch(bob, made["url"], out).stdout)
    assert got["resumed_from"] == held
    assert same_bytes(src, out / "resume.bin")
    assert sorted(p.name for p in out.iterdir()) == ["resume.bin"]
    assert json.loads(bob.run("links", "--json").stdout)[0]["state"] == "used"


def test_a_link_naming_another_certificate_is_refused(tmp_path: Path, bob: Client) -> None:
    forged = f"{bob.hub.url}/v1/links/{secrets.token_urlsafe(32)}#SHA256:{'0' * 64}"
    res = fetch(bob, forged, tmp_path, check=False)
    assert res.returncode == 4, res.stderr
    assert f"but {bob.hub.fingerprint} is pinned" in res.stderr


def test_a_link_without_its_fingerprint_is_not_trusted_blindly(
    tmp_path: Path, shared_hub: Hub, admin: Client
) -> None:
    random_file(tmp_path / "pin.bin", 1000, seed=16)
    admin.run("push", str(tmp_path / "pin.bin"), "--as", "share/pin.bin", "--quiet")
    url = share(admin, "share/pin.bin")["url"]
    stranger = Client(tmp_path / "stranger", shared_hub)
    res = fetch(stranger, url.split("#")[0], tmp_path / "x.bin", check=False)
    assert res.returncode == 4, res.stderr
    assert "is not one this machine trusts" in res.stderr
    fetch(stranger, url, tmp_path / "x.bin")  # with the fingerprint it names
    assert same_bytes(tmp_path / "pin.bin", tmp_path / "x.bin")


def test_an_account_holds_a_bounded_number_of_live_links(
    tmp_path: Path, shared_hub: Hub, carol: Client
) -> None:
    random_file(tmp_path / "many.bin", 100, seed=17)
    carol.run("push", str(tmp_path / "many.bin"), "--quiet")
    ((carol_id,),) = db_rows(shared_hub, "SELECT id FROM users WHERE name = 'carol'")
    hashes = [secrets.token_hex(32) for _ in range(1000)]
    con = sqlite3.connect(shared_hub.data / "freight.db", timeout=30)
    with con:  # as many live links as an account may hold, made before this test
        con.executemany(
            "INSERT INTO links (token_hash, user_id, name, size, digest, to_id, uses, used, "
            "served, created, expires) VALUES (?, ?, 'many.bin', 100, '', NULL, 1, 0, 0, 0, ?)",
            [(hashed, carol_id, time.time() + 3600) for hashed in hashes],
        )
    con.close()
    res = carol.run("share", "many.bin", check=False)
    assert res.returncode == 7, res.stderr
    assert "you have 1000 live links, the most an account may have" in res.stderr
    assert "revoke some (freight links revoke ID)" in res.stderr
    res = carol.run("links", "revoke", hashes[0][:12])  # its id: the hash's first 12 digits
    assert "Revoked 1 link." in res.stderr
    assert carol.run("share", "many.bin").stdout.startswith("https://")
    con = sqlite3.connect(shared_hub.data / "freight.db", timeout=30)
    with con:  # the other tests share the hub: carol's room back
        con.execute("DELETE FROM links WHERE user_id = ? AND digest = ''", (carol_id,))
    con.close()


def test_a_single_use_link_fetched_twice_at_once_delivers_once(
    tmp_path: Path, admin: Client
) -> None:
    src = random_file(tmp_path / "race.bin", 16 * 1024 * 1024, seed=18)
    admin.run("push", str(src), "--as", "share/race.bin", "--quiet")
    url = share(admin, "share/race.bin")["url"].split("#")[0]

    async def race() -> list[tuple[int, int]]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:

            async def one() -> tuple[int, int]:
                async with http.get(url) as resp:
                    return resp.status, len(await resp.read())

            return list(await asyncio.gather(one(), one(), one()))

    answers = sorted(asyncio.run(race()))
    assert [a for a in answers if a[0] == 200] == [(200, 16 * 1024 * 1024)]
    assert all(status in (404, 409) for status, _ in answers if status != 200)


def test_the_links_of_a_disabled_account_stop(tmp_path: Path, admin: Client, carol: Client) -> None:
    random_file(tmp_path / "c.bin", 1000, seed=19)
    carol.run("push", str(tmp_path / "c.bin"), "--as", "share/c.bin", "--quiet")
    path = path_of(share(carol, "share/c.bin", "--uses", "3")["url"])
    assert get_link(admin.hub, path, source="127.0.0.10")[0] == 200
    admin.run("users", "disable", "carol")
    try:
        status, body = get_link(admin.hub, path, source="127.0.0.10")
        assert status == 404 and body["error"]["message"] == UNKNOWN
    finally:
        admin.run("users", "enable", "carol")
    assert get_link(admin.hub, path, source="127.0.0.10")[0] == 200


def test_fetch_into_a_folder_replaces_nothing(tmp_path: Path, admin: Client, bob: Client) -> None:
    random_file(tmp_path / "keep.bin", 1000, seed=20)
    admin.run("push", str(tmp_path / "keep.bin"), "--as", "share/keep.bin", "--quiet")
    link = share(admin, "share/keep.bin", "--to", "bob")["url"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.bin").write_bytes(b"mine")
    res = fetch(bob, link, out, check=False)
    assert res.returncode == 2, res.stderr
    assert "keep.bin exists already; give -o PATH to replace it" in res.stderr
    assert (out / "keep.bin").read_bytes() == b"mine"
    assert "request failed" not in bob.hub.log()  # a client that went away is no failure
    fetch(bob, link, out / "keep.bin")  # named: replaced, and the link was not spent before
    assert same_bytes(tmp_path / "keep.bin", out / "keep.bin")


def test_uses_of_infinity_are_refused(shared_hub: Hub, admin: Client, tmp_path: Path) -> None:
    """'uses': 1e400 (infinity once parsed) once failed the request (500)."""
    admin.run("push", str(random_file(tmp_path / "inf.bin", 100)), "--as", "inf.bin")
    for uses in (float("inf"), float("-inf"), 1.5, 0, 1001):
        status, body = rest(
            shared_hub,
            "POST",
            "/v1/links",
            {"name": "inf.bin", "uses": uses},
            token=token_of(admin),
        )
        assert status == 400, (uses, body)
        assert body["error"]["message"] == "'uses' must be a whole number from 1 to 1000"
