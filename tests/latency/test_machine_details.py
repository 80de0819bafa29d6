"""Machine details: what tells hosts behind one fingerprint apart, kept with a table, shown by `hilonas hardware`."""
import json

import pytest

from hilonas.latency.fingerprint import KERNEL_FLAGS, current_fingerprint, details_diff, machine_details
from hilonas.latency.table import LatencyTable

from ..shared import run_cli
from .conftest import fake_fp

SHIPPED_ID = "cpu-amd-epyc-t1-b1-r224-69be5613"


def test_details_of_this_machine():
    details = machine_details("cpu")
    assert details["cpu_model"] and isinstance(details["cpu_model"], str)
    assert isinstance(details["cpu_flags"], list) and set(details["cpu_flags"]) <= set(KERNEL_FLAGS)
    assert details["logical_cpus"] >= 1
    assert all(v is not None for v in details.values())
    json.dumps(details)  # goes into a table file as it is
    assert details_diff(details, machine_details("cpu")) == []


def test_details_leave_the_fingerprint_id_alone():
    fp = current_fingerprint("cpu", threads=1, batch=1, resolution=224)
    assert "details" not in fp.to_dict() and "cpu_flags" not in fp.to_dict()
    if fp.device_name == "AMD EPYC" and fp.logical_cores == 2 and fp.torch_version == "2.14.1+cu130":
        assert fp.id == SHIPPED_ID  # the shipped table still matches the machine it was built on


def test_details_diff_names_what_differs():
    a = {"cpu_model": "AMD EPYC", "l3_cache": "32768K", "max_mhz": 3700, "cpu_flags": ["avx2", "avx512f"],
         "kernel": "6.1"}
    b = {"cpu_model": "AMD EPYC", "l3_cache": "16384K", "max_mhz": 2450, "cpu_flags": ["avx2"]}
    diff = details_diff(a, b)
    assert "l3 cache 32768K vs 16384K" in diff and "max MHz 3700 vs 2450" in diff
    assert "cpu flags avx2 avx512f vs avx2" in diff
    assert not any(d.startswith(("cpu model", "kernel")) for d in diff)  # equal, or known on one side only
    assert details_diff(a, None) == [] and details_diff(a, a) == []
    # the MHz /proc/cpuinfo reports counts only without a max MHz, and only beyond a small wobble
    assert details_diff({"cpu_mhz": 2596}, {"cpu_mhz": 2600}) == []
    assert details_diff({"cpu_mhz": 2596}, {"cpu_mhz": 2450}) == ["reported MHz 2596 vs 2450"]
    assert details_diff({"cpu_mhz": 2596, "max_mhz": 3000}, {"cpu_mhz": 2450, "max_mhz": 3000}) == []


def test_details_round_trip_and_old_tables_load(tmp_path):
    fp = fake_fp()
    table = LatencyTable.open(fp, tmp_path)
    table.save()
    assert "machine" not in json.loads(table.path.read_text())  # no details: the file format is as before
    assert LatencyTable.load(table.path).details == {}
    details = machine_details("cpu")
    table.set_details(details)
    table.save()
    assert json.loads(table.path.read_text())["machine"] == details
    other = LatencyTable.open(fp, tmp_path)
    other.set_settings({"warmup": 1})
    other.save()  # a writer that did not set details keeps the file's
    assert LatencyTable.load(table.path).details == details


def _table_with_details_and_probe(tmp_path, details):
    table = LatencyTable.open(current_fingerprint("cpu", threads=1, batch=1, resolution=32), tmp_path)
    table.set_details(details)
    if not hasattr(table, "add_probe"):
        pytest.skip("LatencyTable has no probe history yet")
    table.add_probe({"factor": 1.27, "spread": 0.02, "seconds": 3.1, "networks": 4,
                     "taken_at": "2026-11-22T18:01:05+0000"})
    table.save()
    return table


def test_hardware_shows_details_diff_and_last_probe(capsys, tmp_path):
    here = machine_details("cpu")
    _table_with_details_and_probe(tmp_path, {**here, "l3_cache": "1K"})
    args = ("hardware", "--tables", str(tmp_path), "--resolution", "32")
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["details"]["cpu_model"] == here["cpu_model"] and "cpu_flags" in data["details"]
    (table,) = data["tables"]
    assert table["probe"]["factor"] == 1.27
    want = [f"l3 cache {here['l3_cache']} vs 1K"] if "l3_cache" in here else []
    assert table["details_diff"] == want
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "last speed probe: 1.27x slower than the table, 2026-11-22T18:01" in out
    assert "cpu_flags" in out


def test_build_records_the_measuring_host(tmp_path, tiny_space, cpu_fp):
    from hilonas.latency.build import build_table

    from .conftest import FAST

    report = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, calib_networks=0, progress=False, **FAST)
    assert report.blocks_measured > 0
    saved = LatencyTable.load(report.path)
    assert saved.details["cpu_model"] == machine_details("cpu")["cpu_model"]
    assert details_diff(machine_details("cpu"), saved.details) == []
