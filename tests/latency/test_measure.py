"""block_module builds what the network runs; measure_* time it with the one harness (CPU and, where present, CUDA)."""
import dataclasses

import pytest
import torch

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.keys import arch_blocks
from hilonas.latency.measure import (
    BlockChain,
    block_module,
    figure_ms,
    measure_arch,
    measure_block,
    measure_blocks,
    timing_settings,
)
from hilonas.models import HiLoNet

from .conftest import FAST, fake_fp

ARCH = ArchConfig(depths=(1, 2, 1), embed_dims=(8, 16, 32), num_heads=(1, 2, 4), mlp_ratios=(2.0, 4.0, 2.0),
                  mixers=("none", "hilo", "hilo"), alphas=(0.0, 0.5, 0.75), window_sizes=(1, 2, 1), img_size=40,
                  patch_size=4, num_classes=7).validate()
SETTINGS = {k: v for k, v in FAST.items() if k != "group"}


def network_pieces(model: HiLoNet, x: torch.Tensor):
    """(module, inputs, output) of every block-key position, running the network's own modules in order."""
    pieces = []
    with torch.inference_mode():
        out = model.patch_embed(x)
        pieces.append((model.patch_embed, (x,), out))
        t, H, W = out
        for layer in model.layers:
            for blk in layer.blocks:
                y = blk(t, H, W)
                pieces.append((blk, (t, H, W), y))
                t = y
            if layer.downsample is not None:
                out = layer.downsample(t, H, W)
                pieces.append((layer.downsample, (t, H, W), out))
                t, H, W = out
        logits = model.forward_head(model.norm(t))
        pieces.append((None, (t,), logits))
    return pieces


def test_block_module_is_what_the_network_runs():
    torch.manual_seed(0)
    model = HiLoNet(ARCH).eval()
    x = torch.randn(2, 3, 40, 40)
    keys = [k for k, n in arch_blocks(ARCH).items() for _ in range(n)]
    pieces = network_pieces(model, x)
    assert len(keys) == len(pieces)
    for key, (net_module, net_inputs, net_out) in zip(keys, pieces):
        module, inputs = block_module(key, batch=2)
        assert [tuple(a.shape) if torch.is_tensor(a) else a for a in inputs] == \
               [tuple(a.shape) if torch.is_tensor(a) else a for a in net_inputs], key.id
        with torch.inference_mode():
            out = module(*inputs)
        first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
        assert first(out).shape == first(net_out).shape, key.id
        if isinstance(out, tuple):
            assert out[1:] == net_out[1:]
        if net_module is None:  # the head: the network's norm + mean + head with the same weights
            module.norm.load_state_dict(model.norm.state_dict())
            module.head.load_state_dict(model.head.state_dict())
        else:  # same class and parameter names: the network's weights give the network's output
            assert type(module) is type(net_module)
            module.load_state_dict(net_module.state_dict())
        with torch.inference_mode():
            again = module(*net_inputs)
        torch.testing.assert_close(first(again), first(net_out))


def test_chain_has_distinct_copies_and_keeps_the_shape():
    key = next(k for k in arch_blocks(ARCH) if k.mixer == "hilo")
    module, inputs = block_module(key, chain=3)
    assert isinstance(module, BlockChain) and len(module.blocks) == 3
    assert module.blocks[0].mlp.fc1.weight.data_ptr() != module.blocks[1].mlp.fc1.weight.data_ptr()
    with torch.inference_mode():
        assert module(*inputs).shape == inputs[0].shape
    stem = next(k for k in arch_blocks(ARCH) if k.kind == "stem")
    with pytest.raises(ValueError, match="only 'block' keys"):
        block_module(stem, chain=2)


def test_hilo_lofi_heads_are_reproduced_exactly():
    for heads in range(1, 9):
        for lofi in range(0, heads + 1):
            key = dataclasses.replace(next(k for k in arch_blocks(ARCH) if k.mixer == "hilo"), heads=heads,
                                      dim=8 * heads, hidden=16 * heads, lofi=lofi, window=2)
            module, _ = block_module(key)
            assert module.attn.l_heads == lofi, (heads, lofi)


