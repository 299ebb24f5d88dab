"""posenc.rotary_embedding: vLLM's / sgl-kernel's contract, against vLLM's native torch formula."""

from __future__ import annotations

import pytest

import posenc
from conftest import needs_torch, torch

pytestmark = needs_torch

DTYPES = ["float32", "float16", "bfloat16"]


def vllm_native(positions, query, key, head_size, cos_sin_cache, is_neox):
    """vLLM's RotaryEmbedding.forward_native: index the cache by position, split, rotate, concatenate."""
    positions = positions.flatten()
    n = positions.shape[0]
    cos, sin = cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)
    rot = cos_sin_cache.shape[1]

    def rotate(x):
        shape = x.shape
        x = x.view(n, -1, head_size)
        xr, xp = x[..., :rot], x[..., rot:]
        c, s = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
        if is_neox:
            x1, x2 = torch.chunk(xr, 2, dim=-1)
        else:
            x1, x2 = xr[..., ::2], xr[..., 1::2]
        o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
        out = torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)
        return torch.cat((out, xp), dim=-1).reshape(shape)

    return rotate(query), (rotate(key) if key is not None else None)


def cos_sin_cache(max_pos, rot, base, dtype, device):
    inv = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(getattr(torch, dtype)).to(device)


def rand(shape, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(getattr(torch, dtype)).to(device)


@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("rot", [128, 64])
def test_matches_vllm_native_bit_for_bit(device, dtype, cache_dtype, is_neox, rot):
    T, hq, hk, hs = 41, 8, 2, 128
    cache = cos_sin_cache(8192, rot, 1e6, cache_dtype, device)
    g = torch.Generator().manual_seed(7)
    pos = torch.randint(0, 8192, (T,), generator=g).to(device)
    q = rand((T, hq * hs), dtype, 1, device)
    k = rand((T, hk * hs), dtype, 2, device)
    want_q, want_k = vllm_native(pos.cpu(), q.cpu(), k.cpu(), hs, cache.cpu(), is_neox)
    posenc.rotary_embedding(pos, q, k, hs, cache, is_neox)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(q.cpu(), want_q)
    assert torch.equal(k.cpu(), want_k)


def test_key_optional_3d_views_and_int32_positions(device):
    T, H, hs, rot = 9, 4, 64, 64
    cache = cos_sin_cache(1024, rot, 1e4, "float32", device)
    pos = torch.arange(100, 100 + T, dtype=torch.int32, device=device)
    q = rand((T, H, hs), "bfloat16", 3, device)
    want_q, _ = vllm_native(pos.long().cpu(), q.cpu(), None, hs, cache.cpu(), True)
    posenc.rotary_embedding(pos, q, None, hs, cache, True)
    assert torch.equal(q.cpu(), want_q)


def test_batched_positions_and_fused_qkv_slice(device):
    B, S, H, hs = 2, 7, 4, 128
    cache = cos_sin_cache(4096, 128, 5e5, "bfloat16", device)
    qkv = rand((B, S, 3 * H * hs), "bfloat16", 4, device)
    q, k, v = qkv.split(H * hs, dim=-1)
    g = torch.Generator().manual_seed(5)
    pos = torch.randint(0, 4096, (B, S), generator=g).to(device)
    want_q, want_k = vllm_native(pos.cpu(), q.cpu(), k.cpu(), hs, cache.cpu(), True)
    v0 = v.clone()
    posenc.rotary_embedding(pos, q, k, hs, cache, True)
    assert torch.equal(q.cpu(), want_q) and torch.equal(k.cpu(), want_k) and torch.equal(v, v0)


def test_out_of_range_position_never_reads_past_the_cache(device):
    T, H, hs = 6, 2, 64
    cache = cos_sin_cache(512, 64, 1e4, "float32", device)
    q = rand((T, H * hs), "float16", 6, device)
    k = rand((T, H * hs), "float16", 7, device)
    q0, k0 = q.clone(), k.clone()
    pos = torch.tensor([0, 1, 2, 512, 4, 5], device=device)
    if device == "cpu":
        with pytest.raises(posenc.OutOfRangeError, match=r"512 at token index 3.*\[0, 512\)"):
            posenc.rotary_embedding(pos, q, k, hs, cache, True)
        assert torch.equal(q, q0) and torch.equal(k, k0)
    else:
        posenc.rotary_embedding(pos, q, k, hs, cache, True)
        with pytest.raises(posenc.OutOfRangeError, match="512"):
            posenc.check(device)
        # The bad token is left as it was (identity rotation); the others are rotated.
        assert torch.equal(q[3], q0[3]) and torch.equal(k[3], k0[3])
        want_q, _ = vllm_native(pos[[0, 1, 2, 4, 5]].cpu(), q0[[0, 1, 2, 4, 5]].cpu(), None, hs, cache.cpu(), True)
        assert torch.equal(q[[0, 1, 2, 4, 5]].cpu(), want_q)


def test_contract_errors(device):
    cache = cos_sin_cache(64, 32, 1e4, "float32", device)
    q = rand((4, 2 * 64), "bfloat16", 8, device)
    with pytest.raises(posenc.InvalidArgumentError, match="max_position, rot_dim"):
        posenc.rotary_embedding(torch.arange(4, device=device), q, None, 64, cache[0], True)
    with pytest.raises(posenc.InvalidArgumentError):
        posenc.rotary_embedding(torch.arange(4, device=device), q, None, 64, cache[:, :31], True)
