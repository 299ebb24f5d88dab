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


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("q_scale", [0.05, 0.0078125])
def test_append_q_out_fp8(device, dtype, q_scale):
    """fp8 serving: q_out (float8_e4m3fn, q's shape) receives the rotated q divided by q_scale and
    cast as torch casts it after clamping (what vLLM's scaled_fp8_quant does), q is not written;
    the caches are as without q_out. q_scale 2^-7 drives values past 448 (saturation)."""
    spec = posenc.RopeSpec(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6)
    act = getattr(torch, dtype)
    T, hq, hk, D = 13, 4, 2, 128
    q = rand((T, hq, D), act, 11, device) * 3
    k = rand((T, hk, D), act, 12, device)
    v = rand((T, hk, D), act, 13, device)
    pos = torch.randint(0, 100000, (T,), generator=torch.Generator().manual_seed(14)).to(device)
    slots = torch.randperm(24, generator=torch.Generator().manual_seed(15))[:T].to(device)
    fp8 = torch.float8_e4m3fn
    caches = [torch.full((6, 4, hk, D), 3.0).to(fp8).to(device) for _ in range(4)]

    q_in = q.clone()
    q_rot = q.clone()
    posenc.append_kv_(q_rot, k, v, pos, slots, caches[0], caches[1], spec, k_scale=0.5, v_scale=0.25)
    q_out = torch.full((T, hq, D), 1.0).to(fp8).to(device)
    posenc.append_kv_(q, k, v, pos, slots, caches[2], caches[3], spec, k_scale=0.5, v_scale=0.25,
                      q_out=q_out, q_scale=q_scale)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(q, q_in), "q is only read with q_out"
    want = (q_rot.float() / q_scale).clamp(-448, 448).to(fp8)
    assert torch.equal(q_out.view(torch.uint8), want.view(torch.uint8))
    for got, ref in zip(caches[2:], caches[:2]):
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_append_per_head_fp8_scales(device):
    """Per-head fp8 scales: each head of q_out and of the caches equals a per-tensor call at that
    head's scales; k_scale / v_scale / q_scale stay 1 beside them."""
    spec = posenc.RopeSpec(head_dim=128, theta=1e6)
    T, hq, hk, D = 9, 4, 2, 128
    fp8 = torch.float8_e4m3fn
    q = rand((T, hq, D), torch.bfloat16, 21, device) * 3
    k = rand((T, hk, D), torch.bfloat16, 22, device) * 3
    v = rand((T, hk, D), torch.bfloat16, 23, device) * 3
    pos = torch.randint(0, 100000, (T,), generator=torch.Generator().manual_seed(24)).to(device)
    slots = torch.randperm(16, generator=torch.Generator().manual_seed(25))[:T].to(device)
    ks, vs, qs = [0.25, 4.0], [0.0078125, 0.5], [0.1, 0.2, 0.4, 8.0]
    kc, vc = (torch.zeros((4, 4, hk, D), dtype=fp8, device=device) for _ in range(2))
    q_out = torch.zeros((T, hq, D), dtype=fp8, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    posenc.append_kv_(q, k, v, pos, slots, kc, vc, spec, q_out=q_out, k_head_scales=torch.tensor(ks, **f32),
                      v_head_scales=torch.tensor(vs, **f32), q_head_scales=torch.tensor(qs, **f32))
    posenc.check(device if device == "cuda" else None)
    for h in range(hq):
        kc1, vc1 = (torch.zeros((4, 4, hk, D), dtype=fp8, device=device) for _ in range(2))
        out1 = torch.zeros((T, hq, D), dtype=fp8, device=device)
        posenc.append_kv_(q, k, v, pos, slots, kc1, vc1, spec, k_scale=ks[h % hk], v_scale=vs[h % hk],
                          q_out=out1, q_scale=qs[h])
        assert torch.equal(q_out[:, h].view(torch.uint8), out1[:, h].view(torch.uint8)), f"q_out head {h}"
        if h < hk:
            assert torch.equal(kc[:, :, h].view(torch.uint8), kc1[:, :, h].view(torch.uint8)), f"k head {h}"
            assert torch.equal(vc[:, :, h].view(torch.uint8), vc1[:, :, h].view(torch.uint8)), f"v head {h}"


def small_fp8_append(device):
    """The refusal tests' call: 4 tokens, Q 2 heads, K and V 1 head of 64, bf16, an fp8 paged cache
    (spec, q, k, v, positions, slots, cache)."""
    return (posenc.RopeSpec(head_dim=64), rand((4, 2, 64), torch.bfloat16, 1, device),
            rand((4, 1, 64), torch.bfloat16, 2, device), rand((4, 1, 64), torch.bfloat16, 3, device),
            torch.arange(4, device=device), torch.arange(4, device=device),
            torch.zeros((2, 4, 1, 64), dtype=torch.float8_e4m3fn, device=device))


def test_append_per_head_scale_errors(device):
    spec, q, k, v, pos, slots, cache = small_fp8_append(device)
    f32 = dict(dtype=torch.float32, device=device)
    with pytest.raises(posenc.InvalidArgumentError, match=r"k_head_scales: shape \[2\], want \[1\]"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec, k_head_scales=torch.ones(2, **f32))
    with pytest.raises(posenc.InvalidArgumentError, match="v_head_scales: dtype torch.float64"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec,
                          v_head_scales=torch.ones(1, dtype=torch.float64, device=device))
    with pytest.raises(posenc.InvalidArgumentError, match="q_head_scales: given without q_out"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec, q_head_scales=torch.ones(2, **f32))
    with pytest.raises(posenc.InvalidArgumentError, match="cache.k_scale 0.500000 must be 1 when cache.k_head_scales"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec, k_scale=0.5,
                          k_head_scales=torch.ones(1, **f32))
    bad = torch.tensor([float("nan")], **f32)
    if device == "cuda":
        c = cache.clone()
        posenc.append_kv_(q, k, v, pos, slots, cache.clone(), c, spec, v_head_scales=bad)
        with pytest.raises(posenc.InvalidArgumentError, match=r"cache.v_head_scales\[0\] = nan"):
            posenc.check(device)
        assert torch.equal(c.view(torch.uint8), torch.zeros_like(c.view(torch.uint8))), "head 0's V rows unwritten"
    else:
        with pytest.raises(posenc.InvalidArgumentError, match=r"cache.v_head_scales\[0\] = nan"):
            posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec, v_head_scales=bad)


