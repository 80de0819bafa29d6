"""How the suite is scheduled. ``make test`` runs it in two parts: every test not marked ``serial`` on two
pytest-xdist workers, then the ``serial`` tests alone. ``serial_modules.txt`` is the one place that decides which is
which.

The workers take whole files (``--dist loadfile``), so a module's expensive fixture (the local Ray runtime, a
finished study, the fresh interpreters of the import-order checks) is built once, by one worker. (``xdist_group``
marks do nothing under pytest 9.2 with pytest-xdist 3.8: xdist renames ``item._nodeid``, which pytest no longer
reads, so the groups silently fell apart and each worker built such a fixture again.)"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Tests whose outcome depends on timing: they compare measured latencies, wait on leases and heartbeats, or kill
# processes at a moment. They run alone, after the parallel part. The list is a file so that `make test` can name
# these modules to pytest (collecting only them, not the whole suite, for the serial part).
SERIAL_MODULES = set(Path(__file__).with_name("serial_modules.txt").read_text().split())


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        try:
            where = item.path.relative_to(root).as_posix()
        except ValueError:
            continue
        if where in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
