"""The speed probe: probe networks span the table, the factor is the median ratio, it is recorded (bounded,
merged across writers), and a table measured on a faster machine is corrected by it."""
from __future__ import annotations

import copy
import json

import pytest

from hilonas.latency import probe as probe_mod
from hilonas.latency.build import build_table
from hilonas.latency.table import MAX_PROBES, LatencyTable
from hilonas.latency.timing import Timing
from hilonas.latency.validate import validate_table

from .conftest import FAST


def _timing(ms: float) -> Timing:
    return Timing(median_ms=ms, spread=0.0, runs=1, samples_ms=[ms], device="cpu", threads=1, noisy=False,
                  attempts=1)


def _table_with_networks(tmp_path, fp, measured: list[float]) -> LatencyTable:
    from hilonas.config import ArchConfig

    base = dict(depths=(1,), embed_dims=(8,), num_heads=(1,), mlp_ratios=(2.0,), mixers=("none",), alphas=(0.0,),
                window_sizes=(1,), img_size=32, num_classes=10)
    nets = [{"arch": ArchConfig(**{**base, "embed_dims": (8 * (i + 1),)}).to_dict(), "measured_ms": ms}
            for i, ms in enumerate(measured)]
    table = LatencyTable.open(fp, tmp_path)
    table.set_calibration({"method": "scale", "scale": 1.0, "intercept_ms": 0.0, "networks": nets})
    table.set_settings({k: v for k, v in FAST.items() if k != "group"})
    table.save()
    return table


