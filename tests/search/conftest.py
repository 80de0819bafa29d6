"""Shared pieces of the search tests: a tiny space at 32 px whose latency table builds in seconds."""
import pytest
import yaml

TINY_SPACE = {
    "name": "test_tiny",
    "fixed": {"img_size": 32, "patch_size": 4, "num_classes": 10},
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "mlp_ratio": 2, "mixer": "none"},
        {"depth": 1, "dim": [16, 32], "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5, "window": [1, 2]},
    ],
}
FAST_BUDGET = {"steps": 3, "batch_size": 16}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the tiny space; runs/ and latency_tables/ are created inside it."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
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
                sampler="random")
    base.update(kw)
    return SearchSettings(**base)


@pytest.fixture(scope="module")
def export_study(tmp_path_factory):
    """A folder holding a finished 4-trial study 'ex' of the tiny space (runs/ex/study.db) and its table."""
    from hilonas.search.driver import run_search

    workdir = tmp_path_factory.mktemp("export")
    (workdir / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    run_search(make_settings(workdir, trials=4, workers=1, executor="local", study="ex"), progress=False)
    return workdir
