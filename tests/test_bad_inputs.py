"""Every bad input a reviewer found (issue 14), one test each: one ``error:`` line naming the field, the value and the
fix, exit status 2, and no file created. The property-based side of the same promise is test_fuzz_inputs.py."""
import json
import os

import pytest
import yaml

from .shared import TINY_SPACE, assert_one_line_error
from .shared import run_cli as run

ARCH = "img_size: 32\nstages:\n  - {depth: 1, dim: 8, mixer: none}\n"
TOO_MANY_THREADS = str((os.cpu_count() or 1) + 1)


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize("command", [("flops",), ("train",), ("space", "show")])
@pytest.mark.parametrize("data", [b"\xff\xfe\x00b\x00a\x00d", bytes(range(256))])
def test_binary_file_as_config_or_space(capsys, tmp_path, command, data):
    path = write(tmp_path / "x.yaml", data)
    assert_one_line_error(run(capsys, *command, path), path, "not UTF-8 text", "binary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.yaml"]


def test_binary_space_for_search_refused_before_the_study(capsys, tmp_path):
    path = write(tmp_path / "s.yaml", b"\x89PNG\r\n\x1a\n\x00")
    assert_one_line_error(run(capsys, "search", "--space", path, "--runs", str(tmp_path / "runs"), "--tables",
                              str(tmp_path / "tables")), "space file", "not UTF-8 text")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tables").exists()


@pytest.mark.parametrize("command", [("flops",), ("space", "show")])
def test_folder_and_huge_file_as_config(capsys, tmp_path, command):
    assert_one_line_error(run(capsys, *command, str(tmp_path)), str(tmp_path), "is a folder")
    if os.path.exists("/dev/zero"):
        assert_one_line_error(run(capsys, *command, "/dev/zero"), "/dev/zero", "larger than")


@pytest.mark.parametrize("text, needle", [("just some words\n", "got str"), ("- 1\n- 2\n", "got list"),
                                          ("42\n", "got int"), ("{a: 1\n", "not valid YAML"),
                                          ("[" * 1200 + "]" * 1200, "nests too deeply")])
def test_text_that_is_not_a_yaml_mapping(capsys, tmp_path, text, needle):
    for command in (("flops",), ("space", "show")):
        assert_one_line_error(run(capsys, *command, write(tmp_path / "x.yaml", text)), "x.yaml", needle)


@pytest.mark.parametrize("line, needle", [("mlp_ratio: .inf", "mlp_ratio=inf"), ("alpha: .nan", "alpha=nan"),
                                          ("dim: 100000000000", "dim=100000000000 is larger than")])
def test_non_finite_and_huge_stage_values(capsys, tmp_path, line, needle):
    path = write(tmp_path / "a.yaml", f"img_size: 32\nstages:\n  - {{depth: 1, dim: 8, mixer: none, {line}}}\n"
                 .replace("dim: 8, mixer: none, dim:", "mixer: none, dim:"))
    assert_one_line_error(run(capsys, "flops", path), "stages[0].", needle)


@pytest.mark.parametrize("field, value", [("img_size", ".nan"), ("img_size", ".inf"), ("drop_path_rate", ".nan"),
                                          ("num_classes", "-.inf"), ("img_size", "1e400")])
def test_non_finite_global_values(capsys, tmp_path, field, value):
    path = write(tmp_path / "a.yaml", ARCH.replace("img_size: 32", f"img_size: 32\n{field}: {value}")
                 if field != "img_size" else ARCH.replace("32", value))
    assert_one_line_error(run(capsys, "flops", path), f"{field}=")


@pytest.mark.parametrize("stage, needle", [({"dim": [[64, 96]]}, "dim choice [64, 96] is not a single value"),
                                           ({"mlp_ratio": [".inf"]}, "mlp_ratio choice inf"),
                                           ({"alpha": [0.5, ".nan"]}, "alpha choice nan"),
                                           ({"mixer": [{"a": 1}]}, "mixer choice {'a': 1}")])
def test_bad_space_choices(capsys, tmp_path, stage, needle):
    space = json.loads(json.dumps(TINY_SPACE))
    space["stages"][1].update(stage)
    text = yaml.safe_dump(space).replace("'.inf'", ".inf").replace("'.nan'", ".nan")
    path = write(tmp_path / "s.yaml", text)
    assert_one_line_error(run(capsys, "space", "show", path), "stages[1].", needle)
    assert_one_line_error(run(capsys, "search", "--space", path, "--runs", str(tmp_path / "runs")), needle)
    assert not (tmp_path / "runs").exists()


def test_space_with_non_finite_fixed_field(capsys, tmp_path):
    path = write(tmp_path / "s.yaml", yaml.safe_dump({**TINY_SPACE, "fixed": {"img_size": float("nan")}}))
    assert_one_line_error(run(capsys, "space", "show", path), "img_size=nan")


SEEDED = [("train", "litv2_s"), ("search",), ("latency", "validate"), ("bench", "proxy"), ("bench", "search")]


@pytest.mark.parametrize("command", SEEDED)
@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_seed_out_of_range(capsys, tmp_path, monkeypatch, command, seed):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(capsys, *command, "--seed", seed, "--runs" if command == ("search",) else "--json",
                              *(["runs"] if command == ("search",) else [])), f"--seed={seed}", "0 to 4294967295")
    assert list(tmp_path.iterdir()) == []  # search refuses before the study folder exists


