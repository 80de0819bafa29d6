"""SearchSpace: a YAML file of per-stage choices that samples ArchConfigs.

A space file looks like::

    name: litv2_tiny
    description: one line
    fixed: {img_size: 224, patch_size: 4, num_classes: 10, merge: conv, qkv_bias: true}
    stages:
      - {depth: [1, 2], dim: [32, 48], mlp_ratio: [2, 4], mixer: none}
      - {depth: [1, 2, 3], dim: [128, 192], heads: [2, 4], mixer: hilo, alpha: [0.5, 0.9], window: [2, 4]}

Each stage field is one value or a list of choices. Every combination of one stage's choices must give a valid stage,
so every sample is a valid architecture (checked when the space is loaded). Sampling calls only ``trial.suggest_*``
(no optuna import here), so any Optuna sampler drives it.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hilonas.config import GLOBAL_FIELDS, MIXERS, STAGE_FIELDS, ArchConfig, check_stage_mapping, load_yaml
from hilonas.errors import ConfigError

_TOP_KEYS = ("name", "description", "fixed", "stages", "references")
_STAGE_DEFAULTS: dict[str, Any] = {"heads": 1, "mlp_ratio": 4.0, "mixer": "hilo", "alpha": 0.9, "window": 2}
_INT_FIELDS = ("depth", "dim", "heads", "window")
_NUM_FIELDS = ("mlp_ratio", "alpha")


def packaged_spaces() -> dict[str, Any]:
    """Names of the spaces shipped with hilonas (found in a wheel too) -> their resource files."""
    root = resources.files("hilonas.search_spaces")
    return {p.name[: -len(".yaml")]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def _stage_choices(i: int, st: Any) -> dict[str, tuple]:
    """The choices of stage ``i`` as written in a space file, checked field by field (defaults filled in)."""
    check_stage_mapping(i, st)
    choices = {}
    for key in STAGE_FIELDS:
        value = st.get(key, _STAGE_DEFAULTS.get(key))
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values:
            raise ConfigError(f"stages[{i}].{key} has no choices: give at least one value")
        for v in values:
            if isinstance(v, (list, dict, set)):
                raise ConfigError(f"stages[{i}].{key} choice {v!r} is not a single value: give one value or a flat "
                                  f"list of choices, e.g. {key}: {_flat_example(v)}")
        if len(set(values)) != len(values):
            raise ConfigError(f"stages[{i}].{key}={list(values)} repeats a choice: list each value once")
        for v in values:
            if key in _INT_FIELDS and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"stages[{i}].{key} choice {v!r} must be an integer")
            if key in _NUM_FIELDS and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v
                                       or v in (float("inf"), float("-inf"))):
                raise ConfigError(f"stages[{i}].{key} choice {v!r} must be a finite number")
            if key == "mixer" and v not in MIXERS:
                raise ConfigError(f"stages[{i}].mixer choice {v!r} is unknown: use {', '.join(MIXERS)}")
        choices[key] = tuple(float(v) for v in values) if key in _NUM_FIELDS else values
    return choices


@dataclass(frozen=True)
class SearchSpace:
    """Per-stage choices plus fixed global fields. Load with :meth:`load`."""

    name: str
    description: str
    fixed: dict[str, Any]
    stages: tuple[dict[str, tuple], ...]  # field -> tuple of choices
    source: str = ""
    references: tuple[tuple[str, ArchConfig], ...] = ()

    # -------------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """Load a space by packaged name (``litv2_tiny``) or by path; raise ConfigError naming the problem."""
        from hilonas.io import read_text

        text = str(name_or_path)
        path = Path(text)
        shipped = packaged_spaces()
        stem = text[:-5] if text.endswith(".yaml") else text
        # os.path, not Path: it answers False instead of raising for a name too long or a symlink loop, and
        # lexists lets read_text say what is wrong with a dangling link or a loop.
        if os.path.isfile(path) or (os.path.lexists(path) and stem not in shipped):
            source, raw = str(path), read_text(path, "space file", error=ConfigError)
        elif stem in shipped and "/" not in text:
            source, raw = f"search_spaces/{stem}.yaml", shipped[stem].read_text(encoding="utf-8")
        elif "/" in text or text.endswith((".yaml", ".yml")):
            raise ConfigError(f"space file {text} does not exist: check the path, or use a shipped space "
                              f"({', '.join(sorted(shipped))})")
        else:
            raise ConfigError(f"space {text!r} is unknown: use a shipped space ({', '.join(sorted(shipped))}) "
                              "or the path of a YAML file")
        return cls.from_yaml(raw, source)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> SearchSpace:
        data = load_yaml(text, source)
        try:
            return cls.from_dict(data, source)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> SearchSpace:
        if not isinstance(data, dict):
            raise ConfigError(f"a space must be a mapping with 'stages' (and optional name, description, fixed), "
                              f"got {type(data).__name__}: write it as YAML fields, e.g. 'stages: [{{depth: [1, 2], "
                              "dim: [32, 64]}]'")
        unknown = sorted(set(data) - set(_TOP_KEYS), key=str)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}: a space has {', '.join(_TOP_KEYS)}")
        fixed = data.get("fixed") or {}
        if not isinstance(fixed, dict):
            raise ConfigError("fixed must be a mapping of global fields (img_size, patch_size, ...)")
        bad = sorted(set(fixed) - set(GLOBAL_FIELDS), key=str)
        if bad:
            raise ConfigError(f"fixed.{bad[0]} is not a global field: allowed are {', '.join(GLOBAL_FIELDS)}")
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ConfigError("stages: missing or empty: give a list with one mapping of choices per stage")
        stages = [_stage_choices(i, st) for i, st in enumerate(raw_stages)]
        name = str(data.get("name") or Path(source).stem)
        space = cls(name=name, description=str(data.get("description", "")), fixed=dict(fixed),
                     stages=tuple(stages), source=source)
        space._check_fixed()
        for i in range(len(stages)):
            space._check_stage(i)
        refs = data.get("references") or {}
        if not isinstance(refs, dict):
            raise ConfigError("references must map a label to an architecture (stages + fields)")
        parsed = []
        for label, arch in refs.items():
            try:
                cfg = ArchConfig.from_dict({**space.fixed, **arch} if isinstance(arch, dict) else arch)
            except ConfigError as err:
                raise ConfigError(f"references.{label}: {err}") from None
            parsed.append((str(label), cfg))
        return SearchSpace(space.name, space.description, space.fixed, space.stages, source, tuple(parsed))

    def _config(self, per_stage: list[dict[str, Any]]) -> ArchConfig:
        fields = {"depths": "depth", "embed_dims": "dim", "num_heads": "heads", "mlp_ratios": "mlp_ratio",
                  "mixers": "mixer", "alphas": "alpha", "window_sizes": "window"}
        return ArchConfig(**{f: tuple(s[k] for s in per_stage) for f, k in fields.items()}, **self.fixed)

    def _check_fixed(self) -> None:
        probe = [{k: v[0] for k, v in st.items()} for st in self.stages]
        for s in probe:  # neutral stages: only the global fields are judged here
            s.update(mixer="none", depth=max(s["depth"], 1), dim=max(s["dim"], 1), mlp_ratio=4.0, alpha=0.0, window=1)
        try:
            self._config(probe).validate()
        except ConfigError as err:
            raise ConfigError(f"fixed: {err}") from None

    def _check_stage(self, i: int) -> None:
        """Every combination of stage i's choices must be valid (stage i's map size depends on fixed fields only)."""
        keys = list(STAGE_FIELDS)
        neutral = {"depth": 1, "dim": 1, "heads": 1, "mlp_ratio": 4.0, "mixer": "none", "alpha": 0.0, "window": 1}
        for combo in itertools.product(*(self.stages[i][k] for k in keys)):
            stage = dict(zip(keys, combo))
            per_stage = [dict(neutral) for _ in range(i)] + [stage]
            try:
                self._config(per_stage).validate()
            except ConfigError as err:
                raise ConfigError(f"{err} (the combination {_short(stage)} of stage {i}'s choices can never be "
                                  "valid: every combination of a stage's choices must be; remove the offending "
                                  "choice)") from None

    # ------------------------------------------------------------------------------------------------ sampling
    def param_name(self, i: int, key: str) -> str:
        return f"s{i}_{key}"

    def sample(self, trial: Any) -> ArchConfig:
        """An ArchConfig from an Optuna trial. Calls ``trial.suggest_categorical`` for every field with a choice."""
        per_stage = []
        for i, st in enumerate(self.stages):
            chosen = {}
            for key, values in st.items():
                chosen[key] = values[0] if len(values) == 1 else trial.suggest_categorical(self.param_name(i, key),
                                                                                           list(values))
            per_stage.append(chosen)
        return self._config(per_stage).validate().canonical()

    def from_params(self, params: dict[str, Any]) -> ArchConfig:
        """The ArchConfig a trial's ``params`` describe (inverse of :meth:`sample`)."""
        per_stage = []
        for i, st in enumerate(self.stages):
            per_stage.append({k: params.get(self.param_name(i, k), v[0]) for k, v in st.items()})
        return self._config(per_stage).validate().canonical()

    def random_archs(self, n: int, seed: int | str, exclude: set[ArchConfig] | None = None) -> list[ArchConfig]:
        """``n`` distinct architectures drawn uniformly with ``seed`` (none in ``exclude``), in draw order; fewer
        only when the space runs out of new ones. The one seeded sampler behind benches and table calibration."""
        import random

        rng = random.Random(seed)
        seen: set[ArchConfig] = set(exclude or ())
        out: list[ArchConfig] = []
        for _ in range(100 * n + 1000):
            if len(out) == n:
                break
            arch = self.sample(_SeededTrial(rng))
            if arch not in seen:
                seen.add(arch)
                out.append(arch)
        return out

    def sample_distinct(self, n: int, seed: int | str, exclude: set[ArchConfig] | None = None) -> list[ArchConfig]:
        """Exactly ``n`` distinct architectures drawn uniformly with ``seed``, none in ``exclude`` (see
        :meth:`random_archs`); HilonasError when the space has fewer to give."""
        from hilonas.errors import HilonasError

        out = self.random_archs(n, seed, exclude)
        if len(out) < n:
            raise HilonasError(f"space {self.name} has fewer than {n} distinct architectures to sample "
                               f"(found {len(out)}): ask for fewer")
        return out

    def at_resolution(self, resolution: int) -> SearchSpace:
        """This space with ``img_size = resolution`` (re-validated), or ``self`` when it already is at it."""
        if self.fixed.get("img_size", 224) == resolution:
            return self
        data = {"name": self.name, "description": self.description, "fixed": {**self.fixed, "img_size": resolution},
                "stages": [{k: list(v) for k, v in st.items()} for st in self.stages]}
        return SearchSpace.from_dict(data, source=f"{self.source or self.name} at {resolution} px")

    def iter_archs(self) -> Iterator[ArchConfig]:
        """Every distinct architecture of the space (canonical), in a fixed order. Can be very many."""
        seen = set()
        per_stage_options = [list(itertools.product(*st.values())) for st in self.stages]
        keys = list(STAGE_FIELDS)
        for combo in itertools.product(*per_stage_options):
            cfg = self._config([dict(zip(keys, c)) for c in combo]).canonical()
            if cfg not in seen:
                seen.add(cfg)
                yield cfg

    def size(self) -> int:
        n = 1
        for st in self.stages:
            for values in st.values():
                n *= len(values)
        return n

    def enumerate_blocks(self) -> list:
        """Every distinct latency block (``BlockKey``) any architecture of the space can run, in a stable order.

        Computed per stage (a block depends on its own stage's choices and map size, a merge on two neighbouring
        widths), so it stays cheap for spaces with millions of architectures.
        """
        from hilonas.latency.keys import block_key, head_key, merge_key, stem_key

        probe = self._config([{k: v[0] for k, v in st.items()} for st in self.stages])
        sizes = probe.stage_resolutions()
        keys: dict = {}
        for dim in self.stages[0]["dim"]:
            keys.setdefault(stem_key(probe, dim), None)
        fields = list(STAGE_FIELDS)
        for i, st in enumerate(self.stages):
            h, w = sizes[i]
            for combo in itertools.product(*(st[k] for k in fields)):
                one = self._config([dict(zip(fields, combo))])  # a one-stage config gives the canonical stage
                stage = one.canonical().stage(0)
                keys.setdefault(block_key(stage, one.hidden_dim(0), h, w, probe.qkv_bias), None)
            if i > 0:
                for d_in, d_out in itertools.product(self.stages[i - 1]["dim"], st["dim"]):
                    keys.setdefault(merge_key(d_in, d_out, probe.merge, *sizes[i - 1]), None)
        for dim in self.stages[-1]["dim"]:
            keys.setdefault(head_key(dim, probe.num_classes, *sizes[-1]), None)
        return sorted(keys, key=lambda k: (("stem", "block", "merge", "head").index(k.kind), k.id))

    def describe(self) -> str:
        lines = [f"{self.name}: {self.description}".rstrip(": "), f"  fixed: {self.fixed}"]
        for i, st in enumerate(self.stages):
            lines.append(f"  stage {i}: " + ", ".join(f"{k}={list(v) if len(v) > 1 else v[0]}" for k, v in st.items()))
        lines.append(f"  {self.size():,} combinations")
        return "\n".join(lines)


class _SeededTrial:
    """The slice of Optuna's trial API that :meth:`SearchSpace.sample` calls, drawing uniformly from an RNG."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.rng.choice(list(choices))


def _flat_example(value: Any) -> str:
    """``[64, 96]`` for a nested choice ``[[64, 96]]``: the flat list the user probably meant."""
    flat = [x for x in (value if isinstance(value, (list, set)) else value.values())
            if not isinstance(x, (list, dict, set))]
    return "[" + ", ".join(map(str, flat or ["a", "b"])) + "]"


def _short(stage: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in stage.items()) + "}"
