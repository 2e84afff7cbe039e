"""freight.Client, the SDK, against a real hub process: every method the
CLI's commands are built on, in-process and async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import freight
from freight.client.api import Offered
from freight.errors import (
    CodeUnknown,
    FingerprintMismatch,
    FreightError,
    NotFound,
    NotLoggedIn,
    UsageError,
    registered,
)
from tests.agentsupport import Agent, wait_online
from tests.support import (
    ADMIN_PASSWORD,
    Client,
    Hub,
    assert_same_tree,
    make_tree,
    random_file,
    same_bytes,
)


def sdk(cli: Client) -> freight.Client:
    """The SDK on the same config folder (login, pin, identity) as a CLI client."""
    return freight.Client(cli.hub.url, config_dir=cli.config)


def test_the_package_exports_the_sdk() -> None:
    import freight.client

    assert freight.Client is freight.client.Client
    assert "Client" in freight.__all__ and "Client" in freight.client.__all__
    assert "freight.Client" in repr(freight.Client())


async def test_login_pins_the_certificate_and_saves_the_login(
    tmp_path: Path, shared_hub: Hub
) -> None:
    hub = await freight.Client.login(
        shared_hub.url,
        "admin",
        ADMIN_PASSWORD,
        fingerprint=shared_hub.fingerprint,
        config_dir=tmp_path / "a",
    )
    async with hub:
        assert hub.last_login is not None and hub.last_login.role == "admin"
        assert hub.last_login.fingerprint == shared_hub.fingerprint
        assert isinstance(await hub.ls(), list)
    # A later client finds the login and the pin by itself.
    async with freight.Client(config_dir=tmp_path / "a") as again:
        assert isinstance(await again.users(), list)

    # Unseen certificate, nobody to ask: nothing saved.
    with pytest.raises(UsageError, match="not pinned yet"):
        await freight.Client.login(
            shared_hub.url, "admin", ADMIN_PASSWORD, config_dir=tmp_path / "b"
        )
    asked: list[str] = []

    def refuse(seen: str) -> bool:
        asked.append(seen)
        return False

    with pytest.raises(UsageError, match="not trusted"):
        await freight.Client.login(
            shared_hub.url, "admin", ADMIN_PASSWORD, config_dir=tmp_path / "b", confirm=refuse
        )
    assert asked == [shared_hub.fingerprint]
    with pytest.raises(NotLoggedIn):
        await freight.Client(config_dir=tmp_path / "b").ls()
    wrong = "SHA256:" + "0" * 64
    with pytest.raises(FingerprintMismatch):
        await freight.Client.login(
            shared_hub.url, "admin", ADMIN_PASSWORD, config_dir=tmp_path / "b", fingerprint=wrong
        )
    # Trust on first use, and the password asked only once trusted.
    hub = await freight.Client.login(
        shared_hub.url,
        "admin",
        lambda: ADMIN_PASSWORD,
        config_dir=tmp_path / "b",
        trust_on_first_use=True,
    )
    assert await hub.logout() is True
    with pytest.raises(NotLoggedIn):
        await freight.Client(config_dir=tmp_path / "b").ls()


async def test_push_pull_ls_rm_keep_the_bytes(tmp_path: Path, admin: Client) -> None:
    src = random_file(tmp_path / "sdk-one.bin", 3 * 1024 * 1024 + 5, seed=11)
    folder = make_tree(tmp_path / "sdk-folder", seed=4, big=1024 * 1024 + 3)
    async with sdk(admin) as hub:
        pushed = await hub.push(src, options=hub.options(compress="fast"))
        assert [r.name for r in pushed] == ["sdk-one.bin"] and pushed[0].size == src.stat().st_size
        await hub.push(folder, options=hub.options(parallel=2))
        names = {f["name"] for f in await hub.ls()}
        assert "sdk-one.bin" in names and any(n.startswith("sdk-folder/") for n in names)

        one = await hub.pull("sdk-one.bin", tmp_path / "copy.bin")
        assert not one.folder and same_bytes(src, tmp_path / "copy.bin")
        back = await hub.pull("sdk-folder/", tmp_path / "restore")
        assert back.folder and back.root == tmp_path / "restore"
        files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
        assert files and len(back.files) == len(files)
        for rel in files:  # push keeps bytes and names (no modes, no empty folders)
            assert same_bytes(folder / rel, tmp_path / "restore" / rel), rel
        # Into an existing folder it arrives as FOLDER/NAME, as cp -r does.
        nested = await hub.pull("sdk-folder/", tmp_path / "restore")
        assert nested.root == tmp_path / "restore" / "sdk-folder"

        await hub.rm("sdk-one.bin")
        assert "sdk-one.bin" not in {f["name"] for f in await hub.ls()}
        with pytest.raises(NotFound):
            await hub.pull("sdk-one.bin", tmp_path / "gone.bin")


async def test_send_and_receive_with_a_code(tmp_path: Path, admin: Client, bob: Client) -> None:
    folder = make_tree(tmp_path / "gift", seed=8, big=2 * 1024 * 1024 + 1)
    granted: asyncio.Future[Offered] = asyncio.get_running_loop().create_future()
    async with sdk(admin) as alice, sdk(bob) as bobs:

        async def receive() -> freight.client.Summary:
            offered = await granted
            assert offered.expires_in > 0
            return await bobs.receive(offered.code, tmp_path / "in")

        sent, received = await asyncio.wait_for(
            asyncio.gather(alice.send(folder, on_code=granted.set_result), receive()), 120
        )
    assert sent.files == received.files > 0 and sent.bytes == received.bytes
    assert_same_tree(folder, tmp_path / "in" / "gift")


async def test_a_receiver_replaces_a_file_only_when_told(
    tmp_path: Path, admin: Client, bob: Client
) -> None:
    src = random_file(tmp_path / "clash.bin", 10_000, seed=2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clash.bin").write_bytes(b"mine")
    async with sdk(admin) as alice, sdk(bob) as bobs:
        for overwrite in (False, True):
            granted: asyncio.Future[Offered] = asyncio.get_running_loop().create_future()
            sending = asyncio.ensure_future(alice.send(src, on_code=granted.set_result, ttl=60))
            try:
                code = (await asyncio.wait_for(granted, 60)).code
                receiving = bobs.receive(code, tmp_path / "in", overwrite=overwrite)
                if not overwrite:
                    with pytest.raises(FreightError, match="already exists"):
                        await asyncio.wait_for(receiving, 60)
                    with pytest.raises(FreightError):  # the sender is told why
                        await asyncio.wait_for(sending, 60)
                    assert (tmp_path / "in" / "clash.bin").read_bytes() == b"mine"
                else:
                    summary = await asyncio.wait_for(receiving, 60)
                    assert summary.files == 1 and same_bytes(src, tmp_path / "in" / "clash.bin")
                    await asyncio.wait_for(sending, 60)
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)


async def test_connect_and_listen(admin: Client, bob: Client) -> None:
    async with sdk(bob) as bobs, bobs.listen("sdk-echo") as listener:

        async def echo() -> None:
            async for conn in listener:
                async with conn:
                    async for message in conn:
                        await conn.send(message.upper())
                return

        echoing = asyncio.ensure_future(echo())
        try:
            async with sdk(admin) as alice, alice.connect("bob", "sdk-echo", timeout=30) as conn:
                await conn.send(b"hello")
                assert await asyncio.wait_for(conn.recv(), 30) == b"HELLO"
                assert conn.fingerprint
            await asyncio.wait_for(echoing, 30)
        finally:
            echoing.cancel()
            await asyncio.gather(echoing, return_exceptions=True)


async def test_accounts_keys_and_events(admin: Client) -> None:
    async with sdk(admin) as hub:
        added = await hub.add_user("sdk-carol", "carol-secret-pass")
        assert added["name"] == "sdk-carol" and added["role"] == "user"
        await hub.set_quota("sdk-carol", "1G")
        row = next(u for u in await hub.users() if u["name"] == "sdk-carol")
        assert row["quota"] == 1024**3
        assert (await hub.disable_user("sdk-carol"))["disabled"]
        assert not (await hub.enable_user("sdk-carol"))["disabled"]
        with pytest.raises(NotFound) as missing:
            await hub.disable_user("sdk-nobody")
        assert missing.value.hint == "run: freight users ls"
        keys = await hub.keys()
        assert keys["user"] == "admin" and keys["keys"]
        with pytest.raises(UsageError):
            await hub.remove_key("zz")
        kinds = {e["kind"] for e in (await hub.events(limit=500))["events"]}
        assert "login" in kinds and "user_added" in kinds
        # Both kinds are there: a page of one has a next page.
        page = await hub.events(kinds=["login", "user_added"], limit=1)
        assert len(page["events"]) == 1 and page["next"]
        rest = await hub.events(kinds=["login", "user_added"], limit=5, cursor=page["next"])
        assert {e["kind"] for e in rest["events"]} <= {"login", "user_added"}
        assert page["events"][0]["id"] not in [e["id"] for e in rest["events"]]
        assert "budget" in await hub.bandwidth()
        assert isinstance(await hub.connections(), list)


async def test_agents_and_collection_administration(admin: Client) -> None:
    async with sdk(admin) as hub:
        token = await hub.agent_token("sdk-lab", ttl=600)
        assert token["token"]
        assert await hub.revoke_agent_tokens("sdk-lab") == 1
        assert isinstance(await hub.agents(), list)
        policy = await hub.set_collect_policy("sdk-jpegs", include=["**/*.jpg"], every=600)
        assert policy["include"] == ["**/*.jpg"]
        assert "sdk-jpegs" in {p["name"] for p in await hub.collect_policies()}
        await hub.remove_collect_policy("sdk-jpegs")
        assert "sdk-jpegs" not in {p["name"] for p in await hub.collect_policies()}
        assert "unique_files" in await hub.collected_stats()
        assert isinstance(await hub.collected(), list)


@pytest.fixture
def lab(tmp_path: Path, admin: Client, shared_hub: Hub) -> Iterator[Agent]:
    root = tmp_path / "lab-root"
    root.mkdir()
    agent = Agent(admin, shared_hub, "sdk-lab-pc", tmp_path / "lab", root)
    try:
        wait_online(admin, agent.name, timeout=90, proc=agent.start(wait=False))
        yield agent
    finally:
        agent.kill()


async def test_cp_to_and_from_an_agent(tmp_path: Path, admin: Client, lab: Agent) -> None:
    root = lab.roots[0]
    folder = make_tree(tmp_path / "up", seed=3, big=1024 * 1024 + 9)
    async with sdk(admin) as hub:
        assert lab.name in {a["name"] for a in await hub.agents()}
        sent = await hub.cp(folder, dest=lab.remote(root / "copy"), recursive=True)
        assert sent.files > 0
        assert_same_tree(folder, root / "copy")
        listed = {e["name"] for e in await hub.ls(lab.remote(root / "copy"))}
        assert listed == {p.name for p in folder.iterdir()}

        got = await hub.cp(lab.remote(root / "copy"), dest=tmp_path / "down", recursive=True)
        assert got.files == sent.files
        assert_same_tree(folder, tmp_path / "down")
        with pytest.raises(UsageError, match="folder"):
            await hub.cp(folder, dest=lab.remote(root / "other"))
        with pytest.raises(FreightError):
            await hub.ls(lab.remote("/etc"))  # outside its roots

        answer = await hub.agent_command(lab.name, "ping", wait=30)
        assert answer["state"] == "done"
        assert (await hub.command_result(int(answer["id"]), wait=0))["state"] == "done"


async def test_errors_are_typed(tmp_path: Path, admin: Client) -> None:
    async with sdk(admin) as hub:
        with pytest.raises(UsageError):
            await hub.ls("not-an-agent-path")
        with pytest.raises(UsageError):
            await hub.cp("a", "b", dest="c")
        with pytest.raises(CodeUnknown):
            await hub.receive("999-not-a-code", tmp_path / "x")
        # The hub answers with a typed JSON error carrying a registered code.
        url = hub.session.url.with_path("/v1/users/sdk-nobody/disable")
        async with hub.session.http.post(url) as resp:
            body = await resp.json()
        assert resp.status == 404 and body["error"]["code"] in registered()
    with pytest.raises(UsageError):
        freight.Client(transport="carrier-pigeon")
