"""End to end through a real hub process over real TLS on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Client, Hub, random_file, same_bytes


@pytest.mark.parametrize("data_path", ["direct", "tls"])
@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_push_pull_identical(
    tmp_path: Path, shared_client: Client, size: int, data_path: str
) -> None:
    client = shared_client
    name = f"f-{size}-{data_path}.bin"
    src = random_file(tmp_path / "src.bin", size, seed=size)
    out = client.run("push", str(src), "--as", name, "--data-path", data_path, "--json")
    pushed = json.loads(out.stdout)["pushed"][0]
    assert pushed["size"] == size
    listing = {f["name"]: f["size"] for f in json.loads(client.run("ls", "--json").stdout)}
    assert listing[name] == size
    dest = tmp_path / "copy.bin"
    client.run("pull", name, str(dest), "--data-path", data_path, "--json")
    assert same_bytes(src, dest)


def test_push_tree_with_unicode_and_compression(tmp_path: Path, shared_client: Client) -> None:
    client = shared_client
    tree = tmp_path / "tree"
    (tree / "sub dir").mkdir(parents=True)
    (tree / "empty.txt").write_bytes(b"")
    (tree / "sub dir" / "naïve-日本.txt").write_text("hello freight\n" * 50_000)
    res = client.run("push", str(tree), "--compress", "fast", "--parallel", "2", "--json")
    pushed = {r["name"]: r for r in json.loads(res.stdout)["pushed"]}
    assert set(pushed) == {"tree/empty.txt", "tree/sub dir/naïve-日本.txt"}
    text = pushed["tree/sub dir/naïve-日本.txt"]
    assert text["wire_bytes"] < text["size"] / 5  # zstd did its job on the wire
    client.run("pull", "tree/sub dir/naïve-日本.txt", str(tmp_path / "back.txt"))
    assert same_bytes(tree / "sub dir" / "naïve-日本.txt", tmp_path / "back.txt")


def test_rm_and_missing_file(tmp_path: Path, client: Client) -> None:
    src = random_file(tmp_path / "a", 1000)
    client.run("push", str(src), "--quiet")
    client.run("rm", "a")
    assert json.loads(client.run("ls", "--json").stdout) == []
    res = client.run("pull", "a", str(tmp_path / "x"), check=False)
    assert res.returncode == 7
    assert "no file named 'a' on the hub" in res.stderr


def test_wrong_password(tmp_path: Path, hub: Hub) -> None:
    c = Client(tmp_path / "c", hub)
    res = c.run(
        "login",
        hub.url,
        "--user",
        "admin",
        "--password-stdin",
        "--fingerprint",
        hub.fingerprint,
        input="wrong\n",
        check=False,
    )
    assert res.returncode == 3
    assert "wrong user name or password" in res.stderr
    assert not (tmp_path / "c" / "config.json").exists()


def test_failed_logins_are_rate_limited(tmp_path: Path, hub: Hub) -> None:
    c = Client(tmp_path / "c", hub)
    args = [
        "login",
        hub.url,
        "--user",
        "admin",
        "--password-stdin",
        "--fingerprint",
        hub.fingerprint,
    ]
    codes = [c.run(*args, input="nope\n", check=False).returncode for _ in range(5)]
    assert codes == [3] * 5
    res = c.run(*args, input="correct horse battery staple\n", check=False)
    assert res.returncode == 3
    assert "too many failed logins" in res.stderr


def test_wrong_fingerprint_refused(tmp_path: Path, hub: Hub) -> None:
    c = Client(tmp_path / "c", hub)
    bogus = "SHA256:" + "0" * 64
    res = c.run(
        "login",
        hub.url,
        "--user",
        "admin",
        "--password-stdin",
        "--fingerprint",
        bogus,
        input="x\n",
        check=False,
    )
    assert res.returncode == 4
    assert f"not the expected {bogus}" in res.stderr


def test_changed_certificate_is_refused_after_pinning(tmp_path: Path, hub: Hub) -> None:
    c = Client(tmp_path / "c", hub)
    c.login()
    # A different hub (new certificate) appears at the same address.
    hub.stop()
    other = Hub(tmp_path / "other")
    other.port = hub.port
    other.start()
    try:
        res = c.run("ls", check=False)
        assert res.returncode == 4
        assert "pinned" in res.stderr and other.fingerprint in res.stderr
        assert "freight login" in res.stderr  # says how to proceed
    finally:
        other.stop()


def test_bad_arguments_get_one_line_and_exit_2(tmp_path: Path, shared_client: Client) -> None:
    for args, text in [
        (["push", str(tmp_path / "missing")], "no such file or folder"),
        (["push", "/etc/hostname", "--as", "../evil"], "'..' components are not allowed"),
    ]:
        res = shared_client.run(*args, check=False)
        assert res.returncode == 2, res.stderr
        assert text in res.stderr
        assert "Traceback" not in res.stderr
