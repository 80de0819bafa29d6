"""Block keys of a hand-computed config: which blocks a network runs and how often."""
from hilonas.config import ArchConfig
from hilonas.latency.keys import BlockKey, arch_blocks


def small_arch(**kw):
    base = dict(depths=(2, 3), embed_dims=(16, 32), num_heads=(1, 4), mlp_ratios=(2.0, 4.0), mixers=("none", "hilo"),
                alphas=(0.0, 0.5), window_sizes=(1, 2), img_size=64, patch_size=4, num_classes=10)
    base.update(kw)
    return ArchConfig(**base).validate()


def test_hand_computed_blocks():
    blocks = arch_blocks(small_arch())
    # 64 px / patch 4 = 16x16 tokens in stage 0, merged to 8x8 in stage 1.
    expected = {
        BlockKey("stem", 16, 64, 64, in_chans=3, patch=4): 1,
        BlockKey("block", 16, 16, 16, hidden=32, mixer="none"): 2,
        BlockKey("merge", 32, 16, 16, in_chans=16, mixer="conv"): 1,
        BlockKey("block", 32, 8, 8, heads=4, hidden=128, mixer="hilo", lofi=2, window=2, qkv_bias=True): 3,
        BlockKey("head", 32, 8, 8, hidden=10): 1,
    }
    assert dict(blocks) == expected
    assert [k.id for k in blocks] == ["stem:c3:d16:p4:64x64", "block:none:d16:f32:16x16", "merge:conv:c16:d32:16x16",
                                      "block:hilo:d32:f128:h4:lo2:w2:b1:8x8", "head:d32:n10:8x8"]


def test_repeated_blocks_are_one_key_counted():
    blocks = arch_blocks(small_arch(depths=(1, 5)))
    hilo = [k for k in blocks if k.mixer == "hilo"]
    assert len(hilo) == 1 and blocks[hilo[0]] == 5
    assert sum(blocks.values()) == 1 + 1 + 1 + 5 + 1


def test_alphas_with_the_same_head_split_share_a_key():
    a = arch_blocks(small_arch(alphas=(0.0, 0.5)))
    b = arch_blocks(small_arch(alphas=(0.0, 0.6)))  # int(4 * 0.6) == 2 as well
    assert a == b
    c = arch_blocks(small_arch(alphas=(0.0, 0.75)))
    assert a != c


def test_key_round_trips_through_dict():
    for key in arch_blocks(small_arch()):
        assert BlockKey.from_dict(key.to_dict()) == key
