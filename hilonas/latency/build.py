"""Build and complete the latency table of a search space on this machine.

- :func:`build_table`: measure every distinct block of the space that the table lacks (a rich progress bar with ETA;
  saved after every group of blocks, so an interrupted build resumes where it stopped), then measure some whole
  networks and fit the table's calibration on them (:mod:`hilonas.latency.calibration`). Returns a
  :class:`BuildReport`.
- :func:`ensure_table`: what a search calls before it starts: builds what is missing, silent when the table is
  complete; :func:`table_complete` tells without measuring.

Validation (networks the calibration never saw, measured whole) is :mod:`hilonas.latency.validate`.

Measurement protocol (the same for blocks and whole networks, recorded in the table's ``settings``; details in
:mod:`hilonas.latency.measure`): ``rounds`` passes over all blocks (or networks), each pass ``repeats`` timed calls
per block after a warm-up; the figure kept is the fastest sample over the passes (``statistic: min``). Blocks that
keep their shape are timed as a chain of ``chain`` distinct copies. A calibration fitted on whole networks corrects
what a sum of blocks misses.
"""
from __future__ import annotations

import functools
import hashlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR
from hilonas.latency.calibration import Calibration, fit_calibration
from hilonas.latency.fingerprint import Fingerprint, machine_details
from hilonas.latency.keys import BlockKey
from hilonas.latency.predictor import LatencyPredictor
from hilonas.latency.table import LatencyTable
from hilonas.spaces import SearchSpace

__all__ = ["build_table", "refit_table", "ensure_table", "table_complete", "BuildReport", "machine_busy", "warn_busy",
           "check_model_code", "progress_bar", "DEFAULT_CALIB_NETWORKS"]

DEFAULT_CALIB_NETWORKS = 16


@dataclass
class BuildReport:
    """What :func:`build_table` or :func:`ensure_table` did.

    Attributes:
        table: the table, saved.
        blocks_total: distinct blocks of the space (of the table, when ensure_table found it complete).
        blocks_measured: blocks that had no entry and got one now.
        blocks_completed: blocks that got measurement passes now (new ones included).
        networks_measured: whole networks measured for the calibration now.
        seconds: wall time of the call.
        calibration: the table's calibration method, or None when it has none.
        machine_busy: share of the CPUs other processes used when the build started (None when nothing was measured
            or the platform cannot tell).
        path: the table file.
        speed_factor: when the table's earlier timings came from another host (or another boot of this one), the
            speed probe's factor that put this build's timings on the table's scale (None: stored as measured).
    """

    table: LatencyTable
    blocks_total: int
    blocks_measured: int
    blocks_completed: int
    networks_measured: int
    seconds: float
    calibration: str | None
    machine_busy: float | None
    path: str
    speed_factor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field but the table."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "table"}


# ------------------------------------------------------------------------------------------------------- helpers
def machine_busy(seconds: float = 0.3) -> float | None:
    """Share of the machine's CPU time other work used over ``seconds`` (0..1), from /proc/stat; None elsewhere."""
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                parts = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts[:8]), idle

    a = read()
    if a is None:
        return None
    time.sleep(seconds)
    b = read()
    if b is None or b[0] == a[0]:
        return None
    return max(0.0, min(1.0, 1.0 - (b[1] - a[1]) / (b[0] - a[0])))


@functools.lru_cache(maxsize=1)
def _model_code_files() -> dict[str, str]:
    """Hash of each source file that decides what a block computes (``layers/*.py`` and the model), by file name.

    Reads the files without importing them (no torch import)."""
    root = Path(__file__).resolve().parents[1]  # the hilonas package
    files = sorted((root / "layers").glob("*.py")) + [root / "models" / "hilonet.py"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}


