"""LatencyTable: round trip, refusals (other hardware, corrupt file), safe concurrent writers."""
import json
import multiprocessing as mp
import os

import pytest

from hilonas.errors import HilonasError
from hilonas.latency.keys import BlockKey
from hilonas.latency.table import SCHEMA_VERSION, LatencyTable, list_tables, table_path

from .conftest import fake_fp


def key(i: int) -> BlockKey:
    return BlockKey("block", 8 * (i + 1), 4, 4, hidden=16 * (i + 1), mixer="none")


def timing(ms: float) -> dict:
    return {"median_ms": ms, "spread": 0.02, "runs": 30, "noisy": False, "samples_ms": [ms * 0.95, ms, ms * 1.1]}


def test_round_trip(tmp_path):
    fp = fake_fp()
    table = LatencyTable.open(fp, tmp_path)
    assert table.path == table_path(fp, tmp_path) and not table.path.exists() and len(table) == 0
    table.add(key(0), timing(1.5), chain=3)
    table.add(key(1), timing(2.0))
    table.set_settings({"repeats": 30, "statistic": "median"})
    table.set_calibration({"method": "affine", "scale": 1.1, "intercept_ms": 0.2, "group_scale": {}})
    table.save()
    again = LatencyTable.open(fp, tmp_path)
    assert again.fingerprint == fp
    assert again.entries == table.entries and again.calibration == table.calibration
    assert again.settings == {"repeats": 30, "statistic": "median"}
    entry = again.entries[key(0).id]
    assert entry["median_ms"] == 1.5 and entry["min_ms"] == pytest.approx(1.425) and entry["chain"] == 3
    assert {"key", "spread", "runs", "noisy", "measured_at"} <= set(entry)
    assert again.latency_ms(key(0)) == 1.5  # statistic median
    data = json.loads(table.path.read_text())  # human-readable JSON with schema version and full fingerprint
    assert data["schema_version"] == SCHEMA_VERSION and data["fingerprint"] == fp.to_dict()
    assert data["fingerprint_id"] == fp.id
    assert again.missing([key(0), key(2), key(2), key(1)]) == [key(2)]
    mask = os.umask(0o022)
    os.umask(mask)
    assert table.path.stat().st_mode & 0o777 == 0o666 & ~mask  # as any file (mkstemp alone would make it private)


def test_statistic_min_reads_min_ms(tmp_path):
    table = LatencyTable.open(fake_fp(), tmp_path)
    table.add(key(0), timing(2.0))
    table.add(key(1), {"median_ms": 3.0})  # no samples: falls back to the median
    table.set_settings({"statistic": "min"})
    assert table.latency_ms(key(0)) == pytest.approx(1.9) and table.latency_ms(key(1)) == 3.0


def test_other_hardware_is_refused_unless_forced(tmp_path):
    fp = fake_fp()
    table = LatencyTable.open(fp, tmp_path)
    table.add(key(0), timing(1.0))
    table.save()
    other = fake_fp(threads=4, torch_version="9.9")
    with pytest.raises(HilonasError) as err:
        LatencyTable.load(table.path, expect=other)
    message = str(err.value)
    assert "threads" in message and "torch_version" in message and str(table.path) in message
    assert "--force" in message and "\n" not in message
    forced = LatencyTable.load(table.path, expect=other, force=True)
    assert forced.fingerprint == fp and len(forced) == 1  # the file's own fingerprint, honestly


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ("[]", "top level"),
    ('{"schema": "hilonas.latency_table", "schema_version": 99}', "schema_version"),
    (None, "median_ms"),
    (None, "holds the key"),
])
def test_corrupt_file_is_refused_with_its_path(tmp_path, text, needle):
    fp = fake_fp()
    table = LatencyTable.open(fp, tmp_path)
    table.add(key(0), timing(1.0))
    table.save()
    if text is None:
        data = json.loads(table.path.read_text())
        entry = data["entries"][key(0).id]
        if needle == "median_ms":
            entry["median_ms"] = "fast"
        else:
            data["entries"]["block:none:d1:f1:1x1"] = entry
        text = json.dumps(data)
    table.path.write_text(text)
    with pytest.raises(HilonasError) as err:
        LatencyTable.open(fp, tmp_path)
    assert str(table.path) in str(err.value) and needle in str(err.value) and "corrupt" in str(err.value)
    # Never rebuilt over: saving into a corrupt file is refused too and the file stays as it was.
    fresh = LatencyTable(table.path, fp)
    fresh.add(key(1), timing(1.0))
    with pytest.raises(HilonasError, match="corrupt"):
        fresh.save()
    assert table.path.read_text() == text


def _writer(tables_dir, fp_dict, start, barrier):
    from hilonas.latency.fingerprint import Fingerprint

    fp = Fingerprint.from_dict(fp_dict)
    barrier.wait()  # all eight start writing at the same moment
    for i in range(start, start + 5):  # each writer opens, adds and saves, five times over
        table = LatencyTable.open(fp, tables_dir)
        table.add(key(i), timing(1.0 + i))
        table.save()


