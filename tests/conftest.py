"""How the suite is scheduled. ``make test`` runs it in two parts: every test not marked ``serial`` on two
pytest-xdist workers (``--dist loadgroup``), then the ``serial`` tests alone. The two lists below are the one place
that decides which is which."""
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Tests whose outcome depends on timing: they compare measured latencies, wait on leases and heartbeats, kill
# processes at a moment, or start a two-node Ray cluster. They run alone, after the parallel part.
SERIAL_MODULES = {
    "tests/latency/test_probe.py",
    "tests/search/test_reliability.py",
    "tests/search/test_speed_factor.py",
    "tests/search/test_cluster.py",
}
# Modules that share an expensive session fixture or a runtime: one worker runs each group, one test after another
# (the local Ray runtime; the finished study the export tests read).
GROUPS = {
    "tests/search/test_ray_search.py": "ray",
    "tests/search/test_export.py": "export",
    "tests/search/test_export_limit.py": "export",
}


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        try:
            where = item.path.relative_to(root).as_posix()
        except ValueError:
            continue
        if where in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        elif where in GROUPS:
            item.add_marker(pytest.mark.xdist_group(GROUPS[where]))