def test_append_q_out_errors(device):
    spec, q, k, v, pos, slots, cache = small_fp8_append(device)
    with pytest.raises(posenc.InvalidArgumentError, match="q_out: dtype torch.bfloat16 differs"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec, q_out=q.clone())
    with pytest.raises(posenc.InvalidArgumentError, match="q_out: shape"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec,
                          q_out=torch.zeros((4, 1, 64), dtype=torch.float8_e4m3fn, device=device))
    q0 = q.clone()
    with pytest.raises(posenc.InvalidArgumentError, match="q_out.scale"):
        posenc.append_kv_(q, k, v, pos, slots, cache, cache.clone(), spec,
                          q_out=torch.zeros((4, 2, 64), dtype=torch.float8_e4m3fn, device=device), q_scale=0.0)
    assert torch.equal(q, q0)


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


def test_mla_rope_slice_and_latent_cache(device):
    """DeepSeek-V3: q_pe is a view of q_full[..., 128:] rotated in place; k_pe and c_kv are views of
    the compressed KV; the cache row is [c_kv | rotated k_pe] (576), FlashMLA's 4-D shape and vLLM's 3-D."""
    import os
    from conftest import REPO
    spec = posenc.RopeSpec.from_config(os.path.join(REPO, "configs", "deepseek-v3.json"))
    T, H, nope, rope, latent = 11, 4, 128, 64, 512
    blocks, page = 3, 8
    q_full = rand((T, H, nope + rope), torch.bfloat16, 1, device)
    ckv = rand((T, latent + rope), torch.bfloat16, 2, device)
    pos = torch.randint(0, 163840, (T,), generator=torch.Generator().manual_seed(3)).to(device)
    slots = torch.randperm(blocks * page, generator=torch.Generator().manual_seed(4))[:T]
    slots[[1, 6]] = -1
    slots = slots.to(device)
    q_pe, k_pe, c_kv = q_full[..., nope:], ckv[:, latent:], ckv[:, :latent]

    q_want, k_rot = posenc.apply_rope(q_pe.contiguous(), k_pe.unsqueeze(1).contiguous(), pos, spec)
    for shape in ((blocks, page, latent + rope), (blocks, page, 1, latent + rope)):
        for dtype, scale in ((torch.bfloat16, 1.0), (torch.float8_e4m3fn, 0.25)):
            q = q_full.clone()
            cache = torch.full(shape, 3.0).to(dtype).to(device)
            want = cache.clone().cpu().view(blocks * page, latent + rope)
            for t, s in enumerate(slots.tolist()):
                if s >= 0:
                    row = torch.cat([c_kv[t].float().cpu(), k_rot[t, 0].float().cpu()])
                    if dtype == torch.float8_e4m3fn:
                        row = (row / scale).clamp(-448, 448)
                    want[s] = row.to(dtype)
            ckv_in = ckv.clone()
            posenc.append_kv_(q[..., nope:], k_pe, c_kv, pos, slots, cache, None, spec, layout="mla",
                              k_scale=scale, v_scale=scale)
            posenc.check(device if device == "cuda" else None)
            assert torch.equal(q[..., nope:], q_want)
            assert torch.equal(q[..., :nope], q_full[..., :nope]), "the nope part is not written"
            assert torch.equal(ckv, ckv_in)
            assert torch.equal(cache.cpu().reshape(blocks * page, -1).view(torch.uint8), want.view(torch.uint8))