def _model_code_hash() -> str:
    """One hash of all of :func:`_model_code_files` (what tables recorded before the per-file hashes)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted((root / "layers").glob("*.py")) + [root / "models" / "hilonet.py"]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _stale_files(settings: dict[str, Any]) -> list[str] | None:
    """The source files changed since the table was measured ([] when none), or None when that cannot be told
    file by file. A file added since (a new mixer's layer) does not make a table stale: its blocks are new keys."""
    stored = settings.get("model_code_files")
    if not isinstance(stored, dict):
        return None
    now = _model_code_files()
    return sorted(name for name, digest in stored.items() if now.get(name) != digest)


def check_model_code(table: LatencyTable, space: str | None = None, *, warn: bool = True) -> str | None:
    """The warning for a table measured with other layer/model code than the installed one, or None.

    Compares the hashes the table recorded (``settings['model_code_files']``, per source file; older tables: one
    ``settings['model_code']``) with the installed code's (tables with neither are not flagged: they predate the
    hash). With ``warn`` the line is printed to stderr, so every command that opens a table for use (search,
    validate, export's re-measurement, bench latency, landmarks) flags a stale one.
    """
    stored = table.settings.get("model_code")
    if not table.entries or stored in (None, _model_code_hash()):
        return None
    changed = _stale_files(table.settings)
    if changed == []:
        return None
    what = f"changed since: {', '.join(changed)}" if changed else f"model_code {stored}, installed {_model_code_hash()}"
    message = (f"warning: latency table {table.path} was measured with other layer/model code than this hilonas has "
               f"({what}): its latencies may be wrong; delete it and "
               f"rebuild with `{table.fingerprint.build_command(space or 'SPACE')}`")
    if warn:
        print(message, file=sys.stderr)
    return message


def progress_bar(enabled: bool, *, label: str = "[bold]{task.description}", status: bool = False,
                 stderr: bool = True):
    """A rich Progress (label, bar, count, ``status`` field when asked, elapsed, ETA) on stderr or stdout, or a no-op
    stand-in when disabled. The one place hilonas lays out a progress line (table builds, searches)."""
    if not enabled:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    extra = [TextColumn("{task.fields[status]}")] if status else []
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=stderr), transient=False)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --------------------------------------------------------------------------------------------------------- build
def _open(space: SearchSpace, fp: Fingerprint, tables_dir: str | Path, force: bool) -> tuple[SearchSpace, LatencyTable]:
    return space.at_resolution(fp.resolution), LatencyTable.open(fp, tables_dir, force=force)


def warn_busy(busy: float | None) -> None:
    """A warning on stderr when other processes use more than a quarter of the CPUs (``busy`` from
    :func:`machine_busy`)."""
    if busy is not None and busy > 0.25:
        print(f"warning: other processes are using {busy:.0%} of the CPUs; timings will be noisy "
              "(measure on an idle machine for a table you keep)", file=sys.stderr)


def _record_settings(table: LatencyTable, merged: dict[str, Any]) -> None:
    """Write the build's settings (and what code and allocator measured) into the table when they changed."""
    from hilonas.latency.measure import steady_allocator

    extra = {"model_code": _model_code_hash(), "model_code_files": _model_code_files(),
             "allocator": steady_allocator()}
    if any(table.settings.get(k) != v for k, v in {**merged, **extra}.items()):
        table.set_settings({**table.settings, **merged, **extra})


def _block_pass(table: LatencyTable, keys: Sequence[BlockKey], fp: Fingerprint, settings: dict[str, Any],
                after: Callable[[BlockKey], None], scale: TableScale | None) -> None:
    """One measurement pass over ``keys``, a group at a time; the table is saved after every group and ``after``
    is called with each key once it is saved. ``scale`` (:func:`_table_scale`) puts each timing on the table's
    scale."""
    from hilonas.latency.measure import measure_blocks

    timing_kw = {k: v for k, v in settings.items() if k != "group"}
    for group in _chunks(keys, settings["group"]):
        timings = measure_blocks(group, fp, **{**timing_kw, "rounds": 1})
        for key, t in zip(group, timings):
            chain = settings["chain"] if key.kind == "block" else 1
            extra = {}
            if scale is not None:
                t, factor = scale.blocks.at_table_speed(key, t, chain)
                extra["measured_speed"] = round(factor, 5)
            table.add_pass(key, t, chain=chain, **extra)
        table.save()
        for key in group:
            after(key)