def test_eight_processes_writing_at_once_lose_nothing(tmp_path):
    fp = fake_fp()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), fp.to_dict(), 5 * w, barrier)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    table = LatencyTable.open(fp, tmp_path)  # a valid file ...
    assert sorted(table.entries) == sorted(key(i).id for i in range(40))  # ... with every entry
    assert all(table.latency_ms(key(i)) == 1.0 + i for i in range(40))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # no temporary file left behind


def test_save_keeps_entries_others_wrote_and_own_changes_win(tmp_path):
    fp = fake_fp()
    a = LatencyTable.open(fp, tmp_path)
    b = LatencyTable.open(fp, tmp_path)
    a.add(key(0), timing(1.0))
    a.save()
    b.add(key(1), timing(2.0))
    b.set_calibration({"method": "scale", "scale": 1.2, "intercept_ms": 0.0})
    b.save()
    assert set(b.entries) == {key(0).id, key(1).id}
    a.add(key(0), timing(5.0))  # a re-measures its own entry; b's entry and calibration survive a's save
    a.save()
    final = LatencyTable.open(fp, tmp_path)
    assert final.latency_ms(key(0)) == 5.0 and final.latency_ms(key(1)) == 2.0
    assert final.calibration["scale"] == 1.2


def test_list_tables_reports_problems_without_raising(tmp_path):
    good = LatencyTable.open(fake_fp(), tmp_path)
    good.add(key(0), timing(1.0))
    good.save()
    (tmp_path / "broken.json").write_text("{")
    found = {p.name: (fp, problem) for p, fp, problem in list_tables(tmp_path)}
    assert found[good.path.name][0] == fake_fp() and found[good.path.name][1] == ""
    assert found["broken.json"][0] is None and "corrupt" in found["broken.json"][1]
    assert list_tables(tmp_path / "none") == []


def test_from_json_merges_a_table_built_elsewhere_into_the_file(tmp_path):
    """A table's text handed over (e.g. from a node that built it) is merged into the local file by save(): its
    entries, calibration and settings win, entries only the local file has are kept."""
    fp = fake_fp()
    remote = LatencyTable.open(fp, tmp_path / "remote")
    remote.add(key(0), timing(1.0))
    remote.add(key(1), timing(2.0))
    remote.set_settings({"repeats": 12, "statistic": "min"})
    remote.set_calibration({"method": "scale", "scale": 1.2, "intercept_ms": 0.0, "group_scale": {}})
    remote.save()
    text = remote.path.read_text()

    local = LatencyTable.open(fp, tmp_path / "local")
    local.add(key(1), timing(9.0))  # stale figure: the handed-over one wins
    local.add(key(2), timing(3.0))  # only here: kept
    local.set_settings({"repeats": 30})
    local.save()

    handed = LatencyTable.from_json(text, local.path, expect=fp)
    assert handed.path == local.path and handed.entries == remote.entries
    assert handed.calibration == remote.calibration and handed.settings == remote.settings
    handed.save()
    merged = LatencyTable.open(fp, tmp_path / "local")
    assert set(merged.entries) == {key(0).id, key(1).id, key(2).id}
    assert merged.entries[key(1).id] == remote.entries[key(1).id] and merged.entries[key(2).id]["median_ms"] == 3.0
    assert merged.calibration == remote.calibration and merged.settings == remote.settings
    assert merged.latency_ms(key(0)) == pytest.approx(0.95)  # settings came along: statistic min

    # Into a folder with no file yet: written as it came.
    fresh = LatencyTable.from_json(text, tmp_path / "new" / remote.path.name)
    fresh.save()
    assert LatencyTable.load(fresh.path).to_dict() == LatencyTable.load(remote.path).to_dict()


def test_from_json_refuses_what_load_refuses(tmp_path):
    fp = fake_fp()
    with pytest.raises(HilonasError, match="corrupt") as err:
        LatencyTable.from_json("{not json", tmp_path / "t.json")
    assert str(tmp_path / "t.json") in str(err.value)
    table = LatencyTable.open(fp, tmp_path)
    table.add(key(0), timing(1.0))
    table.save()
    other = fake_fp(threads=4)
    with pytest.raises(HilonasError, match="threads"):
        LatencyTable.from_json(table.path.read_text(), table.path, expect=other)
    # A table of other hardware is never merged into this file.
    alien = LatencyTable(tmp_path / "alien" / "a.json", other)
    alien.add(key(0), timing(1.0))
    alien.save()
    handed = LatencyTable.from_json(alien.path.read_text(), table.path)
    with pytest.raises(HilonasError, match="other hardware"):
        handed.save()
    assert LatencyTable.load(table.path).fingerprint == fp