THREADED = [("flops", "litv2_s", "--time"), ("train", "litv2_s"), ("hardware",), ("latency", "build"),
            ("latency", "validate"), ("bench", "attention"), ("bench", "proxy"), ("bench", "latency")]


@pytest.mark.parametrize("command", THREADED)
@pytest.mark.parametrize("threads", ["0", "-3", TOO_MANY_THREADS, "100000"])
def test_threads_out_of_range(capsys, tmp_path, monkeypatch, command, threads):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(capsys, *command, "--threads", threads), f"--threads={threads}",
                          f"from 1 to {os.cpu_count() or 1}", "CPUs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (("search", "--executor", "BOGUS"), "--executor='BOGUS'"), (("search", "--trials", "0"), "--trials=0"),
    (("search", "--workers", "0"), "--workers=0"), (("search", "--steps", "-1"), "--steps=-1"),
    (("search", "--epochs", "nan"), "--epochs=nan"), (("search", "--max-latency-ms", "inf"), "--max-latency-ms=inf"),
    (("search", "--batch-size", "0"), "--batch-size=0"), (("latency", "validate", "--n", "0"), "--n=0"),
    (("latency", "build", "--repeats", "0"), "--repeats=0"), (("latency", "build", "--calib-networks", "-1"),
                                                              "--calib-networks=-1"),
    (("bench", "proxy", "--n", "-2"), "--n=-2"), (("bench", "search", "--trials", "0"), "--trials=0"),
    (("bench", "latency", "--archs", "0"), "--archs=0"), (("bench", "attention", "--alpha", "1.5"), "--alpha=1.5"),
    (("train", "litv2_s", "--epochs", "0"), "--epochs=0"), (("train", "litv2_s", "--lr", "nan"), "--lr=nan"),
    (("hardware", "--batch", "0"), "--batch=0"), (("export", "s", "--trial", "-1"), "--trial=-1"),
])
def test_counts_and_numbers_out_of_range(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    extra = ["--runs", "runs", "--tables", "tables"] if args[0] == "search" else []
    assert_one_line_error(run(capsys, *args, *extra), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("latency", "validate", "--csv"), ("results", "s", "--csv"),
                                  ("results", "s", "--parquet"), ("pareto", "s", "--out"), ("pareto", "s", "--png"),
                                  ("bench", "proxy", "--log")])
def test_file_output_that_is_a_folder(capsys, tmp_path, args):
    assert_one_line_error(run(capsys, *args, str(tmp_path)), args[-1], str(tmp_path), "is a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("train", "litv2_s", "--out"), ("export", "s", "--out")])
def test_folder_output_that_is_a_file(capsys, tmp_path, args):
    path = write(tmp_path / "f", "keep")
    assert_one_line_error(run(capsys, *args, path), "--out", path, "is a file")
    assert_one_line_error(run(capsys, *args, str(tmp_path / "f" / "sub")), "--out", "is a file, not a folder")
    assert (tmp_path / "f").read_text() == "keep"


def test_export_force_replaces_only_an_earlier_export(tmp_path):
    """``--force`` over a study folder (or anything but an export) is refused and nothing is deleted."""
    from hilonas.errors import HilonasError
    from hilonas.export import check_replaceable

    study = tmp_path / "runs" / "S"
    study.mkdir(parents=True)
    (study / "study.db").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(HilonasError, match=r"holds 'study.db', which no export writes.*--force replaces only"):
        check_replaceable(study)
    (study / "study.db").unlink()
    (study / "arch.yaml").write_text("stages: []\n")
    with pytest.raises(HilonasError, match="not an export"):
        check_replaceable(study)
    (study / "arch.yaml").write_text(yaml.safe_dump({"arch": {}, "provenance": {}}))
    check_replaceable(study)  # an earlier export: may be replaced
    (study / "weights.safetensors").write_bytes(b"x")
    check_replaceable(study)
    (study / "notes.txt").write_text("mine")
    with pytest.raises(HilonasError, match="notes.txt"):
        check_replaceable(study)
    assert sorted(p.name for p in study.iterdir()) == ["arch.yaml", "notes.txt", "weights.safetensors"]


def test_corrupt_latency_table_for_validate(capsys, tmp_path):
    for data in (b"\xff\x00garbage", b'{"schema": 1', b"[]"):
        path = write(tmp_path / "t.json", data)
        assert_one_line_error(run(capsys, "latency", "validate", "--space", "litv2_tiny", "--table", path,
                                  "--n", "1"), "latency table", path)


def test_corrupt_bench_log_is_refused_or_skipped(tmp_path):
    from hilonas.bench.proxy import _read_log
    from hilonas.errors import HilonasError

    log = tmp_path / "log.jsonl"
    log.write_text('1\n[2]\n{"setup": {}}\n{"setup": {}, "arch": 3}\n{"setup": {}, "arch": {"a": 1}}\nnot json\n')
    assert list(_read_log(log, {}).values()) == [{"setup": {}, "arch": {"a": 1}}]
    log.write_bytes(b"\xff\xfe")
    with pytest.raises(HilonasError, match="not UTF-8"):
        _read_log(log, {})


def test_table_key_with_unhashable_mixer(capsys, tmp_path):
    from .test_fuzz_inputs import _valid_table

    doc = _valid_table()
    next(iter(doc["entries"].values()))["key"]["mixer"] = ["none"]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    code, _, _ = run(capsys, "hardware", "--tables", str(tmp_path))
    assert code == 0