def _measure(table: LatencyTable, todo: list[BlockKey], archs: list[ArchConfig], fp: Fingerprint,
             settings: dict[str, Any], bar: Any, on_block: Callable[[BlockKey], None] | None, label: str,
             scale: TableScale | None = None) -> list[Any]:
    """The build's passes: pass ``r`` measures every block of ``todo`` still short of ``r + 1`` passes, then every
    network of ``archs`` once, then pass ``r + 1`` starts. A block's passes lie minutes apart, and blocks and
    networks share the machine's conditions. Returns the networks' pooled Timings."""
    from hilonas.latency.measure import network_passes
    from hilonas.latency.timing import pool_timings

    rounds = settings["rounds"]
    block_task = bar.add_task(f"blocks of {label}", total=sum(rounds - table.passes(k) for k in todo)) if todo else None
    net_task = bar.add_task("calibration networks (passes)", total=rounds) if archs else None

    def after(key: BlockKey) -> None:
        bar.advance(block_task)
        if on_block is not None:
            on_block(key)

    nets = network_passes(archs, fp, **{k: v for k, v in settings.items() if k != "group"}) if archs else None
    passes: list[list[Any]] = [[] for _ in archs]
    try:
        for r in range(rounds):
            _block_pass(table, [k for k in todo if table.passes(k) <= r], fp, settings, after, scale)
            if nets is not None:
                for ts, t in zip(passes, next(nets)):
                    ts.append(t)
                bar.advance(net_task)
    finally:
        if nets is not None:
            nets.close()  # frees the networks kept between passes
    # Whole networks go on the table's scale by the probe's own network factor (what the probe networks ran at).
    return [pool_timings(ts).divided_by(scale.networks if scale is not None else 1.0) for ts in passes]


class TableScale(NamedTuple):
    """How timings measured here go on a table's scale: blocks by the predictor's :meth:`~LatencyPredictor.
    at_table_speed` (the speed probe's correction), whole networks divided by the probe's network factor."""

    blocks: LatencyPredictor
    networks: float


def _table_scale(table: LatencyTable, fp: Fingerprint, measuring: bool) -> TableScale | None:
    """What puts this build's timings on the table's scale, when the table's earlier timings came from another host.

    A table is one host's speed: its speed probe scales every prediction to the machine it runs on, which holds
    only while every entry shares that scale. Two hosts behind one fingerprint differ by 25% or more, so blocks
    measured here and stored beside another host's would put a new space's predictions that far off after the
    probe. So when the table has entries and its ``machine`` section names another host (:func:`~hilonas.latency.
    probe.host_id`: hostname and boot; a table that names none counts as another's), a speed probe is taken first
    (recorded in the table's history) and every block and network measured now is divided by the factor the probe
    finds for it (``measured_speed`` on the block's entry). None (timings stored as measured) for a new table or
    a table of this host, whose ``machine`` section then names this host, or for a table without calibration
    networks to probe with (a warning says so).
    """
    from hilonas.latency.probe import host_id, probe_speed

    if not measuring:
        return None
    if not table.entries or table.details.get("host") == host_id():
        table.set_details({**machine_details(fp.device_kind), "host": host_id()})  # the host measuring now
        return None
    probe = probe_speed(table, fp, pool=False)
    if probe is None:
        print("warning: this table was measured on another host and has no calibration networks to compare this "
              "machine's speed with: the timings measured now are stored as measured (build the space into a "
              "table of its own with --tables DIR for figures on one scale)", file=sys.stderr)
        return None
    print(f"note: this table was measured on another host; this machine runs at {probe.factor:.3f}x its speed "
          f"(speed probe, {probe.seconds:.1f} s): what is measured now is stored on the table's scale",
          file=sys.stderr)
    return TableScale(LatencyPredictor(table, **probe.correction()), probe.factor)


