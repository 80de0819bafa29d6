"""FasterViT's and EfficientViT's stems and merges in hilonas' family: fields, validation, block keys, the measured
block equals the network's, and the ``mixers`` space with its landmarks."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from hilonas.config import VARIANTS, ArchConfig
from hilonas.errors import ConfigError
from hilonas.latency.keys import arch_blocks
from hilonas.latency.measure import block_module
from hilonas.models import HiLoNet


def _small(stem: str, merge: str) -> ArchConfig:
    """Two stages with the given stem and merge, small enough for CPU tests."""
    patch = 16 if stem == "efficientvit" else 4
    return ArchConfig(depths=(1, 1), embed_dims=(16, 24), num_heads=(2, 2), mlp_ratios=(2.0, 2.0),
                      mixers=("conv", "cga"), alphas=(0.0, 0.0), window_sizes=(1, 3), img_size=8 * patch,
                      patch_size=patch, num_classes=3, stem=stem, merge=merge).validate()


def test_default_stem_leaves_files_and_keys_unchanged():
    arch = VARIANTS["litv2_s"]
    assert "stem" not in arch.to_dict() and arch.stem == "patch"
    assert ArchConfig.from_dict(arch.to_dict()) == arch
    stem = next(k for k in arch_blocks(arch) if k.kind == "stem")
    assert stem.id == "stem:c3:d96:p4:224x224" and stem.to_dict()["mixer"] == ""


@pytest.mark.parametrize("name", ["fastervit_0", "efficientvit_m0"])
def test_named_families_round_trip_and_key_their_stem(name):
    arch = VARIANTS[name]
    assert ArchConfig.from_yaml(arch.to_yaml()) == arch
    assert arch.to_dict()["stem"] == arch.stem
    stem = next(k for k in arch_blocks(arch) if k.kind == "stem")
    assert stem.id.startswith(f"stem:{arch.stem}:c3:")
    merges = {k.mixer for k in arch_blocks(arch) if k.kind == "merge"}
    assert merges == {arch.merge}


@pytest.mark.parametrize("fields,match", [
    (dict(stem="vit"), "stem='vit' is unknown"),
    (dict(merge="pool"), "merge='pool' is unknown"),
    (dict(stem="fastervit", patch_size=6), "patch_size=6 does not suit stem='fastervit'"),
    (dict(stem="efficientvit", patch_size=16, embed_dims=(20, 24)), r"stages\[0\].dim=20 must be divisible by 8"),
])
def test_bad_stem_and_merge_name_the_field(fields, match):
    base = _small("patch", "conv")
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(base, **fields).validate()


@pytest.mark.parametrize("stem,merge", [("fastervit", "fastervit"), ("efficientvit", "efficientvit"),
                                        ("patch", "efficientvit")])
def test_measured_stem_and_merge_are_the_networks(stem, merge):
    """The modules a table times for stem and merge keys compute what the network runs there."""
    arch = _small(stem, merge)
    torch.manual_seed(0)
    net = HiLoNet(arch).eval()
    pieces = {"stem": net.patch_embed, "merge": net.layers[0].downsample}
    for key in arch_blocks(arch):
        if key.kind not in pieces:
            continue
        module, inputs = block_module(key, batch=2)
        module.load_state_dict(pieces[key.kind].state_dict(), strict=True)
        with torch.no_grad():
            got, want = module(*inputs), pieces[key.kind](*inputs)
        assert torch.allclose(got[0], want[0], atol=1e-6) and got[1:] == want[1:], key.id


def test_mixers_space_choices_and_landmarks_come_from_its_table():
    from hilonas.spaces import SearchSpace

    space = SearchSpace.load("mixers")
    assert space.stages[2]["mixer"] == ("hilo", "sra", "window", "hat", "cga")
    assert space.stages[3]["mixer"] == ("hilo", "msa", "hat")
    labels = [label for label, _ in space.references]
    assert labels == ["litv2-s-like", "fastervit-0-like", "efficientvit-m-like"]
    blocks = set(space.enumerate_blocks())
    for label, arch in space.references:
        assert set(arch_blocks(arch)) <= blocks, label  # landmarks need no block outside the table
