"""Collection in a cluster: an agent's upload whose node is SIGKILLed
resumes on another node from its checkpoint, and the content lands in the
shared store whole. Real `freight hub` nodes on one PostgreSQL database and
one data folder, a real `freight agent run`; skipped without PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from tests.agentsupport import AgentProc, wait_online
from tests.collectsupport import (
    FAST_AGENT,
    add_policy,
    blake3_of,
    check_cas,
    hub_events,
    wait_collected,
)
from tests.integration.test_cluster import CKPT, Cluster, cluster  # noqa: F401 - a fixture
from tests.integration.test_postgres import pg_database  # noqa: F401 - a fixture
from tests.support import Client, random_file

MiB = 1024 * 1024


def test_an_upload_whose_node_dies_resumes_on_another_and_is_stored_whole(
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    for name in ("a", "b"):  # throttled, so the SIGKILL lands mid-upload
        cluster.start(name, "--bandwidth", "6M")
    admin = cluster.client("admin")
    root = tmp_path / "root"
    root.mkdir()
    size = 20 * MiB
    src = random_file(root / "big.bin", size, seed=21)
    lab = Client(tmp_path / "lab", cluster.nodes["a"])
    lab.env.update(FAST_AGENT)
    cluster.enroll(admin, lab, "lab", root)
    with AgentProc(lab, tmp_path / "lab.log") as proc:
        wait_online(admin, "lab", proc=proc)
        add_policy(admin, "all", every="1h")
        victim, survivor = cluster.receiver(2, timeout=60)
        dying = cluster.nodes[victim]
        dying.kill()
        at_kill = dying.partial_size()
        assert at_kill < size, "the upload ended before the SIGKILL"
        done = wait_collected(admin, 1, 90)
    assert done["failed"] == 0 and done["unique_bytes"] == size
    store = check_cas(cluster.nodes[survivor])
    assert set(store) == {blake3_of(src)}
    # Resumed on the survivor from a checkpoint, not started over.
    resumes = hub_events(cluster.nodes[survivor], "stream_resume")
    assert resumes and resumes[0]["checkpoint"] >= CKPT, resumes
    assert resumes[0]["checkpoint"] <= at_kill
