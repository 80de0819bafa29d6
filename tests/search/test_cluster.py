"""A real two-node Ray cluster on this machine: the search joins it and the latency work lands on the node that
declares the target's hardware resource."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_on_two_node_cluster(workdir):
    import ray

    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.search.driver import hardware_resource

    resource = hardware_resource(current_fingerprint("cpu", threads=1, batch=1, resolution=32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                       check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", "--address", address, "--resources", json.dumps({resource: 1}), *common],
                       check=True, env=env, capture_output=True, timeout=120)
        ray.init(address=address)
        try:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2
            hw_node = next(n["NodeID"] for n in nodes if resource in n["Resources"])
        finally:
            ray.shutdown()
        cmd = [sys.executable, "-m", "hilonas.cli", "search", "--space", str(workdir / "space.yaml"), "--study", "c",
               "--trials", "3", "--workers", "2", "--steps", "3", "--batch-size", "16", "--resolution", "16",
               "--sampler", "random", "--ray-address", address, "--no-progress", "--json",
               "--tables", str(workdir / "latency_tables"), "--runs", str(workdir / "runs")]
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        assert summary["finished"] == 3
        assert summary["table_measured_on"] == hw_node  # the blocks were measured on the node with the resource
        assert list((workdir / "latency_tables").glob("*.json")), "the driver keeps the table it got back"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