def test_probe_networks_span_the_table(tmp_path, cpu_fp):
    table = _table_with_networks(tmp_path, cpu_fp, [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    picked = [ms for _, ms in probe_mod.probe_networks(table, 4)]
    assert picked[0] == 1.0 and picked[-1] == 9.0 and len(picked) == 4 and picked == sorted(picked)
    assert [ms for _, ms in probe_mod.probe_networks(table, 10)] == sorted([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    assert probe_mod.probe_speed(LatencyTable.open(cpu_fp, tmp_path / "empty")) is None  # nothing to probe with


def test_probe_blocks_stay_few_when_the_table_holds_many_groups(tmp_path, cpu_fp):
    """The mixers space's 100 blocks fall in 10 groups: at most MAX_PROBE_BLOCKS are re-timed, at least 2 a group
    (the fastest and the slowest of each), where a one-group table keeps DEFAULT_PROBE_BLOCKS."""
    from hilonas.latency.calibration import block_group
    from hilonas.spaces import SearchSpace

    table = LatencyTable.open(cpu_fp, tmp_path)
    keys = SearchSpace.load("mixers").enumerate_blocks()
    for i, key in enumerate(keys):
        table.add(key, _timing(0.1 + i))
    picked = probe_mod.probe_blocks(table)
    groups = {block_group(k) for k in keys}
    assert len(groups) == 10 and len(picked) <= probe_mod.MAX_PROBE_BLOCKS
    per_group = {g: [ms for k, ms in picked if block_group(k) == g] for g in groups}
    for g, got in per_group.items():
        stored = [table.latency_ms(k) for k in keys if block_group(k) == g]
        assert len(got) >= min(2, len(stored)) and min(got) == min(stored) and max(got) == max(stored), g
    # A probe for one space (or one network) re-times only its groups: here, as many as fit in the cap.
    chosen = probe_mod.probe_blocks(table, groups={"block:hat", "stem"})
    assert {block_group(k) for k, _ in chosen} == {"block:hat", "stem"}
    assert len([k for k, _ in chosen if block_group(k) == "block:hat"]) == probe_mod.DEFAULT_PROBE_BLOCKS
    assert probe_mod.space_groups(SearchSpace.load("litv2_tiny"), 224) == {"stem", "merge", "head", "block:none",
                                                                          "block:hilo"}
    one = LatencyTable.open(cpu_fp, tmp_path / "one")
    for i, key in enumerate(k for k in keys if block_group(k) == "block:hat"):
        one.add(key, _timing(0.1 + i))
    assert len(probe_mod.probe_blocks(one)) == probe_mod.DEFAULT_PROBE_BLOCKS


def test_factor_is_the_median_ratio_and_is_recorded(tmp_path, cpu_fp, monkeypatch):
    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    now = {8: 1.5, 16: 2.4, 24: 4.4}  # by width: ratios 1.5, 1.2, 1.1

    def fake_passes(archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield [_timing(now[a.embed_dims[0]]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)
    result = probe_mod.probe_speed(table, budget_s=5)
    assert result.factor == pytest.approx(1.2) and result.spread == pytest.approx(0.4)
    assert result.networks == 3 and result.ratios == pytest.approx((1.5, 1.2, 1.1))
    on_disk = json.loads(table.path.read_text())
    assert on_disk["probes"][-1]["factor"] == pytest.approx(1.2)
    # Bounded history, merged with what another process saved meanwhile.
    other = LatencyTable.load(table.path)
    for i in range(MAX_PROBES + 3):
        other.add_probe({"factor": 1.0 + i / 100, "taken_at": f"t{i}"})
    other.save()
    probe_mod.probe_speed(table, budget_s=5)
    history = LatencyTable.load(table.path).probes
    assert len(history) == MAX_PROBES and history[-1]["factor"] == pytest.approx(1.2)
    assert history[-2]["taken_at"] == f"t{MAX_PROBES + 2}"


def _table_of_20_passes(tmp_path, cpu_fp) -> tuple[LatencyTable, dict]:
    """A table that kept the fastest sample of 20 passes (statistic 'min') and medians 1.1x those; with its probe
    networks' stored fastest figures."""
    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    calibration = copy.deepcopy(table.calibration)
    for net in calibration["networks"]:
        net["median_ms"] = 1.1 * net["measured_ms"]
    table.set_calibration(calibration)
    table.set_settings({**table.settings, "rounds": 20, "statistic": "min"})
    table.save()
    return table, dict(probe_mod.probe_networks(table))


def _fake_passes(monkeypatch, stored: dict, samples: tuple[float, float, float], pause_s: float) -> None:
    """Every probe pass times each network at ``samples`` x its stored fastest figure (fastest, median, slowest),
    after ``pause_s`` (a budget of 0.25 s then ends a probe of 0.1-s passes after its 3 passes at least)."""
    import time

    fastest, median, slowest = samples

    def fake_passes(archs, fp, **settings):
        for _ in range(settings["rounds"]):
            time.sleep(pause_s)
            yield [Timing(median_ms=median * stored[a], spread=(slowest - fastest) / median, runs=3, device="cpu",
                          threads=1, noisy=False, attempts=1,
                          samples_ms=[fastest * stored[a], median * stored[a], slowest * stored[a]]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)


@pytest.mark.parametrize("passes", ["fewer than the table's", "as many as the table's"])
def test_a_probe_of_fewer_passes_compares_medians(tmp_path, cpu_fp, monkeypatch, passes):
    """The table keeps the fastest sample of 20 passes; the fastest of 3 is slower by chance, so a probe cut short
    by its budget compares each network's median with the median the table stored (here lower than its fastest
    sample less the bias of fewer passes), and a full probe the minimum."""
    table, stored = _table_of_20_passes(tmp_path, cpu_fp)
    few = passes.startswith("fewer")
    # now: minimum 1.3x the stored minimum, median 1.2x the stored median (1.32 / 1.1)
    _fake_passes(monkeypatch, stored, (1.3, 1.32, 1.4), 0.1 if few else 0.0)
    result = probe_mod.probe_speed(table, budget_s=0.25 if few else 30, blocks=0)
    assert (result.rounds < 20) == few
    assert result.factor == pytest.approx(1.2 if few else 1.3)


@pytest.mark.parametrize("passes", [3, 9, 10, 15])
def test_medians_are_compared_only_when_a_spell_cut_the_probe_short(tmp_path, cpu_fp, passes):
    """On a host whose timings spread less than the table host's (here median 1.03x the fastest, against the
    table's 1.1x) medians read fast. A probe of at least half the table's passes compares fastest samples alone;
    one cut to fewer also compares medians and takes the lower."""
    table, stored = _table_of_20_passes(tmp_path, cpu_fp)
    nets = probe_mod.probe_networks(table)

    def timing(ms):  # one pass: fastest 1.2x the stored fastest, median 1.03x that
        return Timing(median_ms=1.03 * 1.2 * ms, spread=0.05, runs=3, device="cpu", threads=1, noisy=False,
                      attempts=1, samples_ms=[1.2 * ms, 1.03 * 1.2 * ms, 1.1 * 1.2 * ms])

    ratios = probe_mod._network_ratios(table, nets, [[timing(ms)] * passes for _, ms in nets])
    fastest = 1.2 / (1 + probe_mod.pass_bias(passes, 20))
    medians = 1.03 * 1.2 / 1.1
    expected = min(fastest, medians) if passes < probe_mod.MEDIAN_GUARD * 20 else fastest
    assert ratios == pytest.approx([expected] * len(nets))
    assert (expected == pytest.approx(medians)) == (passes < 10)


def test_a_probe_in_a_burst_of_load_reads_its_fastest_samples(tmp_path, cpu_fp, monkeypatch):
    """Bursts of other load move every median of a short probe (here to 1.4x the stored one) while its fastest
    samples stay near the machine's speed (1.06x the stored fastest): the probe takes the lower estimate, the
    fastest one less the bias of fewer passes."""
    table, stored = _table_of_20_passes(tmp_path, cpu_fp)
    _fake_passes(monkeypatch, stored, (1.06, 1.54, 2.0), 0.1)
    result = probe_mod.probe_speed(table, budget_s=0.25, blocks=0, pool=False)
    bias = probe_mod.pass_bias(result.rounds, 20)
    assert 0 < bias <= probe_mod.PASS_BIAS * 2 and probe_mod.pass_bias(5, 20) == pytest.approx(probe_mod.PASS_BIAS)
    assert probe_mod.pass_bias(20, 20) == 0
    assert result.factor == pytest.approx(1.06 / (1 + bias))


def test_factor_far_from_one_is_one_warning_line(tmp_path, cpu_fp, capsys):
    table = _table_with_networks(tmp_path, cpu_fp, [1.0])
    assert probe_mod.warn_factor(1.1, table) is None and probe_mod.warn_factor(None, table) is None
    line = probe_mod.warn_factor(1.3, table)
    err = capsys.readouterr().err.strip()
    assert err == line and "\n" not in err and "30% slower" in err and "--tables DIR" in err
    assert "15.4x slower" in probe_mod.warn_factor(15.4, table) and "2.5x faster" in probe_mod.warn_factor(0.4, table)


def _slowed_copy(table: LatencyTable, folder, factor: float) -> LatencyTable:
    """The table as a machine ``1/factor`` times as fast would have measured it: every stored figure scaled."""
    data = json.loads(table.path.read_text())
    scaled = copy.deepcopy(data)
    for entry in scaled["entries"].values():
        for k in ("median_ms", "min_ms"):
            if k in entry:
                entry[k] *= factor
    cal = scaled["calibration"]
    cal["intercept_ms"] = cal.get("intercept_ms", 0.0) * factor
    for net in cal["networks"]:
        net["measured_ms"] *= factor
        net["median_ms"] = net.get("median_ms", net["measured_ms"]) * factor
    folder.mkdir()
    path = folder / table.path.name
    path.write_text(json.dumps(scaled))
    return LatencyTable.load(path)


def test_a_table_from_a_faster_machine_is_corrected_by_the_probe(tmp_path, tiny_space, cpu_fp):
    settings = {**FAST, "rounds": 6, "repeats": 20, "warmup": 5}  # tiny networks need a real warm-up to time stably
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path / "real", progress=False, calib_networks=6,
                        **settings).table
    fast = _slowed_copy(table, tmp_path / "fast", 0.5)  # "measured" on a machine twice as fast
    plain = validate_table(tiny_space, cpu_fp, n=6, seed=5, table=fast, progress=False, probe=False)
    probed = validate_table(tiny_space, cpu_fp, n=6, seed=5, table=fast, progress=False)
    # The probe must find the factor 2 the copy hides (give or take the noise of networks of a few tenths of a
    # millisecond on this shared machine) and every prediction must carry it. Whether the corrected predictions
    # then match these tiny networks depends on how well a table of 32-px blocks predicts 32-px networks (its error
    # here reaches 30-40%, and failed a tighter bias bound in CI); that is validated at real sizes, not here.
    assert plain["bias"] < -0.15  # the copy under-predicts: half the measured time, give or take
    factor = probed["probe"]["factor"]
    assert 1.4 < factor < 2.9
    for row in probed["rows"]:  # tiny networks: the plain factor applies (no block correction under MIN_NETWORK_MS)
        assert row["predicted_ms"] == pytest.approx(row["base_ms"] * factor, rel=2e-3, abs=2e-4)
    assert probed["within_10_drift_corrected"] is not None
    assert LatencyTable.load(fast.path).validation["speed_factor"] == pytest.approx(probed["probe"]["factor"],
                                                                                     abs=1e-4)


def _table_with_blocks(tmp_path, cpu_fp):
    from hilonas.latency.keys import arch_blocks

    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    stored = dict(probe_mod.probe_networks(table))
    for arch in stored:
        for key in arch_blocks(arch):
            ms = 6.0 if key.kind == "stem" else 1.0 * (1 + key.dim / 8)  # the stem's share differs by network
            table.add(key, {"median_ms": ms, "min_ms": ms})
    table.save()
    return table, stored


@pytest.mark.parametrize("networks_follow_blocks", [True, False])
def test_block_correction_is_used_when_it_explains_the_networks(tmp_path, cpu_fp, monkeypatch,
                                                                networks_follow_blocks):
    """Each kind of block gets its ratio; when the networks' ratios follow the blocks (times one residual) the
    correction is used and reproduces every probe network; when it explains nothing (the networks all moved alike)
    it is recorded but not used: the plain factor applies."""
    from hilonas.latency.calibration import block_group
    from hilonas.latency.predictor import LatencyPredictor

    table, stored = _table_with_blocks(tmp_path, cpu_fp)
    slower = {"stem": 2.0, "block:none": 1.2, "head": 1.0}
    base = LatencyPredictor(table)
    shaped = LatencyPredictor(table, group_factors=slower)
    now = {a: (1.1 * shaped.predict(a) / base.predict(a) if networks_follow_blocks else 1.6) * ms
           for a, ms in stored.items()}

    def fake_blocks(keys, fp, **settings):
        assert settings["rounds"] == 1 and len(keys) <= 8  # timed as the build times them
        return [_timing(table.latency_ms(k) * slower[block_group(k)]) for k in keys]

    def fake_passes(archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield [_timing(now[a]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.measure_blocks", fake_blocks)
    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)
    result = probe_mod.probe_speed(table, budget_s=5)
    assert result.group_factors == pytest.approx(slower) and result.size_exponent == 0.0
    assert result.blocks == len(probe_mod.probe_blocks(table)) and table.probes[-1] == result.to_dict()
    corrected = LatencyPredictor(table, **result.correction())
    if networks_follow_blocks:
        assert result.residual == pytest.approx(1.1)
        for arch, ms in now.items():
            assert corrected.predict(arch) == pytest.approx(ms / stored[arch] * base.predict(arch))
    else:
        assert result.residual is None and result.correction() == {"speed_factor": pytest.approx(1.6)}


def test_a_cuda_table_is_probed_by_its_networks_alone(tmp_path, cpu_fp, monkeypatch):
    """On CUDA no block is re-timed: the networks' median ratio is the one factor."""
    import dataclasses

    cuda_fp = dataclasses.replace(cpu_fp, device_kind="cuda", device_name="NVIDIA H100", capability="9.0",
                                  threads=0)
    table, stored = _table_with_blocks(tmp_path, cuda_fp)

    def no_blocks(keys, fp, **settings):
        raise AssertionError("a CUDA probe timed blocks")

    def fake_passes(archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield [_timing(1.3 * stored[a]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.measure_blocks", no_blocks)
    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)
    result = probe_mod.probe_speed(table, budget_s=5)
    assert result.blocks == 0 and result.group_factors == {} and result.residual is None
    assert result.correction() == {"speed_factor": pytest.approx(1.3)}


def test_block_factors_recover_a_size_trend():
    """Ratios that fall with a block's size by a shared power law are fitted as group levels and one exponent; too
    few blocks fall back to each group's median ratio."""
    truth = {"stem": 1.5, "merge": 1.6, "block:hilo": 1.3}
    by_group = {g: [(ms, f * ms ** -0.08) for ms in (0.2, 0.7, 1.5, 2.5)] for g, f in truth.items()}
    factors, exponent = probe_mod.fit_block_factors(by_group)
    assert exponent == pytest.approx(-0.08) and factors == pytest.approx(truth)
    few = {"stem": [(0.3, 1.5)], "merge": [(0.2, 1.7), (0.4, 1.5)]}
    assert probe_mod.fit_block_factors(few) == ({"stem": 1.5, "merge": pytest.approx(1.6)}, 0.0)
    steep = {"block:hilo": [(ms, ms ** -0.9) for ms in (0.5, 1, 2, 4)]}
    assert probe_mod.fit_block_factors(steep)[1] == -probe_mod.MAX_SIZE_EXPONENT  # not believed: clipped


def _probe(factor: float, host: str = "h1", residual: float | None = None) -> probe_mod.SpeedProbe:
    return probe_mod.SpeedProbe(factor=factor, spread=0.0, seconds=1.0, networks=4, rounds=5, taken_at="",
                                ratios=(factor,), residual=residual, host=host)


def _entry(factor: float, minutes_ago: float, now: float, host: str = "h1") -> dict:
    import time

    return {"factor": factor, "host": host,
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now - 60 * minutes_ago))}


def test_a_probe_is_pooled_with_its_hosts_recent_probes():
    """One probe in a slow spell (1.30) among this host's recent ones (1.00, 1.02) takes their median level; probes
    of another host, older than the window or beyond the newest POOL_EARLIER do not count; a lasting change
    shows at the second probe that sees it."""
    import time

    now = time.time()
    spell = probe_mod.pool_probe(_probe(1.30, residual=1.30 / 1.25), [_entry(1.00, 5, now), _entry(1.02, 2, now)],
                                 now=now)
    assert spell.factor == pytest.approx(1.02) and spell.own_factor == pytest.approx(1.30) and spell.pooled == 3
    assert spell.residual == pytest.approx(1.02 / 1.25)  # the level moves, the by-kind shape stays
    assert "median of 3 probes" in spell.describe() and "this one 1.300" in spell.describe()
    others = [_entry(0.5, 1, now, host="h2"), _entry(0.5, probe_mod.POOL_MINUTES + 1, now),
              {"factor": 0.5, "host": "h1", "taken_at": "not a time"}]
    alone = probe_mod.pool_probe(_probe(1.30), others, now=now)
    assert alone.factor == pytest.approx(1.30) and alone.pooled == 1 and alone.own_factor is None
    newest = probe_mod.pool_probe(_probe(1.30), [_entry(0.5, 9, now), _entry(1.28, 3, now), _entry(1.0, 1, now)],
                                  now=now)
    assert newest.pooled == 1 + probe_mod.POOL_EARLIER and newest.factor == pytest.approx(1.28)
    # pooled probes are recorded with their own factor, so a later probe pools what was measured
    recorded = {**_entry(0, 1, now), **spell.to_dict(), "taken_at": _entry(0, 1, now)["taken_at"]}
    later = probe_mod.pool_probe(_probe(1.31), [_entry(1.02, 4, now), recorded], now=now)
    assert later.factor == pytest.approx(1.30)


def test_probe_speed_pools_with_the_tables_history(tmp_path, cpu_fp, monkeypatch):
    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    speed = {"now": 1.0}

    def fake_passes(archs, fp, **settings):
        stored = dict(probe_mod.probe_networks(table))
        for _ in range(settings["rounds"]):
            yield [_timing(speed["now"] * stored[a]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)
    for now in (1.0, 1.0, 1.3):
        speed["now"] = now
        result = probe_mod.probe_speed(table, budget_s=5, blocks=0)
    assert result.factor == pytest.approx(1.0) and result.own_factor == pytest.approx(1.3)
    assert result.host == probe_mod.host_id() and result.pooled == 3
    assert LatencyTable.load(table.path).probes[-1]["own_factor"] == pytest.approx(1.3)
    unpooled = probe_mod.probe_speed(table, budget_s=5, blocks=0, pool=False)
    assert unpooled.factor == pytest.approx(1.3) and unpooled.pooled == 1


def test_a_table_from_a_cpu_with_other_vector_instructions_is_one_note_line(tmp_path, cpu_fp, capsys, monkeypatch):
    from hilonas.latency import fingerprint as fpmod

    table = _table_with_networks(tmp_path, cpu_fp, [1.0])
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": ["avx2"]})
    assert probe_mod.warn_kernels(table) is None  # a table without host details: nothing to compare
    table.set_details({"cpu_flags": ["avx2", "avx512f"]})
    line = probe_mod.warn_kernels(table)
    err = capsys.readouterr().err.strip()
    assert err == line and "\n" not in err and "avx2 avx512f vs avx2 here" in err and "--tables DIR" in err
    table.set_details({"cpu_flags": ["avx512f", "avx2"]})
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": ["avx2", "avx512f"]})
    assert probe_mod.warn_kernels(table) is None and capsys.readouterr().err == ""


def test_at_speed_moves_a_prediction_from_the_probes_speed_to_the_measured_one():
    """The drift-corrected prediction of ``latency validate`` and ``export``: today's prediction (made at the probe's
    factor) taken back to the table, then to the speed the networks beside it ran at."""
    assert probe_mod.at_speed(11.0, 1.1, 1.0) == pytest.approx(10.0)  # the table's own prediction
    assert probe_mod.at_speed(11.0, 1.1, 0.9) == pytest.approx(9.0)
    assert probe_mod.at_speed(10.0, 1.0, 1.2) == pytest.approx(12.0)  # no probe: the table's prediction, moved