def build_table(space: SearchSpace, fp: Fingerprint, *, tables_dir: str | Path = DEFAULT_TABLES_DIR,
                calib_networks: int = DEFAULT_CALIB_NETWORKS, progress: bool = True, force: bool = False,
                recalibrate: bool = False, seed: int = 0,
                on_block: Callable[[BlockKey], None] | None = None, **settings: Any) -> BuildReport:
    """Measure the blocks of ``space`` the table of ``fp`` lacks, then (re)fit its calibration.

    Args:
        space: the search space (its blocks at ``fp.resolution``).
        fp: the target; must be this machine's (measurements run here).
        tables_dir: where the table file lives.
        calib_networks: whole networks measured to fit the calibration (0: none).
        progress: show a rich progress bar with ETA on stderr.
        force: use an existing table file even if its fingerprint differs.
        recalibrate: refit the calibration even when the table has one and no block was added.
        seed: seed of the calibration networks' sampling.
        on_block: called with each key once it is saved (tests use it to interrupt a build).
        **settings: measurement settings (warmup, repeats, max_spread, max_attempts, rounds, chain, statistic,
            group); an existing table's own settings are kept unless given.

    The table is saved after every group of blocks, so an interrupted build loses at most one group and the next
    build measures only the rest. Returns a :class:`BuildReport` (the table is its ``table``).
    """
    if isinstance(calib_networks, bool) or not isinstance(calib_networks, int) or calib_networks < 0:
        raise HilonasError(f"--calib-networks={calib_networks!r} must be an integer >= 0")
    from hilonas.latency.measure import table_settings

    started = time.perf_counter()
    space, table = _open(space, fp, tables_dir, force)
    check_model_code(table, space.name)
    merged = table_settings(table, settings)
    keys = space.enumerate_blocks()
    todo = table.incomplete(keys, merged["rounds"])
    new_keys = len(table.missing(keys))
    need_cal = calib_networks > 0 and bool(recalibrate or todo or table.calibration is None)
    busy = machine_busy() if todo or need_cal else None
    warn_busy(busy)
    _record_settings(table, merged)
    scale = _table_scale(table, fp, bool(todo or need_cal))
    cal_archs = space.sample_distinct(calib_networks, f"calibration:{seed}") if need_cal else []
    earlier = _earlier_networks(table, space.name, set(cal_archs), merged["statistic"]) if need_cal else []
    if recalibrate:  # the machine may have changed: every network of the calibration is measured again
        cal_archs += [arch for arch, _ in earlier]
        spaces = [space.name] * calib_networks + [net.get("space", "") for _, net in earlier]
        earlier = []
    else:
        spaces = [space.name] * len(cal_archs)
    with progress_bar(progress and bool(todo or need_cal)) as bar:
        timings = _measure(table, todo, cal_archs, fp, merged, bar, on_block, space.name, scale)
    if cal_archs:
        table.set_calibration(_calibrate(table, cal_archs, timings, merged["statistic"], seed, spaces, earlier))
        table.save()
    if not table.path.exists():
        table.save()
    return BuildReport(table=table, blocks_total=len(keys), blocks_measured=new_keys, blocks_completed=len(todo),
                       networks_measured=len(cal_archs), seconds=round(time.perf_counter() - started, 2),
                       calibration=(table.calibration or {}).get("method"), machine_busy=busy, path=str(table.path),
                       speed_factor=None if scale is None else round(scale.networks, 5))


def refit_table(fp: Fingerprint, tables_dir: str | Path = DEFAULT_TABLES_DIR, *, force: bool = False) -> LatencyTable:
    """Refit the calibration of the table of ``fp`` on the networks it stores, with their stored figures: nothing
    is measured, so any machine may do it (after an upgrade changed how calibrations are chosen, say). The
    calibration keeps its seed; ``fitted_at`` says when it was refitted.

    Raises:
        HilonasError: no table, or a table without calibration networks.
    """
    table = LatencyTable.open(fp, tables_dir, force=force)
    cal = table.calibration or {}
    statistic = str(cal.get("statistic") or table.statistic)
    stored = _earlier_networks(table, None, set(), statistic)
    if not stored:
        raise HilonasError(f"{table.path} stores no calibration networks to refit on: measure them with `"
                           f"{fp.build_command()} --tables {tables_dir}`")
    seed = cal.get("seed")
    table.set_calibration(_calibrate(table, [], [], statistic, seed if type(seed) is int else 0, [], stored))
    table.save()
    return table