def test_mla_errors(device):
    spec = posenc.RopeSpec(head_dim=64, pairing="interleaved_to_half")
    q = rand((4, 2, 192), torch.bfloat16, 1, device)[..., 128:]
    ckv = rand((4, 576), torch.bfloat16, 2, device)
    pos = torch.arange(4, device=device)
    slots = torch.arange(4, device=device)
    cache = torch.zeros((2, 4, 576), dtype=torch.bfloat16, device=device)
    with pytest.raises(posenc.InvalidArgumentError, match="v_cache must be None"):
        posenc.append_kv_(q, ckv[:, 512:], ckv[:, :512], pos, slots, cache, cache.clone(), spec, layout="mla")
    with pytest.raises(posenc.InvalidArgumentError, match="last dim 256 is neither head_dim 512"):
        posenc.append_kv_(q, ckv[:, 512:], ckv[:, :256], pos, slots, cache, None, spec, layout="mla")
    with pytest.raises(posenc.InvalidArgumentError, match="latent_dim 500 must be a multiple of head_dim 64"):
        posenc.append_kv_(q, ckv[:, 512:], ckv[:, :500], pos, slots, cache[..., :564].contiguous(), None, spec,
                          layout="mla")
    with pytest.raises(posenc.InvalidArgumentError, match=r"want \[blocks, page, latent \+ rope\]"):
        posenc.append_kv_(q, ckv[:, 512:], ckv[:, :512], pos, slots, cache.view(2, 2, 2, 576), None, spec,
                          layout="mla")
    with pytest.raises(posenc.InvalidArgumentError, match="v_cache is None"):
        posenc.append_kv_(q, ckv[:, 512:], ckv[:, :512], pos, slots, cache, None, spec)
