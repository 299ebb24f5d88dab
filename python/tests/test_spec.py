"""RopeSpec from Python: construction, configs (path, text, dict), immutability, errors."""

from __future__ import annotations

import json
import os

import pytest

import posenc
from conftest import REPO


def test_fields_round_trip():
    spec = posenc.RopeSpec(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6)
    assert (spec.head_dim, spec.rotary, spec.pairing, spec.theta) == (128, 64, "interleaved", 5e6)
    assert spec.position_streams == 1
    inv, af = spec.frequencies()
    assert len(inv) == 32 and af == 1.0
    assert inv[0] == 1.0 and inv[1] < 1.0


def test_from_config_path_text_and_dict_agree():
    path = os.path.join(REPO, "configs", "llama-3.1-8b.json")
    text = open(path).read()
    a = posenc.RopeSpec.from_config(path)
    b = posenc.RopeSpec.from_config(text)
    c = posenc.RopeSpec.from_config(json.loads(text))
    assert a.to_dict() == b.to_dict() == c.to_dict()
    assert a.scaling == "llama3" and a.id != b.id


def test_layer_types_and_numerics_override():
    path = os.path.join(REPO, "configs", "gemma-3-4b.json")
    local = posenc.RopeSpec.from_config(path, layer_type="sliding_attention", numerics="accurate")
    full = posenc.RopeSpec.from_config(path, layer_type="full_attention")
    assert local.numerics == "accurate" and full.numerics == "hf_compatible"
    assert local.theta != full.theta
    with pytest.raises(posenc.ConfigError, match="no_such_layer"):
        posenc.RopeSpec.from_config(path, layer_type="no_such_layer")


def test_immutable_and_replace():
    spec = posenc.RopeSpec(head_dim=64)
    with pytest.raises(AttributeError, match="immutable"):
        spec.theta = 5.0
    other = spec.replace(theta=5e5)
    assert other.theta == 5e5 and spec.theta == 10000.0 and other.id != spec.id


def test_bad_fields_raise_named_errors():
    with pytest.raises(posenc.InvalidArgumentError, match="unknown field 'thetta'"):
        posenc.RopeSpec(head_dim=64, thetta=1.0)
    with pytest.raises(posenc.InvalidArgumentError, match="pairing 'zigzag'"):
        posenc.RopeSpec(head_dim=64, pairing="zigzag")
    with pytest.raises(posenc.Error) as info:
        posenc.RopeSpec(head_dim=63)
    assert "63" in str(info.value) and isinstance(info.value, ValueError)


def test_config_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(posenc.FileError, match="nope.json"):
        posenc.RopeSpec.from_config(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama", "num_attention_heads": 8, "hidden_size": 512, "rope_scaling": {"rope_type": "warp", "factor": 2}}')
    with pytest.raises(posenc.ConfigError, match="warp"):
        posenc.RopeSpec.from_config(str(bad))


def test_build_info():
    assert posenc.backend() in ("cuda", "hip", "none")
    assert isinstance(posenc.__version__, str) and posenc.__version__.count(".") == 2
    if not posenc.gpu_available():
        assert posenc.gpu_unavailable_reason() != ""


def test_cpu_kernel_build_names_the_build_that_runs(monkeypatch):
    builds = {"avx512_bf16", "avx512", "avx2", "baseline"}
    spec = posenc.RopeSpec(head_dim=128, pairing="half_split")
    for dtype in ("float32", "float16", "bfloat16"):
        assert spec.cpu_kernel_build(dtype) in builds
    # Only bfloat16 half_split / interleaved run in the AVX512-BF16 build.
    assert spec.cpu_kernel_build("float16") != "avx512_bf16"
    # A fresh spec builds a fresh engine, which reads POSENC_CPU_ISA.
    monkeypatch.setenv("POSENC_CPU_ISA", "baseline")
    forced = posenc.RopeSpec(head_dim=128, pairing="interleaved")
    assert forced.cpu_kernel_build("bfloat16") == "baseline"
    with pytest.raises(posenc.InvalidArgumentError, match="int8"):
        spec.cpu_kernel_build("int8")
