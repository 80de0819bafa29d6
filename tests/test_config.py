"""ArchConfig: round trips and every rejection path of validate()/from_dict()."""
import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hilonas.config import VARIANTS, ArchConfig, resolve_arch
from hilonas.errors import ConfigError


def tiny(**kw) -> ArchConfig:
    base = dict(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(4.0, 4.0), mixers=("none", "hilo"),
                alphas=(0.9, 0.5), window_sizes=(2, 2), img_size=32, num_classes=10)
    base.update(kw)
    return ArchConfig(**base)


@st.composite
def arch_configs(draw):
    n = draw(st.integers(1, 4))
    heads = [draw(st.sampled_from([1, 2, 3, 4])) for _ in range(n)]
    dims = [h * draw(st.integers(1, 32)) for h in heads]
    return ArchConfig(
        depths=tuple(draw(st.integers(1, 4)) for _ in range(n)), embed_dims=tuple(dims), num_heads=tuple(heads),
        mlp_ratios=tuple(draw(st.sampled_from([1.0, 2.5, 3.5, 4.0])) for _ in range(n)),
        mixers=tuple(draw(st.sampled_from(["none", "hilo", "msa", "sra", "window"])) for _ in range(n)),
        alphas=tuple(draw(st.floats(0, 1, allow_nan=False)) for _ in range(n)),
        window_sizes=tuple(draw(st.integers(1, 4)) for _ in range(n)),
        img_size=draw(st.sampled_from([64, 96, 224])), num_classes=draw(st.integers(0, 1000)),
        merge=draw(st.sampled_from(["conv", "dtm"])), qkv_bias=draw(st.booleans()),
        drop_path_rate=draw(st.sampled_from([0.0, 0.1, 0.2])))


@settings(max_examples=60, deadline=None, derandomize=True)  # the same examples in every run
@given(arch_configs())
def test_dict_and_yaml_round_trip_exact(arch):
    try:
        arch = arch.validate()
    except ConfigError:  # the strategy can draw a window larger than a late stage's map: not an architecture
        assume(False)
    assert ArchConfig.from_dict(arch.to_dict()) == arch
    again = ArchConfig.from_yaml(arch.to_yaml())
    assert again == arch
    assert again.to_yaml() == arch.to_yaml()
    assert hash(again) == hash(arch)


def test_variants_round_trip_and_resolve(tmp_path):
    for name, arch in VARIANTS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(arch.to_yaml())
        assert resolve_arch(path) == arch
        assert resolve_arch(name) == arch
        assert ArchConfig.from_dict({"arch": arch.to_dict(), "provenance": {}}) == arch


def test_list_and_tuple_inputs_compare_equal():
    assert tiny(depths=[1, 1]) == tiny()
    assert tiny(mlp_ratios=(4, 4)).mlp_ratios == (4.0, 4.0)


@pytest.mark.parametrize("change, needles", [
    (dict(embed_dims=(16, 100), num_heads=(1, 3)), ["stages[1].dim=100", "heads=3", "multiple"]),
    (dict(alphas=(0.9, 1.5)), ["stages[1].alpha=1.5", "[0, 1]"]),
    (dict(alphas=(0.9, -0.1)), ["stages[1].alpha=-0.1"]),
    (dict(depths=(1, 0)), ["stages[1].depth=0", "remove the stage"]),
    (dict(window_sizes=(2, 3), pad=False), ["stages[1].window=3", "4x4", "pad"]),
    (dict(window_sizes=(2, 0)), ["stages[1].window=0"]),
    (dict(mixers=("none", "flash")), ["stages[1].mixer='flash'", "hilo"]),
    (dict(num_heads=(1, 0)), ["stages[1].heads=0"]),
    (dict(mlp_ratios=(4.0, 0.0)), ["stages[1].mlp_ratio=0.0"]),
    (dict(embed_dims=(16, 0)), ["stages[1].dim=0"]),
    (dict(depths=(1,)), ["embed_dims has 2 entries", "one entry per stage"]),
    (dict(merge="pool"), ["merge='pool'", "conv"]),
    (dict(img_size=0), ["img_size=0"]),
    (dict(patch_size=0), ["patch_size=0"]),
    (dict(in_chans=0), ["in_chans=0"]),
    (dict(num_classes=-1), ["num_classes=-1"]),
    (dict(drop_path_rate=1.0), ["drop_path_rate=1.0"]),
    (dict(mixers=("none", "sra"), window_sizes=(1, 8)), ["stages[1].window=8", "sra spatial reduction ratio", "<= 4"]),
])
def test_validate_rejections_name_the_field(change, needles):
    with pytest.raises(ConfigError) as err:
        tiny(**change).validate()
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_padding_allows_windows_that_do_not_tile():
    tiny(window_sizes=(2, 3), pad=True).validate()
    tiny(window_sizes=(2, 2), pad=False).validate()  # 4x4 map tiles by 2


def test_alpha_giving_zero_heads_is_fine():
    tiny(alphas=(0.9, 0.0)).validate()  # all Hi-Fi
    tiny(alphas=(0.9, 0.4), num_heads=(1, 2)).validate()  # int(0.8) = 0 Lo-Fi heads


@pytest.mark.parametrize("data, needle", [
    ({"stages": []}, "stages"),
    ({"stages": [{"depth": 1}]}, "stages[0].dim is missing"),
    ({"stages": [{"depth": 1, "dim": 8, "colour": 1}]}, "stages[0].colour"),
    ({"stages": [{"depth": "two", "dim": 8}]}, "stages[0].depth='two'"),
    ({"stages": [{"depth": 1, "dim": 8, "alpha": "x"}]}, "stages[0].alpha='x'"),
    ({"stages": [{"depth": 1, "dim": 8}], "resolution": 3}, "'resolution'"),
    ({"stages": [{"depth": 1, "dim": 8}], "qkv_bias": "yes"}, "qkv_bias='yes'"),
    ({"stages": [{"depth": 1, "dim": 8}], "img_size": 22.5}, "img_size=22.5"),
    ([1, 2], "mapping"),
])
def test_from_dict_rejections(data, needle):
    with pytest.raises(ConfigError) as err:
        ArchConfig.from_dict(data)
    assert needle in str(err.value)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        ArchConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n  {depth: 1")
    with pytest.raises(ConfigError, match=str(bad)):
        ArchConfig.load(bad)
    with pytest.raises(ConfigError, match="neither a known variant"):
        resolve_arch("litv2_xxl")


def test_canonical_ignores_unused_fields():
    a = tiny(mixers=("none", "msa"), alphas=(0.1, 0.2), window_sizes=(3, 4), num_heads=(7, 2))
    b = tiny(mixers=("none", "msa"), alphas=(0.5, 0.7), window_sizes=(1, 2), num_heads=(1, 2))
    assert a != b and a.canonical() == b.canonical()
    hilo_ws1 = tiny(window_sizes=(2, 1), alphas=(0.9, 0.3)).canonical()
    assert hilo_ws1.alphas[1] == 1.0


def test_stage_resolutions_round_up():
    arch = tiny(img_size=30, depths=(1, 1, 1), embed_dims=(8, 8, 8), num_heads=(1, 1, 1), mlp_ratios=(4, 4, 4),
                mixers=("none",) * 3, alphas=(0, 0, 0), window_sizes=(1, 1, 1))
    assert arch.stage_resolutions() == [(8, 8), (4, 4), (2, 2)]
    assert dataclasses.replace(arch, img_size=224).stage_resolutions() == [(56, 56), (28, 28), (14, 14)]
