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
    (("search", "--proxy", "NASWOT"), "--proxy='NASWOT'"),
    (("search", "--workers", "0"), "--workers=0"), (("search", "--steps", "-1"), "--steps=-1"),
    (("search", "--epochs", "nan"), "--epochs=nan"), (("search", "--max-latency-ms", "inf"), "--max-latency-ms=inf"),
    (("search", "--batch-size", "0"), "--batch-size=0"), (("latency", "validate", "--n", "0"), "--n=0"),
    (("latency", "build", "--repeats", "0"), "--repeats=0"), (("latency", "build", "--calib-networks", "-1"),
                                                              "--calib-networks=-1"),
    (("bench", "proxy", "--n", "-2"), "--n=-2"), (("bench", "search", "--trials", "0"), "--trials=0"),
    (("bench", "latency", "--archs", "0"), "--archs=0"), (("bench", "attention", "--alpha", "1.5"), "--alpha=1.5"),
    (("train", "litv2_s", "--epochs", "0"), "--epochs=0"), (("train", "litv2_s", "--lr", "nan"), "--lr=nan"),
    (("hardware", "--batch", "0"), "--batch=0"), (("export", "s", "--trial", "-1"), "--trial=-1"),
    (("train", "litv2_s", "--lr", "1e300"), "--lr=1e+300"),  # overflowed torch's float32 (traceback)
    (("prune", "x", "--sparsity", "0.5", "--lr", "11"), "--lr=11"),
    (("bench", "proxy", "--extra-epochs", "1e308"), "--extra-epochs='1e308'"),  # OverflowError traceback
    (("train", "litv2_s", "--epochs", "1e300"), "--epochs=1e+300"),  # trained forever
    (("search", "--epochs", "1e6"), "--epochs=1e+06"), (("export", "s", "--epochs", "1e6"), "--epochs=1e+06"),
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


# ---------------------------------------------------------------------------- found by a hostile-user pass (issue 14)
@pytest.fixture
def fifo(tmp_path):
    """A named pipe nobody writes to; a watchdog opens it for writing after 20 s, so a reader that blocks fails the
    test instead of hanging the suite."""
    import threading

    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    done = threading.Event()

    def unblock():
        if not done.wait(20):
            with open(path, "wb"):
                pass

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield str(path)
    done.set()


@pytest.mark.parametrize("command", [("flops",), ("space", "show"), ("train",)])
def test_named_pipe_as_config_or_space(capsys, fifo, command):
    """io.read_text opened a FIFO with a blocking open(): the command hung forever."""
    assert_one_line_error(run(capsys, *command, fifo), fifo, "named pipe")


@pytest.mark.parametrize("command", [("flops",), ("space", "show")])
def test_unusable_path_as_config_or_space(capsys, tmp_path, command):
    """Path.exists()/is_file() raise OSError for a name longer than the file system allows (traceback), and a
    symlink loop was reported as a missing file; both are now one line from read_text."""
    long = "a" * 5000 + ".yaml"
    assert_one_line_error(run(capsys, *command, long), long, "File name too long" if command == ("flops",) else
                          "does not exist")
    loop = tmp_path / "loop.yaml"
    os.symlink(tmp_path / "loop2.yaml", loop)
    os.symlink(loop, tmp_path / "loop2.yaml")
    assert_one_line_error(run(capsys, *command, str(loop)), str(loop), "symbolic links")


@pytest.mark.parametrize("args", [("results", "s", "--csv"), ("pareto", "s", "--out"), ("train", "litv2_s", "--out")])
def test_output_path_that_cannot_be_looked_at(capsys, tmp_path, args):
    """A name too long or a symlink loop as an output path: one line naming the option, before anything runs."""
    assert_one_line_error(run(capsys, *args, str(tmp_path / ("b" * 300))), args[-1], "File name too long")
    os.symlink(tmp_path / "l2", tmp_path / "l1")
    os.symlink(tmp_path / "l1", tmp_path / "l2")
    assert_one_line_error(run(capsys, *args, str(tmp_path / "l1")), args[-1], "symbolic links")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l1", "l2"]


@pytest.mark.parametrize("args", [("results", "s", "--csv"), ("pareto", "s", "--png"), ("latency", "validate", "--csv"),
                                  ("bench", "proxy", "--log")])
