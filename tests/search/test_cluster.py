"""Cluster routing: the search joins a Ray cluster, the latency work lands on the node that declares the target's
hardware resource, and the table comes back to the driver as text merged into its own file.

The first test fakes the cluster in-process (a node with its own disk); the second is a real two-node Ray cluster,
started the way the README tells a user to: token authentication on, one token for both nodes and the driver, given
in the environment only.
"""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hilonas.search.executor_base import LocalExecutor

RAY = str(Path(sys.executable).parent / "ray")


class FakeCluster(LocalExecutor):
    """Trials run in-process; ``run_pinned`` runs on a 'node' whose tables live in another folder (its own disk)."""

    is_cluster = True
    description = "fake cluster"

    def __init__(self, node_dir):
        super().__init__()
        self.node_dir = node_dir
        self.pinned = []

    def run_pinned(self, fn, *args, resource=None, cpus=1):
        self.pinned.append((fn.__name__, resource, cpus))
        self.last_pinned_node = "fake-node"
        *head, _driver_tables = args  # the table task and the probe task both take the tables folder last
        return fn(*head, str(self.node_dir))


def test_cluster_table_comes_back_as_text_and_is_merged(workdir, settings, put_table, target_fp, monkeypatch,
                                                         tmp_path_factory):
    import hilonas.search.driver as driver
    from hilonas.latency.build import table_complete
    from hilonas.latency.table import LatencyTable
    from hilonas.spaces import SearchSpace

    node = tmp_path_factory.mktemp("node") / "latency_tables"
    node_table = put_table(node.parent)  # the node has the complete table; the driver only a block of another space
    local = workdir / "latency_tables" / node_table.name
    local.unlink()
    local_only = local_only_entry(LatencyTable.load(node_table, expect=target_fp), local)
    cluster = FakeCluster(node)
    monkeypatch.setattr(driver, "make_executor", lambda *a, **k: cluster)
    summary = driver.run_search(settings(workdir, trials=2, workers=1), progress=False)
    assert summary.finished == 2 and summary.table_measured_on == "fake-node"
    fp = target_fp
    assert cluster.pinned == [("_ensure_table_task", driver.hardware_resource(fp), fp.threads)]
    assert local.is_file() and summary.table == str(local)
    got, sent = LatencyTable.load(local, expect=fp), LatencyTable.load(node_table, expect=fp)
    assert local_only.id not in sent.entries  # merged under the lock, never replaced: the local-only entry stays
    assert got.entries[local_only.id]["median_ms"] == 1.25
    assert {k: v for k, v in got.entries.items() if k != local_only.id} == sent.entries
    assert got.calibration == sent.calibration
    assert table_complete(SearchSpace.load(str(workdir / "space.yaml")), fp, got)
    # Complete here: nothing is sent to the node again, except the speed probe, which runs on the node too.
    driver.run_search(settings(workdir, trials=3, workers=1, probe=True), progress=False)
    assert cluster.pinned[1:] == [("_probe_task", driver.hardware_resource(fp), fp.threads)]
    assert LatencyTable.load(node_table, expect=fp).probes  # recorded where it was measured


def local_only_entry(node_table, local_path):
    """Write a table at ``local_path`` holding one block no table of the space has; returns its key."""
    import dataclasses

    from hilonas.latency.table import LatencyTable

    key = dataclasses.replace(node_table.key_of(sorted(node_table.entries)[0]), h=97, w=97)
    assert key.id not in node_table.entries
    table = LatencyTable(local_path, node_table.fingerprint)
    table.add(key, {"median_ms": 1.25})
    table.save()
    return key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def drop_entries(path, n):
    """Remove ``n`` entries from a table file, so a search must measure them."""
    doc = json.loads(path.read_text())
    for kid in sorted(doc["entries"])[:n]:
        del doc["entries"][kid]
    path.write_text(json.dumps(doc))


def start_node(args, env, log):
    """``ray start ARGS --block`` in its own process group, returned once the node is up (its processes are that
    group: the test ends them by the group's id, never with ``ray stop``, which would stop every Ray here)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([RAY, "start", *args, "--block", "--num-cpus", "1", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while "will now block" not in Path(log).read_text():
        assert proc.poll() is None and time.time() < deadline, Path(log).read_text()[-3000:]
        time.sleep(0.25)
    return proc


def stop_node(proc):
    """End a test node: SIGKILL to its process group (a test node keeps nothing worth a graceful drain, which
    waits up to 30 s)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=30)


def refused(address, env):
    """True when a driver with ``env`` cannot join the cluster at ``address`` (Ray retries a refused token once a
    second, 20 times by default: 3 here)."""
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False); print('joined')"
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_NUM_REDIS_GET_RETRIES": "3"},
                          capture_output=True, text=True, timeout=120)
    return proc.returncode != 0 and "joined" not in proc.stdout


@pytest.mark.slow
def test_search_on_two_node_cluster(workdir, settings, target_fp, monkeypatch, tmp_path):
    import ray

    from hilonas.search.driver import hardware_resource, run_search

    resource = hardware_resource(target_fp)
    table = next((workdir / "latency_tables").glob("*.json"))
    drop_entries(table, 2)  # two blocks to measure, on the node with the resource
    token = secrets.token_hex(32)  # one token for the nodes and the driver, in the environment only
    home = tmp_path / "home"  # the nodes' home: where Ray would keep a token file (~/.ray/auth_token)
    home.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "HOME": str(home)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    nodes = []
    try:
        # No --node-ip-address: Ray would turn 127.0.0.1 into this machine's address anyway (a node of a cluster
        # must be reachable from the others); the head prints the address to join, as a user would copy it.
        nodes.append(start_node(["--head", "--port", str(free_port()), "--include-dashboard", "false"], env,
                                tmp_path / "head.log"))
        address = re.search(r"ray start --address='([^']+)'", (tmp_path / "head.log").read_text()).group(1)
        nodes.append(start_node(["--address", address, "--resources", json.dumps({resource: 1})], env,
                                tmp_path / "node.log"))
        # The driver is this process, given the token the same way: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        try:
            # RayExecutor joins (and leaves the cluster running, and this process connected, afterwards).
            summary = run_search(settings(workdir, study="c", trials=3, workers=2, ray_address=address),
                                 progress=False)
            alive = [n for n in ray.nodes() if n["Alive"]]
        finally:
            ray.shutdown()
        assert len(alive) == 2
        hw_node = next(n["NodeID"] for n in alive if resource in n["Resources"])
        assert summary.finished == 3
        assert summary.table_measured_on == hw_node  # the blocks were measured on the node with the resource
        assert len(json.loads(table.read_text())["entries"]) > 0
        assert refused(address, {**env, "RAY_AUTH_TOKEN": "0" * 64})  # another token is turned away
        assert not list(home.rglob("*auth_token*"))  # the token stayed in the environment
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
