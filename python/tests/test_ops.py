"""The spec ops (apply_rope_, apply_rope) on torch tensors: exactness, layouts, views, errors."""

from __future__ import annotations

import numpy as np
import pytest

import posenc
from conftest import hf_reference, needs_torch, reference64, torch

pytestmark = needs_torch

DTYPES = ["float32", "float16", "bfloat16"]
SPECS = {
    "llama": dict(head_dim=128, theta=5e5),
    "glm4_partial_interleaved": dict(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6),
    "deepseek_interleaved_to_half": dict(head_dim=64, pairing="interleaved_to_half", theta=1e4),
    "phi_partial_offset": dict(head_dim=96, rotary_dim=32, rotary_offset=32, theta=1e4),
    "yarn": dict(head_dim=64, theta=1e6, scaling="yarn", factor=4.0, original_max_position_embeddings=32768),
}


def make(shape, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(getattr(torch, dtype)).to(device)


def positions(n, seed, limit=131072, dtype=torch.int64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, limit, (n,), generator=g, dtype=torch.int64).to(dtype).to(device)


@pytest.mark.parametrize("arithmetic", ["engine", "exact"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_in_place_matches_hf_formula_bit_for_bit(device, name, dtype, arithmetic):
    """engine: torch's own cos/sin on the device; exact: correctly rounded (the same bits everywhere)."""
    spec = posenc.RopeSpec(**SPECS[name], hf_arithmetic=arithmetic)
    T, hq, hk = 37, 6, 2
    q = make((T, hq, spec.head_dim), dtype, 1, device)
    k = make((T, hk, spec.head_dim), dtype, 2, device)
    pos = positions(T, 3, device=device)
    want_q = hf_reference(q.cpu(), pos.cpu(), spec, device=device)
    want_k = hf_reference(k.cpu(), pos.cpu(), spec, device=device)
    posenc.apply_rope_(q, k, pos, spec)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(q.cpu(), want_q), "Q differs from the HF formula"
    assert torch.equal(k.cpu(), want_k), "K differs from the HF formula"


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_accurate_near_float64(device, dtype):
    spec = posenc.RopeSpec(head_dim=128, theta=1e6, numerics="accurate")
    T = 64
    q = make((T, 4, 128), dtype, 4, device)
    pos = positions(T, 5, limit=1 << 20, device=device)
    want = reference64(q.float().cpu().numpy(), pos.cpu().numpy(), spec)
    out, none = posenc.apply_rope(q, None, pos, spec)
    assert none is None
    err = np.abs(out.float().cpu().numpy() - want).max()
    ulp = {"float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}[dtype]
    assert err <= 4 * ulp * np.abs(want).max(), err


def test_out_of_place_leaves_inputs_and_writes_every_element(device):
    spec = posenc.RopeSpec(head_dim=64, rotary_dim=32, theta=1e4)
    q = make((20, 3, 64), "bfloat16", 6, device)
    k = make((20, 1, 64), "bfloat16", 7, device)
    pos = positions(20, 8, device=device)
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = posenc.apply_rope(q, k, pos, spec)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    posenc.apply_rope_(q0, k0, pos, spec)
    assert torch.equal(q_out, q0) and torch.equal(k_out, k0)  # pass-through dims copied too


@pytest.mark.parametrize("pos_dtype", ["int32", "int64"])
def test_fused_qkv_slices_gqa_and_flattened_heads(device, pos_dtype):
    """Q and K as strided slices of one [T, (Hq + 2 Hk) * D] buffer, vLLM-style [T, H*D] views."""
    spec = posenc.RopeSpec(head_dim=128, theta=1e6)
    T, hq, hk, D = 29, 8, 2, 128
    qkv = make((T, (hq + 2 * hk) * D), "bfloat16", 9, device)
    q, k, v = qkv.split([hq * D, hk * D, hk * D], dim=-1)
    pos = positions(T, 10, dtype=getattr(torch, pos_dtype), device=device)
    want_q = hf_reference(q.cpu().reshape(T, hq, D), pos.cpu().long(), spec, device=device)
    want_k = hf_reference(k.cpu().reshape(T, hk, D), pos.cpu().long(), spec, device=device)
    v0 = v.clone()
    posenc.apply_rope_(q, k, pos, spec)
    assert torch.equal(q.cpu().reshape(T, hq, D), want_q)
    assert torch.equal(k.cpu().reshape(T, hk, D), want_k)
    assert torch.equal(v, v0)


def test_batched_layouts_merge_tokens(device):
    """[B, S, H, D] and HF's transposed [B, H, S, D].transpose(1, 2) views; positions [B, S]."""
    spec = posenc.RopeSpec(head_dim=64, theta=1e4)
    B, S, H, D = 3, 5, 4, 64
    x = make((B, S, H, D), "float16", 11, device).transpose(1, 2)  # HF: proj(x).view(B, S, H, D).transpose(1, 2)
    pos = positions(B * S, 12, limit=4096, device=device).reshape(B, S)
    want = hf_reference(x.transpose(1, 2).reshape(B * S, H, D).cpu(), pos.reshape(-1).cpu(), spec, device=device)
    posenc.apply_rope_(x.transpose(1, 2), None, pos, spec)
    assert torch.equal(x.transpose(1, 2).reshape(B * S, H, D).cpu(), want)
    # A dense [B, H, S, D] has no single token stride: a clear error, nothing written.
    dense = make((B, H, S, D), "float16", 12, device)
    before = dense.clone()
    with pytest.raises(posenc.InvalidArgumentError, match="do not merge into one token stride"):
        posenc.apply_rope_(dense.transpose(1, 2), None, pos, spec)
    assert torch.equal(dense, before)


def test_mrope_streams(device):
    spec = posenc.RopeSpec(head_dim=128, theta=1e6, mrope_section=[16, 24, 24])
    T = 12
    q = make((T, 4, 128), "bfloat16", 13, device)
    pos = torch.stack([positions(T, 14 + s, limit=1000) for s in range(3)]).to(device)
    same = pos[0:1].expand(3, T).contiguous()
    q_same = q.clone()
    posenc.apply_rope_(q_same, None, same, spec)
    one = posenc.RopeSpec(head_dim=128, theta=1e6)
    q_one = q.clone()
    posenc.apply_rope_(q_one, None, pos[0].contiguous(), one)
    assert torch.equal(q_same, q_one), "M-RoPE with equal streams must equal 1-D RoPE"
    q_grid = q.clone()
    posenc.apply_rope_(q_grid, None, pos, spec)
    assert not torch.equal(q_grid, q_one)
    with pytest.raises(posenc.InvalidArgumentError, match="3 position streams"):
        posenc.apply_rope_(q.clone(), None, pos[0].contiguous(), spec)


def test_errors_leave_data_untouched(device):
    spec = posenc.RopeSpec(head_dim=64, theta=1e4, position_limit=4096)
    q = make((6, 2, 64), "bfloat16", 15, device)
    k = make((6, 1, 64), "bfloat16", 16, device)
    q0, k0 = q.clone(), k.clone()
    with pytest.raises(posenc.InvalidArgumentError, match="last dim 60"):
        posenc.apply_rope_(q[..., :60], None, positions(6, 1, device=device), spec)
    with pytest.raises(posenc.InvalidArgumentError, match="5 values for 6 tokens"):
        posenc.apply_rope_(q, k, positions(5, 1, device=device), spec)
    with pytest.raises(posenc.InvalidArgumentError, match="dtype torch.float64"):
        posenc.apply_rope_(q.double(), None, positions(6, 1, device=device), spec)
    with pytest.raises(posenc.InvalidArgumentError, match="int32, int64"):
        posenc.apply_rope_(q, k, positions(6, 1, device=device).float(), spec)
    with pytest.raises(posenc.InvalidArgumentError, match="k tokens 5 differs"):
        posenc.apply_rope_(q, k[:5], positions(6, 1, device=device), spec)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    bad = torch.tensor([0, 1, 2, 3, 4096, 5], device=device)
    if device == "cpu":
        with pytest.raises(posenc.OutOfRangeError, match=r"4096 at token index 4 .*\[0, 4096\)"):
            posenc.apply_rope_(q, k, bad, spec)
        assert torch.equal(q, q0) and torch.equal(k, k0)
    else:
        posenc.apply_rope_(q, k, bad, spec)  # recorded on the device, raised by check()
        with pytest.raises(posenc.OutOfRangeError, match="4096"):
            posenc.check(device)
        posenc.check(device)  # cleared


def test_device_mismatch_is_an_error():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    spec = posenc.RopeSpec(head_dim=64)
    q = make((4, 2, 64), "bfloat16", 1, "cuda")
    with pytest.raises(posenc.InvalidArgumentError, match="positions is on cpu"):
        posenc.apply_rope_(q, None, torch.arange(4), spec)
