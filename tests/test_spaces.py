"""SearchSpace: shipped spaces load (also from a wheel), rejections name the field, sampling uses suggest_* only."""
import random
import subprocess
import sys
import zipfile

import pytest
import yaml

from hilonas.config import ArchConfig
from hilonas.errors import ConfigError
from hilonas.latency.keys import arch_blocks
from hilonas.spaces import SearchSpace, packaged_spaces


class RecordingTrial:
    """Stands in for optuna.Trial: answers suggest_categorical at random and records every call."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.calls = []
        self.params = {}

    def suggest_categorical(self, name, choices):
        self.calls.append(("suggest_categorical", name, tuple(choices)))
        value = self.rng.choice(list(choices))
        self.params[name] = value
        return value

    def __getattr__(self, name):  # anything but suggest_* is a contract breach
        raise AssertionError(f"SearchSpace.sample used trial.{name}")


def test_shipped_spaces_load():
    names = set(packaged_spaces())
    assert {"litv2_tiny", "litv2"} <= names
    for name in names:
        space = SearchSpace.load(name)
        assert space.size() > 1000
        assert space.enumerate_blocks()


def test_sample_uses_only_suggest_and_round_trips_params():
    space = SearchSpace.load("litv2_tiny")
    seen = set()
    for seed in range(50):
        trial = RecordingTrial(seed)
        arch = space.sample(trial)
        assert isinstance(arch, ArchConfig)
        assert all(c[0] == "suggest_categorical" for c in trial.calls)
        assert len({c[1] for c in trial.calls}) == len(trial.calls)  # each parameter asked once
        assert space.from_params(trial.params) == arch
        seen.add(arch)
    assert len(seen) > 40


@pytest.mark.parametrize("name", ["litv2_tiny", "litv2"])
def test_enumerated_blocks_cover_every_sampled_arch(name):
    space = SearchSpace.load(name)
    keys = set(space.enumerate_blocks())
    for seed in range(150):
        arch = space.sample(RecordingTrial(seed))
        missing = set(arch_blocks(arch)) - keys
        assert not missing, f"{arch.describe()} runs blocks the space did not list: {missing}"


def test_enumerated_blocks_equal_union_over_all_archs_of_a_small_space(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"fixed": {"img_size": 32, "num_classes": 3}, "stages": [
        {"depth": [1, 2], "dim": [8, 16], "mixer": "none", "mlp_ratio": [2, 4]},
        {"depth": 1, "dim": [16, 32], "heads": [2, 4], "mixer": ["hilo", "msa"], "alpha": [0.5, 1.0],
         "window": [1, 2]},
    ]}))
    space = SearchSpace.load(path)
    union = set()
    for arch in space.iter_archs():
        union |= set(arch_blocks(arch))
    assert union == set(space.enumerate_blocks())


def test_references_are_parsed():
    space = SearchSpace.load("litv2")
    refs = dict(space.references)
    assert refs["litv2-s"].depths == (2, 2, 6, 2) and refs["litv2-s"].num_classes == 1000


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


OK_STAGE = "{depth: [1, 2], dim: [16, 32], heads: [2, 4], mixer: hilo, alpha: [0.5], window: [2]}"


@pytest.mark.parametrize("text, needles", [
    (f"stages: [{OK_STAGE}]\ncolour: red\n", ["unknown key 'colour'"]),
    ("stages: []\n", ["stages", "missing or empty"]),
    ("stages: [{depth: [], dim: 16}]\n", ["stages[0].depth has no choices"]),
    ("stages: [{depth: 1, dim: [16, 20], heads: [3]}]\n", ["stages[0].dim=16", "heads=3", "can never be valid"]),
    ("stages: [{depth: 1, dim: 16, size: 3}]\n", ["stages[0].size is not a stage field"]),
    ("stages: [{dim: 16}]\n", ["stages[0].depth is missing"]),
    ("stages: [{depth: 1, dim: 16, mixer: [hilo, flash]}]\n", ["stages[0].mixer choice 'flash'"]),
    ("stages: [{depth: 1, dim: 16, alpha: [0.5, 2]}]\n", ["stages[0].alpha=2.0", "[0, 1]"]),
    ("stages: [{depth: [1, 1], dim: 16}]\n", ["stages[0].depth=[1, 1] repeats"]),
    ("stages: [{depth: 1.5, dim: 16}]\n", ["stages[0].depth choice 1.5"]),
    ("fixed: {img_size: 0}\nstages: [{depth: 1, dim: 16}]\n", ["fixed", "img_size=0"]),
    ("fixed: {resolution: 224}\nstages: [{depth: 1, dim: 16}]\n", ["fixed.resolution"]),
    ("fixed: {img_size: 32, pad: false}\nstages: [{depth: 1, dim: 16, heads: 2, window: [2, 3]}]\n",
     ["stages[0].window=3", "pad"]),
    ("stages: [\n  {depth: 1\n", ["not valid YAML", "line"]),
    ("- 1\n- 2\n", ["mapping"]),
])
def test_load_rejections_name_the_field(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        SearchSpace.load(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_unknown_names_and_paths():
    with pytest.raises(ConfigError, match="space 'nope' is unknown.*litv2_tiny"):
        SearchSpace.load("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        SearchSpace.load("/no/such/space.yaml")


@pytest.mark.slow
def test_spaces_ship_in_the_wheel(tmp_path):
    import shutil

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    # Built from a clean copy of the sources: a stale build/ folder in the checkout would leak into the wheel.
    src = tmp_path / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "hilonas", "search_spaces"):
        copy = shutil.copytree if (repo / part).is_dir() else shutil.copy2
        copy(repo / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree
                                         else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hilonas-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hilonas/search_spaces/litv2_tiny.yaml" in names
    assert "hilonas/search_spaces/litv2.yaml" in names
    # Every module of the source tree is in the wheel (a new subpackage must be listed in pyproject.toml).
    sources = {str(p.relative_to(repo)) for p in (repo / "hilonas").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    # Installed from the wheel alone (no repo on the path), the shipped space loads.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hilonas.spaces as s; "
            "assert s.__file__.startswith(sys.argv[1]), s.__file__; "
            "print(s.SearchSpace.load('litv2_tiny').name)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], check=True, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "litv2_tiny"
