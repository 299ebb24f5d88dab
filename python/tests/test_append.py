"""posenc.append_kv_: fused RoPE + KV-cache append from torch, against apply_rope plus a scatter."""

from __future__ import annotations

import pytest

import posenc
from conftest import needs_torch, torch

pytestmark = needs_torch


def rand(shape, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(device)


def scatter_reference(k_rot, v, slots, k_cache, v_cache, layout, k_scale, v_scale):
    """What the caches must hold: each token's rotated K and V rows at its slot, cast."""
    page = k_cache.shape[2] if layout == "paged_hnd" else k_cache.shape[1]
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        b, o = divmod(slot, page)
        for cache, x, scale in ((k_cache, k_rot[t], k_scale), (v_cache, v[t], v_scale)):
            row = x.float()
            if cache.dtype == torch.float8_e4m3fn:
                row = (row / scale).clamp(-448, 448)
            if layout == "paged_hnd":
                cache[b, :, o] = row.to(cache.dtype)
            else:
                cache[b, o] = row.to(cache.dtype)


@pytest.mark.parametrize("layout", ["contiguous", "paged_nhd", "paged_hnd"])
@pytest.mark.parametrize("cache_dtype", ["bfloat16", "float32", "float8_e4m3fn"])
def test_append_matches_apply_then_scatter(device, layout, cache_dtype):
    spec = posenc.RopeSpec(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6)
    T, hq, hk, D = 13, 4, 2, 128
    blocks, page = 6, 4
    cdt = getattr(torch, cache_dtype)
    q = rand((T, hq, D), torch.bfloat16, 1, device)
    k = rand((T, hk, D), torch.bfloat16, 2, device)
    v = rand((T, hk, D), torch.bfloat16, 3, device)
    pos = torch.randint(0, 100000, (T,), generator=torch.Generator().manual_seed(4)).to(device)
    perm = torch.randperm(blocks * page, generator=torch.Generator().manual_seed(5))[:T]
    slots = perm.clone()
    slots[[2, 7]] = -1  # padding tokens: K and V not written
    slots = slots.to(device)
    shape = (blocks, hk, page, D) if layout == "paged_hnd" else (blocks, page, hk, D)
    poison = torch.full(shape, 3.0).to(cdt).to(device)
    k_cache, v_cache = poison.clone(), poison.clone()
    k_scale, v_scale = (0.5, 0.25) if cache_dtype == "float8_e4m3fn" else (1.0, 1.0)

    q_want, k_rot = posenc.apply_rope(q, k, pos, spec)
    k_want, v_want = poison.clone().cpu(), poison.clone().cpu()
    scatter_reference(k_rot.cpu(), v.cpu(), slots.cpu(), k_want, v_want, layout, k_scale, v_scale)

    k_in = k.clone()
    posenc.append_kv_(q, k, v, pos, slots, k_cache, v_cache, spec, layout=layout, k_scale=k_scale, v_scale=v_scale)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(q, q_want)
    assert torch.equal(k, k_in), "K itself is not written"
    assert torch.equal(k_cache.cpu().view(torch.uint8), k_want.view(torch.uint8))
    assert torch.equal(v_cache.cpu().view(torch.uint8), v_want.view(torch.uint8))


def test_append_errors(device):
    spec = posenc.RopeSpec(head_dim=64)
    q = rand((4, 2, 64), torch.float16, 1, device)
    k = rand((4, 1, 64), torch.float16, 2, device)
    v = rand((4, 1, 64), torch.float16, 3, device)
    pos = torch.arange(4, device=device)
    cache = torch.zeros((2, 4, 1, 64), dtype=torch.float16, device=device)
    with pytest.raises(posenc.InvalidArgumentError, match="layout 'ragged'"):
        posenc.append_kv_(q, k, v, pos, torch.arange(4, device=device), cache, cache.clone(), spec, layout="ragged")
    with pytest.raises(posenc.InvalidArgumentError, match="slots: dtype torch.int32"):
        posenc.append_kv_(q, k, v, pos, torch.arange(4, dtype=torch.int32, device=device), cache, cache.clone(), spec)
    with pytest.raises(posenc.InvalidArgumentError, match="holds 4 heads"):
        posenc.append_kv_(q, k, v, pos, torch.arange(4, device=device), cache.view(2, 1, 4, 64), cache.clone().view(2, 1, 4, 64), spec)
    if device == "cpu":
        q0 = q.clone()
        with pytest.raises(posenc.OutOfRangeError, match="slot 8 .*token index 1|token index 1.*8"):
            posenc.append_kv_(q, k, v, pos, torch.tensor([0, 8, 1, 2]), cache, cache.clone(), spec)
        assert torch.equal(q, q0)