def test_measure_block_and_arch_on_cpu(cpu_fp):
    fp = dataclasses.replace(cpu_fp, resolution=40)
    keys = list(arch_blocks(ARCH))
    timings = measure_blocks(keys, fp, **SETTINGS)
    assert len(timings) == len(keys)
    for t in timings:
        assert t.median_ms > 0 and t.min_ms <= t.median_ms and t.threads == 1 and t.device == "cpu"
        assert t.runs == SETTINGS["repeats"] * SETTINGS["rounds"]
    one = measure_block(keys[1], fp, **SETTINGS)
    assert one.median_ms > 0
    whole = measure_arch(ARCH, fp, **{**SETTINGS, "rounds": 2})
    assert whole.runs == 2 * SETTINGS["repeats"] and figure_ms(whole, "min") == min(whole.samples_ms)
    assert figure_ms(whole, "median") == whole.median_ms


def test_measure_arch_uses_the_fingerprint_resolution(cpu_fp):
    # A 224-px config measured for a 40-px fingerprint runs at 40 px (fast).
    big = dataclasses.replace(ARCH, img_size=224)
    t = measure_arch(big, dataclasses.replace(cpu_fp, resolution=40), **SETTINGS)
    assert t.median_ms < 1000


def test_timing_settings_are_checked():
    assert timing_settings()["statistic"] == "min"
    with pytest.raises(HilonasError, match="repeats=0"):
        timing_settings(repeats=0)
    with pytest.raises(HilonasError, match="statistic='mean'"):
        timing_settings(statistic="mean")
    with pytest.raises(TypeError, match="unknown measurement setting 'bogus'"):
        timing_settings(bogus=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_fingerprint_without_cuda_is_refused():
    key = next(iter(arch_blocks(ARCH)))
    with pytest.raises(HilonasError, match="no CUDA device"):
        measure_block(key, fake_fp(device_kind="cuda", threads=0, capability="9.0"), **SETTINGS)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_path():
    from hilonas.latency.fingerprint import current_fingerprint

    fp = dataclasses.replace(current_fingerprint("cuda"), resolution=40)
    keys = list(arch_blocks(ARCH))
    timings = measure_blocks(keys, fp, **SETTINGS)
    assert all(t.device.startswith("cuda") and t.median_ms > 0 for t in timings)
    assert measure_arch(ARCH, fp, **SETTINGS).median_ms > 0


def test_steady_allocator_is_set_once_and_recorded(tmp_path, tiny_space, cpu_fp):
    from hilonas.latency.build import build_table
    from hilonas.latency.measure import steady_allocator

    first = steady_allocator()
    assert first == steady_allocator() and first
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=0, **FAST).table
    assert table.settings["allocator"] == first and table.settings["model_code"]


def test_network_passes_pool_to_what_measure_archs_reports(cpu_fp):
    """Whole networks pass by pass (what the build interleaves with block passes) and all at once go through the
    same harness: per pass one Timing per network, pooled to ``rounds * repeats`` samples; a network that does not
    fit the cache is rebuilt every pass and still measured."""
    from hilonas.latency.measure import measure_archs, network_passes
    from hilonas.latency.timing import pool_timings

    fp = dataclasses.replace(cpu_fp, resolution=40)
    other = dataclasses.replace(ARCH, depths=(1, 1, 1)).validate()
    settings = {**SETTINGS, "rounds": 3}
    passes = list(network_passes([ARCH, other], fp, **settings))
    assert len(passes) == 3 and all(len(p) == 2 and all(t.runs == SETTINGS["repeats"] for t in p) for p in passes)
    pooled = [pool_timings([p[i] for p in passes]) for i in range(2)]
    assert [t.runs for t in pooled] == [3 * SETTINGS["repeats"]] * 2
    seen = []
    timings = measure_archs([ARCH, other], fp, on_pass=seen.append, cache_bytes=0, **settings)
    assert seen == [0, 1, 2] and [t.runs for t in timings] == [3 * SETTINGS["repeats"]] * 2
    assert all(t.median_ms > 0 for t in timings)
