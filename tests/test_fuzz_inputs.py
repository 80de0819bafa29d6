"""Fuzzing the boundary: whatever a user hands hilonas ends in exit 0 or in one line and exit status 2.

Bad architecture YAML (binary bytes, non-finite numbers, wrong types, nested lists, huge and negative numbers, missing
keys), bad search spaces, corrupt latency tables and bad option values go through ``hilonas.cli.main(argv)`` in this
process. Every case must exit 0, or exit 2 with exactly one ``error: ...`` line on stderr (or click's usage error for a
value that is not even a number); any other exception fails the test with the example that raised it. A refused case
must leave no file behind (no temporary file, no study folder).

Only cheap paths run: ``space show``, ``flops`` (no ``--time``) on tiny networks, ``hardware --tables``, and the
refusals of the heavy commands (their bad values are always bad, so nothing trains, times or starts Ray).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hilonas.cli import main

from .shared import TINY_SPACE

# The same examples in every run; no deadline (the first call imports torch).
FUZZ = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}

TINY_ARCH = {"img_size": 32, "num_classes": 10,
             "stages": [{"depth": 1, "dim": 8, "mixer": "none"},
                        {"depth": 1, "dim": 16, "heads": 2, "mixer": "hilo", "alpha": 0.5, "window": 2}]}
GLOBALS = ("img_size", "patch_size", "in_chans", "num_classes", "merge", "qkv_bias", "drop_path_rate", "pad")
STAGE_KEYS = ("depth", "dim", "heads", "mlp_ratio", "mixer", "alpha", "window")


# ------------------------------------------------------------------------------------------------ running
def run(*argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``hilonas ARGV`` in this process; any exception but SystemExit escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(result: tuple[int, str, str]) -> None:
    """Exit 0, or exit 2 with one ``error:`` line (or click's usage error); never a traceback."""
    code, _, err = result
    assert "Traceback" not in err, err
    if code == 0:
        return
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[0].startswith("error: "):
        assert len(lines) == 1, err
    else:  # a value click itself refuses (not a number, an option without its value): its short usage message
        assert any(word in err for word in ("Usage:", "Invalid value", "No such option", "requires an argument")), err


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextlib.contextmanager
def scratch():
    """A fresh folder that is also the working directory (so default outputs like runs/ land in it)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


def assert_nothing_left(root: Path, before: set[str], code: int) -> None:
    """A refused command creates nothing; no command leaves a temporary file."""
    after = files_under(root)
    assert not [f for f in after if f.endswith(".tmp") or Path(f).name.startswith(".")], after
    if code != 0:
        assert after == before, sorted(after - before)


# ------------------------------------------------------------------------------------------------ bad values
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
HUGE = st.one_of(st.integers(min_value=2**21, max_value=2**80), st.floats(min_value=2e6, allow_nan=False))
NEGATIVE = st.one_of(st.integers(min_value=-(2**70), max_value=-1), st.floats(max_value=-1e-9, allow_nan=False))
WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
BAD_SCALAR = st.one_of(NON_FINITE, HUGE, NEGATIVE, st.just(0), WORDS, st.none(), st.booleans())
BAD_VALUE = st.one_of(
    BAD_SCALAR,
    st.lists(BAD_SCALAR, max_size=3),
    st.lists(st.lists(st.integers(1, 64), min_size=1, max_size=2), min_size=1, max_size=2),  # nested lists
    st.dictionaries(WORDS, BAD_SCALAR, max_size=2),
)


@st.composite
def bad_arch_docs(draw):
    """TINY_ARCH with one to three fields broken (bad values, missing keys, unknown keys, wrong shapes)."""
    doc = copy.deepcopy(TINY_ARCH)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["global", "stage", "drop_stage_key", "drop", "extra", "stages", "stage_shape"]))
        stage = doc["stages"][draw(st.integers(0, 1))] if isinstance(doc.get("stages"), list) and \
            len(doc["stages"]) == 2 and isinstance(doc["stages"][0], dict) and isinstance(doc["stages"][1], dict) \
            else None
        if how == "global":
            doc[draw(st.sampled_from(GLOBALS))] = draw(BAD_VALUE)
        elif how == "stage" and stage is not None:
            stage[draw(st.sampled_from(STAGE_KEYS))] = draw(BAD_VALUE)
        elif how == "drop_stage_key" and stage is not None:
            stage.pop(draw(st.sampled_from(["depth", "dim"])), None)
        elif how == "drop":
            doc.pop(draw(st.sampled_from(["stages", "img_size"])), None)
        elif how == "extra":
            doc[draw(st.one_of(WORDS, st.integers()))] = draw(BAD_VALUE)
        elif how == "stages":
            doc["stages"] = draw(BAD_VALUE)
        elif how == "stage_shape" and isinstance(doc.get("stages"), list) and doc["stages"]:
            doc["stages"][0] = draw(BAD_VALUE)
    return {"arch": doc} if draw(st.booleans()) else doc


@st.composite
def bad_space_docs(draw):
    """TINY_SPACE with one to three fields broken: bad choices (nested lists, non-finite, huge), bad fixed fields,
    unknown keys, bad references."""
    doc = copy.deepcopy(TINY_SPACE)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["choice", "choices", "fixed", "top", "stages", "reference", "drop"]))
        stage = doc["stages"][draw(st.integers(0, 1))] if isinstance(doc.get("stages"), list) and \
            len(doc["stages"]) == 2 and all(isinstance(s, dict) for s in doc["stages"]) else None
        if how == "choice" and stage is not None:
            stage[draw(st.sampled_from(STAGE_KEYS))] = draw(BAD_VALUE)
        elif how == "choices" and stage is not None:  # a good choice next to a bad one
            key = draw(st.sampled_from(STAGE_KEYS))
            good = stage.get(key, 1)
            stage[key] = [good[0] if isinstance(good, list) else good, draw(BAD_VALUE)]
        elif how == "fixed":
            if not isinstance(doc.get("fixed"), dict):
                doc["fixed"] = {}
            doc["fixed"][draw(st.sampled_from(GLOBALS))] = draw(BAD_VALUE)
        elif how == "top":
            doc[draw(st.sampled_from(["name", "description", "fixed", "references", "bogus"]))] = draw(BAD_VALUE)
        elif how == "stages":
            doc["stages"] = draw(BAD_VALUE)
        elif how == "reference":
            doc["references"] = {"ref": draw(st.one_of(BAD_VALUE, bad_arch_docs()))}
        elif how == "drop":
            doc.pop(draw(st.sampled_from(["stages", "fixed", "name"])), None)
    return doc


def dump(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


RAW_FILES = st.one_of(st.binary(max_size=200), WORDS.map(str.encode),
                      st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      st.sampled_from([b"", b"- 1\n- 2\n", b"[[[[[[[[", b"{a: 1", b"\xff\xfe\x00b\x00", b"\x00\x01",
                                       b"!!python/object:os.system {}", b"stages: !!binary aGVsbG8=", b"a: 1\na: 2\n",
                                       b"[" * 200 + b"]" * 200, b"a: &x [*x]"]))


# ------------------------------------------------------------------------------------------------ configs and spaces
@settings(max_examples=150, **FUZZ)
@given(bad_arch_docs())
def test_fuzz_architecture_yaml(doc):
    """``flops FILE`` on broken architectures: one line naming the problem, or (still valid) FLOPs printed."""
    with scratch() as root:
        path = root / "arch.yaml"
        path.write_text(dump(doc), encoding="utf-8")
        assert_clean_exit(run("flops", str(path)))


@settings(max_examples=60, **FUZZ)
@given(RAW_FILES, st.sampled_from([("flops",), ("space", "show"), ("train",)]))
def test_fuzz_raw_files_as_config_or_space(data, command):
    """Binary files, stray text and broken YAML given where a config or a space is expected. ``train`` refuses before
    it trains: none of these is a valid architecture."""
    with scratch() as root:
        path = root / "input.yaml"
        path.write_bytes(data)
        before = files_under(root)
        result = run(*command, str(path))
        assert_clean_exit(result)
        if command == ("train",):
            assert result[0] == 2
        assert_nothing_left(root, before, result[0])


@settings(max_examples=150, **FUZZ)
@given(bad_space_docs())
def test_fuzz_space_yaml(doc):
    """``space show FILE`` on broken spaces."""
    with scratch() as root:
        path = root / "space.yaml"
        path.write_text(dump(doc), encoding="utf-8")
        assert_clean_exit(run("space", "show", str(path), "--blocks"))


@settings(max_examples=25, **FUZZ)
@given(st.one_of(bad_space_docs().map(dump).map(str.encode), RAW_FILES))
def test_fuzz_search_space_refused_before_the_study(data):
    """``search --space FILE --resume``: a broken space is refused, a valid one by --resume (no such study); either
    way before any study folder or database exists (and long before Ray)."""
    with scratch() as root:
        path = root / "space.yaml"
        path.write_bytes(data)
        result = run("search", "--space", str(path), "--resume", "--runs", str(root / "runs"),
                     "--tables", str(root / "tables"), "--no-progress", "--no-probe")
        assert_clean_exit(result)
        assert result[0] == 2 and not (root / "runs").exists() and not (root / "tables").exists()


# ------------------------------------------------------------------------------------------------ latency tables
def _valid_table() -> dict:
    """A one-entry table for this machine's default fingerprint (what ``hardware`` matches), as JSON data."""
    from hilonas.latency.fingerprint import current_fingerprint
    from hilonas.latency.keys import BlockKey

    fp = current_fingerprint("cpu", threads=1, batch=1, resolution=224)
    key = BlockKey("block", 8, 8, 8, hidden=16, mixer="none")
    entry = {"key": key.to_dict(), "median_ms": 0.5, "min_ms": 0.4, "spread": 0.01, "runs": 4, "noisy": False,
             "measured_at": "2026-01-01T00:00:00"}
    return {"schema": "hilonas.latency_table", "schema_version": 1, "fingerprint_id": fp.id,
            "fingerprint": fp.to_dict(), "settings": {"statistic": "min"},
            "calibration": {"method": "linear", "scale": 1.0, "intercept_ms": 0.0},
            "entries": {key.id: entry}, "probes": [{"factor": 1.1, "taken_at": "2026-01-02T00:00"}],
            "machine": {"cpu_model": "x"}}


TABLE_PATHS = [(), ("schema",), ("schema_version",), ("fingerprint",), ("fingerprint", "threads"),
               ("fingerprint", "device_name"), ("settings",), ("settings", "statistic"), ("calibration",),
               ("calibration", "scale"), ("entries",), ("entries", "*"), ("entries", "*", "median_ms"),
               ("entries", "*", "min_ms"), ("entries", "*", "key"), ("entries", "*", "key", "dim"),
               ("probes",), ("probes", 0), ("probes", 0, "factor"), ("machine",), ("machine", "cpu_model")]


@st.composite
def bad_tables(draw) -> bytes:
    """A table file broken one way: a field set to a bad value or removed, truncated JSON, or raw bytes."""
    how = draw(st.sampled_from(["set", "set", "set", "drop", "truncate", "bytes"]))
    if how == "bytes":
        return draw(RAW_FILES)
    doc = _valid_table()
    if how == "truncate":
        text = json.dumps(doc)
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    path = draw(st.sampled_from(TABLE_PATHS[1:]))
    parent = doc
    for part in path[:-1]:
        parent = parent[next(iter(parent))] if part == "*" else parent[part]
    last = next(iter(parent)) if path[-1] == "*" else path[-1]
    if how == "drop" and isinstance(parent, dict):
        parent.pop(last, None)
    else:
        parent[last] = draw(BAD_VALUE)
    return json.dumps(doc).encode()  # NaN and Infinity become JSON's non-standard tokens, which json.loads reads


@settings(max_examples=100, **FUZZ)
@given(st.lists(bad_tables(), min_size=1, max_size=3), st.booleans(), st.booleans())
def test_fuzz_latency_tables(files, folder_named_json, as_json):
    """``hardware --tables DIR`` with corrupt tables beside each other (and a folder, a named pipe and JSON nested
    past Python's recursion limit, all named like tables): it lists each as unusable or matching, never fails (nor
    blocks on the pipe)."""
    with scratch() as root:
        tables = root / "tables"
        tables.mkdir()
        for i, data in enumerate(files):
            (tables / f"t{i}.json").write_bytes(data)
        if folder_named_json:
            (tables / "folder.json").mkdir()
            os.mkfifo(tables / "pipe.json")
            (tables / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        before = files_under(root)
        result = run("hardware", "--tables", str(tables), *(["--json"] if as_json else []))
        assert_clean_exit(result)
        assert files_under(root) == before  # hardware only reads


# ------------------------------------------------------------------------------------------------ option values
CPUS = os.cpu_count() or 1
THREADS = [("flops", "litv2_s", "--time"), ("train", "litv2_s"), ("hardware",), ("latency", "build"),
           ("latency", "validate"), ("bench", "attention"), ("bench", "proxy"), ("bench", "latency")]
SEEDS = [("train", "litv2_s"), ("search",), ("latency", "validate"), ("bench", "proxy"), ("bench", "search")]
COUNTS = {("search",): ("--trials", "--workers", "--steps", "--batch-size", "--resolution"),
          ("latency", "validate"): ("--n", "--batch", "--resolution"),
          ("latency", "build"): ("--repeats", "--rounds", "--batch", "--resolution"),
          ("train", "litv2_s"): ("--resolution", "--batch-size"),
          ("bench", "attention"): ("--batch", "--tokens", "--dim", "--heads", "--hilo-window", "--sr-ratio",
                                   "--local-window", "--repeats"),
          ("bench", "proxy"): ("--n", "--workers", "--reference-seeds", "--resolution"),
          ("bench", "search"): ("--trials", "--steps"), ("bench", "latency"): ("--archs", "--measure", "--batch"),
          ("hardware",): ("--batch", "--resolution")}
# option -> its valid range's bad edge: every drawn value is outside the range, so nothing heavy ever runs.
NUMBERS = {("train", "litv2_s"): ("--epochs", "--lr"), ("search",): ("--epochs", "--max-latency-ms"),
           ("export", "nostudy"): ("--epochs", "--max-latency-ms"),
           ("bench", "proxy"): ("--epochs", "--reference-factor"), ("bench", "attention"): ("--alpha",)}
BAD_NUMBERS = {"--alpha": ["-0.5", "1.5", "2"], "--lr": ["-0.5", "0", "11", "1e300"],  # alpha in [0, 1]; lr <= 10
               "--epochs": ["-0.5", "0", "-1e300", "1e300", "100001"]}  # epochs <= 100000; the others must be > 0
NOT_A_NUMBER = st.text(alphabet="abcxyz .,:+", min_size=1, max_size=6)  # no digit: never parses as a number


def _bad_option(draw) -> tuple[tuple[str, ...], str, str]:
    """(command, option, value) where the value is always refused: nothing heavy ever runs."""
    kind = draw(st.sampled_from(["threads", "seed", "count", "number"]))
    if kind == "threads":
        value = draw(st.one_of(st.integers(-(2**40), 0), st.integers(CPUS + 1, 2**40)))
        return draw(st.sampled_from(THREADS)), "--threads", str(value)
    if kind == "seed":
        value = draw(st.one_of(st.integers(-(2**70), -1), st.integers(2**32, 2**70)))
        return draw(st.sampled_from(SEEDS)), "--seed", str(value)
    if kind == "count":
        command = draw(st.sampled_from(sorted(COUNTS)))
        value = draw(st.one_of(st.integers(-(2**40), 0).map(str), NOT_A_NUMBER))
        return command, draw(st.sampled_from(COUNTS[command])), value
    command = draw(st.sampled_from(sorted(NUMBERS)))
    option = draw(st.sampled_from(NUMBERS[command]))
    edge = BAD_NUMBERS.get(option, ["-0.5", "0", "-1e300"])
    value = draw(st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", *edge]), NOT_A_NUMBER))
    return command, option, value


@settings(max_examples=150, **FUZZ)
@given(st.data())
def test_fuzz_option_values_refused_before_anything(data):
    """Thread counts outside 1..CPUs, seeds outside [0, 2**32), counts below 1, non-finite or negative numbers:
    refused while the command line is parsed, before anything is loaded or written."""
    command, option, value = _bad_option(data.draw)
    with scratch() as root:
        before = files_under(root)
        result = run(*command, option, value, "--runs" if command == ("search",) else "--json", *(
            [str(root / "runs")] if command == ("search",) else []))
        assert_clean_exit(result)
        assert result[0] == 2, result
        assert_nothing_left(root, before, result[0])


FILE_OUTPUTS = [("latency", "validate", "--csv"), ("results", "nostudy", "--csv"), ("results", "nostudy", "--parquet"),
                ("pareto", "nostudy", "--out"), ("pareto", "nostudy", "--png"), ("bench", "proxy", "--log")]
FOLDER_OUTPUTS = [("train", "litv2_s", "--out"), ("export", "nostudy", "--out")]


@settings(max_examples=40, **FUZZ)
@given(st.sampled_from(FILE_OUTPUTS + FOLDER_OUTPUTS),
       st.sampled_from(["folder", "under_file", "file", "pipe", "loop", "too_long"]))
def test_fuzz_output_paths(target, kind):
    """A folder where a file is written, a file where a folder is, a path under a file, a named pipe, a symlink loop
    or a name too long for the file system: one line, nothing written. (A file where a file is written is allowed:
    it is replaced.)"""
    *command, option = target
    with scratch() as root:
        (root / "taken").mkdir()
        (root / "file.txt").write_text("keep me\n")
        os.mkfifo(root / "pipe")
        os.symlink(root / "loop2", root / "loop")
        os.symlink(root / "loop", root / "loop2")
        path = {"folder": root / "taken", "under_file": root / "file.txt" / "x", "file": root / "file.txt",
                "pipe": root / "pipe", "loop": root / "loop", "too_long": root / ("n" * 300)}[kind]
        if kind == "file" and target in FILE_OUTPUTS:  # a file may be replaced: put it under a file instead
            path = root / "file.txt" / "y.csv"
        if kind == "folder" and target in FOLDER_OUTPUTS:  # an empty folder is a fine output folder: use a file
            path = root / "file.txt"
        before = files_under(root)
        result = run(*command, option, str(path))
        assert_clean_exit(result)
        assert result[0] == 2, result
        assert_nothing_left(root, before, result[0])
        assert (root / "file.txt").read_text() == "keep me\n"