def _earlier_networks(table: LatencyTable, space: str | None, exclude: set[ArchConfig],
                      statistic: str) -> list[tuple[ArchConfig, dict[str, Any]]]:
    """The networks of the table's calibration that came from other spaces (one table serves every space measured
    on its hardware): kept in the refit, so building a second space does not fit the calibration to it alone.
    Networks of ``space`` itself (None: keep every space's), those in ``exclude`` (measured again now) and those
    of another statistic are left out."""
    cal = table.calibration or {}
    if cal.get("statistic", statistic) != statistic:
        return []
    out = []
    for net in cal.get("networks", []):
        if not isinstance(net, dict) or (space is not None and net.get("space") == space):
            continue
        try:
            arch = ArchConfig.from_dict(net["arch"]).validate().canonical()
            float(net["measured_ms"])
        except (HilonasError, KeyError, TypeError, ValueError):
            continue
        if arch not in exclude:
            out.append((arch, net))
    return out


def _calibrate(table: LatencyTable, archs: list[ArchConfig], timings: list[Any], statistic: str, seed: int,
               spaces: list[str], earlier: list[tuple[ArchConfig, dict[str, Any]]]) -> Calibration:
    """The calibration fitted on ``archs`` measured whole now (``timings``; ``spaces``: the space each came from)
    and on ``earlier`` networks kept with their stored figures, with its provenance."""
    import dataclasses

    from hilonas.latency.measure import figure_ms

    predictor = LatencyPredictor(table)
    measured = [figure_ms(t, statistic) for t in timings]
    networks = [{"describe": a.describe(), "measured_ms": round(m, 4), "median_ms": round(t.median_ms, 4),
                 "spread": round(t.spread, 4), "space": sp, "arch": a.to_dict()}
                for a, t, m, sp in zip(archs, timings, measured, spaces)]
    networks += [net for _, net in earlier]
    all_archs = list(archs) + [a for a, _ in earlier]
    raw = [predictor.breakdown(a) for a in all_archs]
    for net, r in zip(networks, raw):
        net["raw_ms"] = round(sum(r.values()), 4)
    figures = measured + [float(net["measured_ms"]) for _, net in earlier]
    return dataclasses.replace(fit_calibration(raw, figures), fitted_on=len(all_archs), seed=seed,
                               statistic=statistic, fitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               networks=tuple(networks))


def table_complete(space: SearchSpace, fp: Fingerprint, table: LatencyTable, **kwargs: Any) -> bool:
    """Whether ``table`` has every block of ``space`` (all passes) and its calibration: nothing to measure."""
    from hilonas.latency.measure import table_settings

    calib = kwargs.get("calib_networks", DEFAULT_CALIB_NETWORKS)
    rounds = table_settings(table, {"rounds": kwargs.get("rounds")})["rounds"]
    keys = space.at_resolution(fp.resolution).enumerate_blocks()
    return not table.incomplete(keys, rounds) and (table.calibration is not None or not calib)


def ensure_table(space: SearchSpace, fp: Fingerprint, tables_dir: str | Path = DEFAULT_TABLES_DIR, *,
                 progress: bool = False, force: bool = False, **kwargs: Any) -> BuildReport:
    """The complete table of ``space`` on ``fp`` (the report's ``table``): built (or completed) when blocks or the
    calibration are missing.

    Silent and measurement-free when the table is already complete; ``kwargs`` go to :func:`build_table`.
    """
    started = time.perf_counter()
    _, table = _open(space, fp, tables_dir, force)
    if table_complete(space, fp, table, **kwargs):
        check_model_code(table, space.name)  # build_table checks it otherwise
        return BuildReport(table=table, blocks_total=len(table.entries), blocks_measured=0, blocks_completed=0,
                           networks_measured=0, seconds=round(time.perf_counter() - started, 2),
                           calibration=(table.calibration or {}).get("method"), machine_busy=None,
                           path=str(table.path))
    return build_table(space, fp, tables_dir=tables_dir, progress=progress, force=force, **kwargs)
