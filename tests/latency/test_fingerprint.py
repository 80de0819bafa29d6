"""Hardware fingerprint: stable id, differences by field, refusal of CUDA without a GPU."""
import pytest
import torch

from hilonas.errors import HilonasError
from hilonas.latency.fingerprint import Fingerprint, current_fingerprint

from .conftest import fake_fp


def test_id_is_stable_readable_and_field_sensitive():
    fp = fake_fp()
    assert fp.id == fake_fp().id
    assert fp.id.startswith("cpu-test-cpu-9000-t1-b1-r32-")
    assert len(fp.id.rsplit("-", 1)[1]) == 8
    assert fake_fp(torch_version="2.0.1").id != fp.id  # a field outside the readable prefix still changes the id


def test_round_trip_and_diff():
    fp = fake_fp()
    assert Fingerprint.from_dict(fp.to_dict()) == fp
    other = fake_fp(threads=2, batch=8)
    assert fp.diff(other) == ["threads", "batch"]
    assert fp.diff(fp) == []
    assert "threads: 1 != 2" in fp.describe_diff(other)


@pytest.mark.parametrize("data, needle", [
    ({"device_kind": "cpu"}, "fingerprint.device_name is missing"),
    ({**fake_fp().to_dict(), "threads": "one"}, "fingerprint.threads='one'"),
    ("nope", "mapping"),
])
def test_from_dict_names_the_bad_field(data, needle):
    with pytest.raises(HilonasError, match=needle):
        Fingerprint.from_dict(data)


def test_current_cpu_fingerprint():
    fp = current_fingerprint("cpu", threads=2, batch=4, resolution=96)
    assert fp.device_kind == "cpu" and fp.device_name and fp.logical_cores >= 1
    assert (fp.threads, fp.batch, fp.resolution, fp.backend, fp.dtype) == (2, 4, 96, "eager", "float32")
    assert fp.torch_version == torch.__version__
    assert fp == current_fingerprint("cpu", threads=2, batch=4, resolution=96)


@pytest.mark.parametrize("kw, needle", [
    ({"target": "tpu"}, "--target='tpu'"),
    ({"threads": 0}, "--threads=0"),
    ({"batch": -1}, "--batch=-1"),
    ({"dtype": "float16"}, "--dtype=float16 runs on CUDA only"),
    ({"dtype": "int8"}, "--dtype='int8'"),
])
def test_bad_settings_are_refused(kw, needle):
    target = kw.pop("target", "cpu")
    with pytest.raises(HilonasError, match=needle):
        current_fingerprint(target, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(HilonasError, match="no CUDA device"):
        current_fingerprint("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fingerprint():
    fp = current_fingerprint("cuda")
    assert fp.device_kind == "cuda" and fp.capability and fp.id.startswith("cuda-")
