"""Shared pieces of the search tests: a tiny space at 32 px and its latency table, measured once per session.

The table is built once (fast timing: it is a fixture, not a measurement anyone reads) and copied into every test's
own ``latency_tables/``, so ``ensure_table`` finds it complete and the searches measure nothing.
"""
import shutil

import pytest
import yaml

from ..shared import FAST, TINY_SPACE

FAST_BUDGET = {"steps": 3, "batch_size": 16}
# Timing settings of the session's table: one quick pass per block, three calibration networks.
FAST_TIMING = {k: v for k, v in FAST.items() if k != "group"}
FAST_CALIB_NETWORKS = 3


def tiny_fingerprint():
    """The target every search test uses (run_search's defaults: cpu, 1 thread, batch 1, the space's 32 px)."""
    from hilonas.latency.fingerprint import current_fingerprint

    return current_fingerprint("cpu", threads=1, batch=1, resolution=TINY_SPACE["fixed"]["img_size"])


def write_space(folder):
    (folder / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    return folder / "space.yaml"


@pytest.fixture(scope="session")
def fast_table(tmp_path_factory):
    """Path of the tiny space's complete latency table on this CPU, built once per session with fast timing."""
    from hilonas.latency.build import build_table
    from hilonas.latency.table import table_path
    from hilonas.spaces import SearchSpace

    folder = tmp_path_factory.mktemp("fast_table")
    space = SearchSpace.load(str(write_space(folder)))
    fp = tiny_fingerprint()
    build_table(space, fp, tables_dir=folder / "latency_tables", calib_networks=FAST_CALIB_NETWORKS,
                progress=False, **FAST_TIMING)
    path = table_path(fp, folder / "latency_tables")
    assert path.is_file()
    return path


def copy_table(fast_table, workdir):
    """Put the session's table into ``workdir/latency_tables/``; returns the copy's path."""
    dest = workdir / "latency_tables" / fast_table.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fast_table, dest)
    return dest


@pytest.fixture(scope="session")
def target_fp():
    """The fingerprint of the search tests' target (see :func:`tiny_fingerprint`)."""
    return tiny_fingerprint()


@pytest.fixture
def put_table(fast_table):
    """put_table(folder) -> copies the session's table into ``folder/latency_tables/`` and returns the copy."""
    return lambda folder: copy_table(fast_table, folder)


@pytest.fixture
def workdir(tmp_path, monkeypatch, fast_table):
    """A folder with the tiny space and its complete latency table; runs/ is created inside it."""
    write_space(tmp_path)
    copy_table(fast_table, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def settings():
    """settings(workdir, **overrides) -> SearchSettings for the tiny space, fast budget, random sampler."""
    return make_settings


def make_settings(workdir, **kw):
    from hilonas.search.driver import SearchSettings

    base = dict(space=str(workdir / "space.yaml"), trials=4, workers=2, study="t", budget=dict(FAST_BUDGET),
                resolution=16, tables_dir=str(workdir / "latency_tables"), runs_dir=str(workdir / "runs"),
                sampler="random",
                # The session table is timed for speed, not accuracy: its probe factor is noise, so tests that
                # compare predictions across runs go without; tests of the probe ask for it.
                probe=False)
    base.update(kw)
    return SearchSettings(**base)


@pytest.fixture(scope="module")
def export_study(tmp_path_factory, fast_table):
    """A folder holding a finished 4-trial study 'ex' of the tiny space (runs/ex/study.db) and its table."""
    from hilonas.search.driver import run_search

    workdir = tmp_path_factory.mktemp("export")
    write_space(workdir)
    copy_table(fast_table, workdir)
    run_search(make_settings(workdir, trials=4, workers=1, executor="local", study="ex"), progress=False)
    return workdir