def test_output_file_that_is_a_device_or_pipe(capsys, tmp_path, args):
    """Writing renames a temporary file over the destination: given /dev/null (as root) that replaced the device
    itself. An existing output that is not a regular file is refused."""
    import stat

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert_one_line_error(run(capsys, *args, str(pipe)), args[-1], "not a regular file")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert_one_line_error(run(capsys, *args, "/dev/null"), "/dev/null", "not a regular file")


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    """``flops`` on a config within every field's limit (dim 65536, 4096 heads) asked torch for 48 GiB: the
    allocator's RuntimeError escaped as a traceback. Running out of memory is one line; other RuntimeErrors stay
    bugs."""
    import hilonas.models.flops as flops

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 51539607552 bytes. Error code 12")

    monkeypatch.setattr(flops, "flops_summary", no_memory)
    assert_one_line_error(run(capsys, "flops", "litv2_s"), "out of memory", "51539607552 bytes", "smaller")
    monkeypatch.setattr(flops, "flops_summary", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert_one_line_error(run(capsys, "flops", "litv2_s"), "out of memory")
    monkeypatch.setattr(flops, "flops_summary", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run(capsys, "flops", "litv2_s")


@pytest.mark.parametrize("body, needle", [
    ("img_size: 32\nstages:\n  - {depth: 1, dim: 65536, heads: 4096, mixer: msa}\n", "51.6 G parameters"),
    ("img_size: 8192\npatch_size: 1\nstages:\n  - {depth: 1, dim: 8, mlp_ratio: 8, mixer: none}\n",
     "8192x8192 tokens of width 64"),
    ("img_size: 8192\npatch_size: 1\nstages:\n  - {depth: 1, dim: 8, heads: 1, mixer: msa}\n",
     "attends over 8192x8192 tokens"),  # ran for minutes: full attention over 2**26 tokens
])
def test_architecture_too_large_to_build(capsys, tmp_path, body, needle):
    """Every field within its limit, the whole far beyond any machine: torch's allocator failed (48 GiB) with a
    traceback, or the forward ran for minutes. Refused by size in ArchConfig.validate, naming the fix."""
    path = write(tmp_path / "a.yaml", body)
    assert_one_line_error(run(capsys, "flops", path), needle, ": use ")


@pytest.mark.parametrize("command", [("results",), ("pareto",), ("export", "--knee")])
def test_study_name_too_long(capsys, tmp_path, command):
    """Path.is_file() raised OSError (name too long) in study lookup: a traceback for results, pareto and export."""
    name = "x" * 400
    assert_one_line_error(run(capsys, command[0], name, *command[1:], "--runs", str(tmp_path)), "not found")


def test_prune_export_with_a_provenance_that_is_not_a_mapping(capsys, tmp_path):
    """A hand-edited arch.yaml whose provenance is a string raised ValueError (dict('x')) in prune."""
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump({"arch": yaml.safe_load(ARCH), "provenance": "tampered"}))
    assert_one_line_error(run(capsys, "prune", str(tmp_path), "--sparsity", "0.5"), "weights.safetensors")


def test_local_executor_shutdown_waits_for_a_cancelled_evaluation():
    """``search --executor local --trial-timeout 1e-300``: every trial cancelled while its thread ran on in torch;
    the interpreter exited under it and the process aborted (SIGABRT, 'terminate called without an active
    exception'). shutdown() now waits a few seconds for such threads."""
    import threading
    import time

    from hilonas.search.executor_base import LocalExecutor

    ex = LocalExecutor()
    handle = ex.submit(time.sleep, 0.5)
    threading.Timer(0.05, ex.cancel, args=(handle,)).start()
    assert ex.wait([handle]) == [handle]
    assert any(t.is_alive() for t in ex._threads)
    ex.shutdown()
    assert not ex._threads


@pytest.mark.parametrize("command, text", [
    (("flops",), "img_size: 32\nimg_size: 64\nstages:\n  - {depth: 1, dim: 8, mixer: none}\n"),
    (("space", "show"), "stages:\n  - {depth: [1], dim: [8], mixer: none, dim: [16]}\n"),
])
def test_duplicate_yaml_keys(capsys, tmp_path, command, text):
    """PyYAML keeps the last of two equal keys without a word: a second ``img_size:`` silently changed the network."""
    key = "img_size" if command == ("flops",) else "dim"
    assert_one_line_error(run(capsys, *command, write(tmp_path / "x.yaml", text)), f"key '{key}' appears twice",
                          "line 2")


def test_tables_folder_with_a_pipe_and_deep_json(capsys, tmp_path, fifo):
    """A named pipe named like a table blocked ``hardware`` forever (plain read_text); JSON nested 100,000 deep raised
    RecursionError out of the table loader. Both are listed as unusable tables."""
    os.rename(fifo, tmp_path / "pipe.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    code, out, _ = run(capsys, "hardware", "--tables", str(tmp_path))
    assert code == 0 and "pipe.json: latency table" in out and "nests too deeply" in out


@pytest.mark.parametrize("args", [("search", "--tables"), ("latency", "build", "--tables"), ("hardware", "--tables"),
                                  ("studies", "--runs"), ("results", "s", "--runs"), ("search", "--runs")])
def test_tables_or_runs_folder_that_is_a_file(capsys, tmp_path, args):
    """``--tables FILE`` reached mkdir (FileExistsError traceback) after the study was opened; now refused while the
    command line is parsed, and nothing is created."""
    path = write(tmp_path / "f.yaml", "keep")
    assert_one_line_error(run(capsys, *args, path), args[-1], "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.yaml"]


@pytest.mark.parametrize("args, needle", [
    (("latency", "validate", "--n", "100000"), "--n=100000"),
    (("latency", "build", "--rounds", "99999999999999999999"), "--rounds=99999999999999999999"),
    (("latency", "build", "--batch", "100000"), "--batch=100000"),
    (("bench", "proxy", "--n", "100000"), "--n=100000"),
    (("search", "--trials", "1000001"), "--trials=1000001"),
])
def test_counts_too_large_to_ever_finish_are_refused(capsys, args, needle):
    """A count so large the run would never end (or a batch that exhausts memory) is one line, before any work."""
    assert_one_line_error(run(capsys, *args), needle, "out of range")
