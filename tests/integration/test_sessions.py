"""Revoking a login ends what it holds open: a control WebSocket, an HTTP
attachment and a data connection held by a real client are closed when an
admin disables the account, when the user changes the password elsewhere,
when the login is logged out, and when it expires; a Pull on them is
refused. A second hub on the same PostgreSQL, which hears of none of it,
refuses the next Pull and ticket by checking the login again. Expired tokens
are purged. Real hub processes, real TLS, sockets on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freight.client.session import HubSession, open_channel
from freight.errors import FreightError
from freight.protocol import messages as m
from freight.transport.dataconn import open_data_connection
from tests.authsupport import db_rows, rest, token_of
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.support import Client, Hub, wait_until

PASSWORD = "dora-secret-1"


def add_dora(admin: Client) -> None:
    res = admin.run("users", "add", "dora", "--password-stdin", input=PASSWORD + "\n")
    assert "Added user dora" in res.stderr


def dora(tmp_path: Path, hub: Hub, where: str = "dora") -> Client:
    c = Client(tmp_path / where, hub)
    c.login(user="dora", password=PASSWORD)
    return c


class Held:
    """One login's control WebSocket, HTTP attachment and data connection,
    held open as a long transfer holds them."""

    def __init__(self, hub: Hub, token: str) -> None:
        self.hub = hub
        self.session = HubSession(hub.url, fingerprint=hub.fingerprint, token=token)
        self.channels: dict[str, Any] = {}

    async def open(self) -> Held:
        self.channels["ws"], _ = await open_channel(self.session, "ws")
        self.channels["http"], _ = await open_channel(self.session, "http")
        grant = await self.ticket()
        assert isinstance(grant, m.TicketGrant), grant
        self.channels["data"] = await open_data_connection(
            "127.0.0.1",
            self.hub.port,
            ticket_id=bytes.fromhex(grant.ticket),
            secret=bytes.fromhex(grant.secret),
        )
        return self

    async def ticket(self) -> Any:
        """What the control channel answers a TicketRequest with (None
        once it is closed)."""
        chan = self.channels["ws"]
        try:
            await chan.send(m.TicketRequest(rid="t1"))
            return await answer(chan)
        except FreightError:
            return None

    async def pulls(self) -> dict[str, str]:
        """Each channel's answer to a Pull of a file that is not there:
        ``abort:not_found`` while the login is good."""
        out = {}
        for name, chan in self.channels.items():
            try:
                await chan.send(m.Pull(sid=f"s-{name}", name="missing.bin"))
                msg = await answer(chan)
                out[name] = f"{type(msg).__name__.lower()}:{getattr(msg, 'code', '')}"
            except (FreightError, TimeoutError) as exc:
                out[name] = f"closed:{type(exc).__name__}"
        return out

    async def wait_closed(self, timeout: float = 15) -> dict[str, bool]:
        """Which channels the hub closed within ``timeout`` seconds."""

        async def closed(chan: Any) -> bool:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        await chan.recv()
            except TimeoutError:
                return False
            except FreightError:
                return True

        names = list(self.channels)
        done = await asyncio.gather(*(closed(self.channels[n]) for n in names))
        return dict(zip(names, done, strict=True))

    async def aclose(self) -> None:
        for chan in self.channels.values():
            await chan.aclose()
        await self.session.aclose()


async def answer(chan: Any) -> Any:
    """The next frame that is not a keep-alive."""
    async with asyncio.timeout(10):
        while True:
            msg, _ = await chan.recv()
            if not isinstance(msg, m.Ping):
                return msg


GOOD = {"ws": "abort:not_found", "http": "abort:not_found", "data": "abort:not_found"}


def revoked_while_held(
    hub: Hub, token: str, revoke: Callable[[], Any], *, timeout: float = 15
) -> tuple[dict[str, bool], dict[str, str]]:
    """Hold a login's channels, run ``revoke`` (a blocking CLI call), and
    see what the hub closed and how a new Pull fares."""

    async def go() -> tuple[dict[str, bool], dict[str, str]]:
        held = await Held(hub, token).open()
        try:
            assert await held.pulls() == GOOD
            await asyncio.to_thread(revoke)
            closed = await held.wait_closed(timeout)
            return closed, await held.pulls()
        finally:
            await held.aclose()

    return asyncio.run(go())


ALL_CLOSED = {"ws": True, "http": True, "data": True}


def assert_refused(pulls: dict[str, str]) -> None:
    assert all(v.startswith("closed:") for v in pulls.values()), pulls


def test_disabling_an_account_closes_its_channels(tmp_path: Path, client: Client) -> None:
    add_dora(client)
    d = dora(tmp_path, client.hub)
    closed, pulls = revoked_while_held(
        client.hub, token_of(d), lambda: client.run("users", "disable", "dora")
    )
    assert closed == ALL_CLOSED
    assert_refused(pulls)
    (ended,) = [e for e in events(client, "sessions_closed") if e["actor"] == "dora"]
    assert ended["detail"]["reason"] == "disabled" and ended["detail"]["channels"] >= 3


def test_a_password_change_closes_the_other_logins_channels(tmp_path: Path, client: Client) -> None:
    add_dora(client)
    here, elsewhere = dora(tmp_path, client.hub), dora(tmp_path, client.hub, "elsewhere")

    async def go() -> tuple[dict[str, bool], dict[str, str], dict[str, str]]:
        kept = await Held(client.hub, token_of(here)).open()
        other = await Held(client.hub, token_of(elsewhere)).open()
        try:
            await asyncio.to_thread(
                here.run, "passwd", "--password-stdin", input=f"{PASSWORD}\ndora-new-secret\n"
            )
            closed = await other.wait_closed()
            return closed, await other.pulls(), await kept.pulls()
        finally:
            await kept.aclose()
            await other.aclose()

    closed, pulls, kept = asyncio.run(go())
    assert closed == ALL_CLOSED
    assert_refused(pulls)
    assert kept == GOOD  # the login that changed the password goes on


def test_logout_revokes_the_token_and_closes_its_channels(tmp_path: Path, client: Client) -> None:
    add_dora(client)
    d = dora(tmp_path, client.hub)
    token = token_of(d)
    closed, pulls = revoked_while_held(client.hub, token, lambda: d.run("logout"))
    assert closed == ALL_CLOSED
    assert_refused(pulls)
    assert rest(client.hub, "GET", "/v1/files", token=token)[0] == 401
    assert json.loads((d.config / "config.json").read_text())["hubs"] == {}
    res = d.run("ls", check=False)
    assert res.returncode == 3 and "not logged in" in res.stderr
    # Logging out again, with nothing saved, says so.
    again = d.run("logout", check=False)
    assert again.returncode == 3 and "not logged in" in again.stderr


def test_an_expired_login_closes_its_channels_and_is_purged(tmp_path: Path, hubs: Any) -> None:
    hub = hubs("--token-lifetime", "4")
    c = Client(tmp_path / "c", hub)
    c.login()
    token = token_of(c)
    closed, pulls = revoked_while_held(hub, token, lambda: None, timeout=20)
    assert closed == ALL_CLOSED
    assert_refused(pulls)
    assert rest(hub, "GET", "/v1/files", token=token)[0] == 401
    assert db_rows(hub, "SELECT count(*) FROM tokens")[0][0] == 1  # not purged yet
    hub.stop()
    hub.start()  # the periodic purge runs at start
    wait_until(lambda: db_rows(hub, "SELECT count(*) FROM tokens")[0][0] == 0, 20, "the purge")


def test_another_hub_on_the_same_database_checks_the_login_again(
    tmp_path: Path,
    pg_database: str,  # noqa: F811 - the fixture
) -> None:
    first = Hub(tmp_path / "a", extra=["--database-url", pg_database]).start()
    second = Hub(tmp_path / "b", extra=["--database-url", pg_database]).start()
    try:
        admin = Client(tmp_path / "admin", first)
        admin.login()
        add_dora(admin)
        token = token_of(dora(tmp_path, first))

        async def go() -> tuple[dict[str, str], Any]:
            held = await Held(second, token).open()
            try:
                assert await held.pulls() == GOOD
                await asyncio.to_thread(admin.run, "users", "disable", "dora")
                # It reuses a check of the login for up to 2 s: wait until
                # the next stream on each channel comes after that.
                async with asyncio.timeout(10):
                    while True:
                        pulls = await held.pulls()
                        if all(pulls[name] != GOOD[name] for name in ("ws", "data")):
                            break
                        await asyncio.sleep(0.2)
                return pulls, await held.ticket()
            finally:
                await held.aclose()

        pulls, ticket = asyncio.run(go())
        # The hub that did not see the change refuses the next stream and
        # closes; no new ticket is handed out.
        for name in ("ws", "data"):
            assert pulls[name] in ("abort:not_logged_in", "closed:ChannelClosed"), pulls
        assert not isinstance(ticket, m.TicketGrant), ticket
    finally:
        second.stop()
        first.stop()


def events(admin: Client, kind: str) -> list[dict[str, Any]]:
    res = admin.run("admin", "events", "--kind", kind, "--json")
    return list(json.loads(res.stdout))
