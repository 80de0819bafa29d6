"""LatencyTable: measured block latencies for one hardware fingerprint, in one human-readable JSON file.

The one place that knows the table file format::

    {
      "schema": "hilonas.latency_table", "schema_version": 1,
      "fingerprint_id": "cpu-amd-epyc-t1-b1-r224-69be5613",
      "fingerprint": {device_kind, device_name, capability, logical_cores, threads, torch_version, backend, dtype,
                      batch, resolution},
      "settings": {how entries were measured: warmup, repeats, max_spread, max_attempts, chain, ...},
      "calibration": null | {"method", "scale", "intercept_ms", ... networks it was fitted on},
      "entries": {"<BlockKey.id>": {"key": {...}, "median_ms", "min_ms", "spread", "runs", "noisy", "measured_at",
                                    ...}}

Predictions use ``min_ms`` when ``settings.statistic`` is 'min' (what ``hilonas latency build`` writes), else
``median_ms``.
    }

Promises: writes are atomic (temporary file in the same folder, fsync, rename) and several processes can add entries
to one table at once without losing any (a file lock around read-merge-write: the entries and calibration this
object changed win, everything else on disk is kept). Refusals: a file whose fingerprint differs from the expected one
(the message names the fields; ``force=True`` overrides) and a corrupt file (the message names the path; the file
is never rebuilt over). No torch import here.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR, atomic_write, read_text
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.keys import BlockKey

if TYPE_CHECKING:
    from hilonas.latency.calibration import Calibration

__all__ = ["LatencyTable", "SCHEMA", "SCHEMA_VERSION", "DEFAULT_TABLES_DIR", "table_path", "list_tables"]

SCHEMA = "hilonas.latency_table"
SCHEMA_VERSION = 1
_ENTRY_FIELDS = ("key", "median_ms", "spread", "runs", "noisy", "measured_at")
_LOCK_TIMEOUT_S = 120.0
# Optional top-level sections of a table file and their JSON types (see LatencyTable.sections).
SECTIONS: dict[str, type] = {"probes": list, "validation": dict, "machine": dict}
MAX_PROBES = 20


def table_path(fp: Fingerprint, tables_dir: str | Path = DEFAULT_TABLES_DIR) -> Path:
    """Where the table of ``fp`` lives: ``<tables_dir>/<fp.id>.json``."""
    return Path(tables_dir) / f"{fp.id}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class LatencyTable:
    """Block latencies (ms) of one fingerprint. Open with :meth:`open` or :meth:`load`; add; save.

    Attributes:
        path: the JSON file.
        fingerprint: the hardware the entries were measured on (the file's, when loaded with ``force``).
        entries: ``BlockKey.id`` -> entry dict (``key``, ``median_ms``, ``spread``, ``runs``, ``noisy``,
            ``measured_at``, and whatever else the measurement recorded).
        calibration: the fitted whole-network correction (see :mod:`hilonas.latency.predictor`), or None.
        settings: how the entries were measured.
        sections: the optional top-level sections of the file (:data:`SECTIONS`): ``probes``, the bounded speed-probe
            history (list, newest last); ``validation``, the last validation's errors; ``machine``, details of the
            host the table was measured on. Old files have none of them.
    """

    def __init__(self, path: str | Path, fingerprint: Fingerprint, entries: dict[str, dict] | None = None,
                 calibration: dict | None = None, settings: dict | None = None,
                 sections: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})
        self.calibration: dict[str, Any] | None = calibration
        self.settings: dict[str, Any] = dict(settings or {})
        self._dirty: set[str] = set()
        self._calibration_dirty = False
        self._settings_dirty = False
        self.sections: dict[str, Any] = dict(sections or {})
        self._sections_dirty: set[str] = set()
        self._new_probes: list[dict[str, Any]] = []
        self._keys: dict[str, BlockKey] = {}

    # ------------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, fp: Fingerprint, tables_dir: str | Path = DEFAULT_TABLES_DIR, force: bool = False) -> LatencyTable:
        """The table for ``fp`` under ``tables_dir``: loaded when its file exists, else a new empty one (not yet
        written)."""
        path = table_path(fp, tables_dir)
        if path.exists():
            return cls.load(path, expect=fp, force=force)
        return cls(path, fp)

    @classmethod
    def load(cls, path: str | Path, expect: Fingerprint | None = None, force: bool = False) -> LatencyTable:
        """Read a table file.

        Raises:
            HilonasError: the file is missing, unreadable or corrupt (the message names the path), or its
                fingerprint differs from ``expect`` (the message names the fields; ``force=True`` loads it anyway).
        """
        path = Path(path)
        table = cls(path, *cls._parse(path))
        if expect is not None and not force:
            table._check_fingerprint(expect)
        return table

    @classmethod
    def from_json(cls, text: str, path: str | Path, *, expect: Fingerprint | None = None,
                  force: bool = False) -> LatencyTable:
        """A table parsed from ``text`` (the content of a table file, e.g. one built on another node) that will
        live at ``path``, with the same checks as :meth:`load`.

        Every entry it holds, its settings and its calibration count as changed: :meth:`save` merges them into the
        file at ``path`` under the lock (its entries win over the file's, the file's other entries are kept), so a
        process hands a table to another without writing the file itself. A calibration of None (or empty settings)
        is no news and leaves the file's own.

        Raises:
            HilonasError: ``text`` is not a valid table (the message names ``path``), or its fingerprint differs
                from ``expect`` (unless ``force``).
        """
        path = Path(path)
        table = cls(path, *cls._parse_text(text, path))
        if expect is not None and not force:
            table._check_fingerprint(expect)
        table._dirty = set(table.entries)
        table._calibration_dirty = table.calibration is not None
        table._settings_dirty = bool(table.settings)
        table._sections_dirty = {k for k in table.sections if k != "probes"}
        table._new_probes = list(table.sections.get("probes", []))
        return table

    def _check_fingerprint(self, expect: Fingerprint) -> None:
        from hilonas.latency.fingerprint import bf16_kernels_differ

        if self.fingerprint.diff(expect):
            raise HilonasError(
                f"latency table {self.path} was measured on other hardware or settings "
                f"({self.fingerprint.describe_diff(expect)}; table value first): build a table for this target "
                "with `hilonas latency build`, or pass --force to use it anyway")
        kernels = bf16_kernels_differ(expect, self.details)
        if kernels:
            raise HilonasError(
                f"latency table {self.path} does not hold on this CPU ({kernels}): build one here in another "
                f"folder with `{expect.build_command()} --tables DIR` and pass --tables DIR, or pass --force to use "
                "it anyway")

    @classmethod
    def _parse(cls, path: Path) -> tuple[Fingerprint, dict, dict | None, dict, dict]:
        if not os.path.lexists(path):  # os.path: no OSError for a name too long
            raise HilonasError(f"latency table {path} does not exist: build it with `hilonas latency build`")
        # read_text: one line for a folder, a named pipe (a plain read blocked on it), a binary or a huge file
        return cls._parse_text(read_text(path, "latency table"), path)

    @staticmethod
    def _parse_text(text: str, path: Path) -> tuple[Fingerprint, dict, dict | None, dict, dict]:
        def corrupt(why: str) -> HilonasError:
            return HilonasError(f"latency table {path} is corrupt ({why}): repair or delete the file; "
                                "hilonas never rebuilds over it")

        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise corrupt(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
        except RecursionError:
            raise corrupt("its JSON nests too deeply to read") from None
        if not isinstance(data, dict):
            raise corrupt("the top level is not an object")
        if data.get("schema") != SCHEMA:
            raise corrupt(f"'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise corrupt(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}: this hilonas "
                          "reads version 1")
        try:
            fp = Fingerprint.from_dict(data.get("fingerprint"))
        except HilonasError as err:
            raise corrupt(str(err)) from None
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise corrupt("'entries' is not an object")
        for kid, entry in entries.items():
            if not isinstance(entry, dict) or any(f not in entry for f in _ENTRY_FIELDS):
                raise corrupt(f"entry {kid!r} lacks one of {', '.join(_ENTRY_FIELDS)}")
            for name in ("median_ms", "min_ms"):
                ms = entry.get(name, 0.0)
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                    raise corrupt(f"entry {kid!r} has {name}={ms!r}, not a non-negative number")
            try:
                key = BlockKey.from_dict(entry["key"])
                key_id = key.id
            except (TypeError, ValueError):
                raise corrupt(f"entry {kid!r} has a malformed key") from None
            if key_id != kid:
                raise corrupt(f"entry {kid!r} holds the key of {key_id!r}")
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, dict):
            raise corrupt("'calibration' is neither null nor an object")
        if calibration is not None:
            for name in ("scale", "intercept_ms"):
                v = calibration.get(name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise corrupt(f"calibration.{name}={v!r} is not a number")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise corrupt("'settings' is not an object")
        sections = {name: data[name] for name in SECTIONS if data.get(name) is not None}
        for name, kind in SECTIONS.items():
            if name in sections and not isinstance(sections[name], kind):
                raise corrupt(f"'{name}' is not a{'n object' if kind is dict else ' list'}")
        if any(not isinstance(p, dict) for p in sections.get("probes", [])):
            raise corrupt("'probes' holds an item that is not an object")
        return fp, entries, calibration, settings, sections

    # -------------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: BlockKey | str) -> bool:
        return (key.id if isinstance(key, BlockKey) else key) in self.entries

    def keys(self) -> list[BlockKey]:
        """Every key in the table, in id order."""
        return [self.key_of(kid) for kid in sorted(self.entries)]

    def key_of(self, kid: str) -> BlockKey:
        key = self._keys.get(kid)
        if key is None:
            key = self._keys[kid] = BlockKey.from_dict(self.entries[kid]["key"])
        return key

    @property
    def statistic(self) -> str:
        """Which stored figure predictions use: 'min' or 'median' (``settings['statistic']``, default 'median')."""
        return "min" if self.settings.get("statistic") == "min" else "median"

    def latency_ms(self, key: BlockKey | str) -> float:
        """The figure of ``key`` in ms that predictions use (``min_ms`` or ``median_ms``, per :attr:`statistic`;
        ``median_ms`` for an entry without ``min_ms``). KeyError when missing."""
        entry = self.entries[key.id if isinstance(key, BlockKey) else key]
        if self.statistic == "min" and "min_ms" in entry:
            return float(entry["min_ms"])
        return float(entry["median_ms"])

    def missing(self, keys: Iterable[BlockKey]) -> list[BlockKey]:
        """The keys of ``keys`` that have no entry, each once, in the order given."""
        seen: set[str] = set()
        out = []
        for k in keys:
            if k.id not in self.entries and k.id not in seen:
                seen.add(k.id)
                out.append(k)
        return out

    def add(self, key: BlockKey, timing: Any, **extra: Any) -> dict[str, Any]:
        """Store ``timing`` (a :class:`~hilonas.latency.timing.Timing`, or a dict with median_ms and optionally
        min_ms/spread/runs/noisy) for ``key``; ``extra`` fields go into the entry. Not written until :meth:`save`.
        Returns the entry."""
        t = timing.to_dict() if hasattr(timing, "to_dict") else dict(timing)
        entry = {"key": key.to_dict(), "median_ms": round(float(t["median_ms"]), 6),
                 "spread": round(float(t.get("spread", 0.0)), 4),
                 "runs": int(t.get("runs", 0)), "noisy": bool(t.get("noisy", False)),
                 "attempts": int(t.get("attempts", 1)), "measured_at": _now()}
        if t.get("samples_ms"):
            entry["min_ms"] = round(float(min(t["samples_ms"])), 6)
        elif "min_ms" in t:
            entry["min_ms"] = round(float(t["min_ms"]), 6)
        entry.update(extra)
        self.entries[key.id] = entry
        self._keys[key.id] = key
        self._dirty.add(key.id)
        return entry

    def add_pass(self, key: BlockKey, timing: Any, **extra: Any) -> dict[str, Any]:
        """Merge one more measurement pass of ``key`` into its entry (or start the entry).

        The entry keeps every pass's median and minimum (``pass_medians``, ``pass_mins``); ``median_ms`` is the
        median of the pass medians, ``min_ms`` the lowest minimum, ``runs`` and ``attempts`` add up, ``noisy`` holds
        only while every pass was noisy and ``spread`` is the quietest pass's. ``passes`` counts them.
        """
        old = self.entries.get(key.id)
        t = timing.to_dict() if hasattr(timing, "to_dict") else dict(timing)
        new = self.add(key, timing, **extra)
        medians = list(old.get("pass_medians", [old["median_ms"]])) if old else []
        mins = list(old.get("pass_mins", [old.get("min_ms", old["median_ms"])])) if old else []
        medians.append(new["median_ms"])
        mins.append(new.get("min_ms", new["median_ms"]))
        new["pass_medians"], new["pass_mins"], new["passes"] = medians, mins, len(medians)
        ordered = sorted(medians)
        mid = len(ordered) // 2
        new["median_ms"] = ordered[mid] if len(ordered) % 2 else round((ordered[mid - 1] + ordered[mid]) / 2, 6)
        new["min_ms"] = min(mins)
        if old:
            new["runs"] += int(old.get("runs", 0))
            new["attempts"] += int(old.get("attempts", 1))
            new["noisy"] = bool(old.get("noisy", False)) and bool(t.get("noisy", False))
            new["spread"] = min(float(old.get("spread", new["spread"])), new["spread"])
        return new

    def passes(self, key: BlockKey) -> int:
        """How many measurement passes the entry of ``key`` holds (0 when missing)."""
        entry = self.entries.get(key.id)
        return 0 if entry is None else int(entry.get("passes", 1))

    def incomplete(self, keys: Iterable[BlockKey], passes: int) -> list[BlockKey]:
        """The keys of ``keys`` with fewer than ``passes`` measurement passes (missing ones included), each once."""
        seen: set[str] = set()
        out = []
        for k in keys:
            if k.id not in seen and self.passes(k) < passes:
                seen.add(k.id)
                out.append(k)
        return out

    def set_calibration(self, calibration: Calibration | dict[str, Any] | None) -> None:
        """Replace the calibration (written by the next :meth:`save`); a :class:`Calibration` is stored as its
        ``to_dict()``, the file's format."""
        self.calibration = calibration.to_dict() if hasattr(calibration, "to_dict") else calibration
        self._calibration_dirty = True

    def fitted_calibration(self) -> Calibration | None:
        """The calibration as a :class:`~hilonas.latency.calibration.Calibration`, or None when there is none."""
        from hilonas.latency.calibration import Calibration

        return Calibration.from_dict(self.calibration) if self.calibration else None

    def set_section(self, name: str, value: Any) -> None:
        """Replace the optional section ``name`` ('validation', 'machine'); written by the next :meth:`save`."""
        if name not in SECTIONS or name == "probes":
            raise ValueError(f"unknown table section {name!r}: use one of validation, machine (probes: add_probe)")
        self.sections[name] = value
        self._sections_dirty.add(name)

    @property
    def details(self) -> dict[str, Any]:
        """What the OS showed of the host the table was measured on (:func:`~hilonas.latency.fingerprint.
        machine_details`), the file's ``machine`` section; empty for files that predate it."""
        return dict(self.sections.get("machine") or {})

    def set_details(self, details: dict[str, Any]) -> None:
        """Record the measuring host's details (the ``machine`` section; written and merged like settings)."""
        self.set_section("machine", dict(details))

    @property
    def probes(self) -> list[dict[str, Any]]:
        """The speed-probe history (newest last; at most :data:`MAX_PROBES`)."""
        return list(self.sections.get("probes", []))

    def add_probe(self, probe: dict[str, Any]) -> None:
        """Append a speed probe to the history; the next :meth:`save` merges it with probes other processes saved."""
        self._new_probes.append(dict(probe))
        self.sections["probes"] = (self.probes + [dict(probe)])[-MAX_PROBES:]

    def set_settings(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self._settings_dirty = True

    @property
    def validation(self) -> dict[str, Any] | None:
        """The last validation's summary (the file's ``validation`` section: ``n``, ``seed``, ``mape``, ``p90_ape``
        (0.05 = 5%), ``within_10``, ``taken_at``, ``speed_factor``), or None when the table was never validated."""
        value = self.sections.get("validation")
        return dict(value) if value else None

    def set_validation(self, summary: dict[str, Any]) -> None:
        """Keep ``summary`` as the table's last validation; the next :meth:`save` writes it under the lock (merged
        like the calibration: this one wins, the file's other sections are kept). ``taken_at`` is filled in when
        absent."""
        self.set_section("validation", {"taken_at": _now(), **summary})

    @property
    def p90_error(self) -> float | None:
        """The validated 90th-percentile absolute relative error (0.05 = 5%), or None without a usable one."""
        v = (self.validation or {}).get("p90_ape")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            return None
        return float(v)

    # --------------------------------------------------------------------------------------------------- saving
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "fingerprint_id": self.fingerprint.id,
            "fingerprint": self.fingerprint.to_dict(),
            "settings": self.settings,
            "calibration": self.calibration,
            **{name: self.sections[name] for name in SECTIONS if name in self.sections},
            "entries": {kid: self.entries[kid] for kid in sorted(self.entries)},
        }

    def save(self) -> Path:
        """Merge with the file on disk under a file lock and write atomically. Returns the path.

        Entries and calibration changed through this object win; everything else on disk is kept, so processes
        adding disjoint entries at once lose nothing.

        Raises:
            HilonasError: the file on disk is corrupt or belongs to another fingerprint (it is left untouched).
        """
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock")
        try:
            with lock.acquire(timeout=_LOCK_TIMEOUT_S):
                if self.path.exists():
                    fp, entries, calibration, settings, sections = self._parse(self.path)
                    differ = fp.diff(self.fingerprint)
                    if differ:
                        raise HilonasError(f"latency table {self.path} on disk belongs to other hardware "
                                           f"({fp.describe_diff(self.fingerprint)}): not overwriting it")
                    merged = dict(entries)
                    merged.update({kid: self.entries[kid] for kid in self._dirty if kid in self.entries})
                    self.entries = merged
                    if not self._calibration_dirty:
                        self.calibration = calibration
                    if not self._settings_dirty:
                        self.settings = settings
                    self._merge_sections(sections)
                self._write_atomic(_dumps(self.to_dict()))
        except Timeout:
            raise HilonasError(f"latency table {self.path} stayed locked for {_LOCK_TIMEOUT_S:.0f} s by another "
                               f"process: if none is running, delete {self.path}.lock") from None
        self._dirty.clear()
        self._calibration_dirty = self._settings_dirty = False
        self._sections_dirty.clear()
        self._new_probes.clear()
        return self.path

    def _merge_sections(self, on_disk: dict[str, Any]) -> None:
        """Sections changed here win; the probe history is the file's plus the probes added here (bounded)."""
        merged = {k: v for k, v in on_disk.items() if k not in self._sections_dirty}
        merged.update({k: self.sections[k] for k in self._sections_dirty if k in self.sections})
        history = list(on_disk.get("probes", []))
        history += [p for p in self._new_probes if p not in history]
        if history:
            merged["probes"] = history[-MAX_PROBES:]
        self.sections = merged

    def _write_atomic(self, text: str) -> None:
        atomic_write(self.path, text)

    def describe(self) -> str:
        cal = "calibrated" if self.calibration else "not calibrated"
        return f"{self.path}: {len(self.entries)} blocks, {cal}, {self.fingerprint.describe()}"


def _dumps(data: dict[str, Any]) -> str:
    """JSON laid out for people: one line per field, per entry and per calibration network."""
    def one(v: Any) -> str:
        return json.dumps(v, separators=(", ", ": "))

    lines = []
    for name, value in data.items():
        if name == "entries" and value:
            body = ",\n".join(f"  {one(k)}: {one(v)}" for k, v in value.items())
            lines.append(f' "entries": {{\n{body}\n }}')
        elif name == "calibration" and isinstance(value, dict):
            parts = []
            for k, v in value.items():
                if k == "networks" and isinstance(v, list) and v:
                    nets = ",\n".join(f"   {one(n)}" for n in v)
                    parts.append(f'  "networks": [\n{nets}\n  ]')
                else:
                    parts.append(f"  {one(k)}: {one(v)}")
            lines.append(' "calibration": {\n' + ",\n".join(parts) + "\n }")
        else:
            lines.append(f" {one(name)}: {one(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def list_tables(tables_dir: str | Path = DEFAULT_TABLES_DIR) -> list[tuple[Path, Fingerprint | None, str]]:
    """Every ``*.json`` table under ``tables_dir``: ``(path, fingerprint or None, problem or '')``; never raises."""
    out = []
    root = Path(tables_dir)
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*.json")):
        try:
            fp = LatencyTable._parse(path)[0]
            out.append((path, fp, ""))
        except HilonasError as err:
            out.append((path, None, str(err)))
    return out
