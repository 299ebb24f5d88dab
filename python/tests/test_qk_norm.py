"""QK norm (spec.qk_norm): posenc's normalise-then-rotate against transformers' own modules, bit for bit.

The oracle is what Qwen3Attention, Gemma3Attention and Glm4MoeAttention do between the projections
and attention: the model's RMSNorm module (Qwen3RMSNorm, Gemma3RMSNorm, Glm4MoeRMSNorm) on each head,
in the layout the attention module normalises (Gemma 3 after the transpose), then the model's
apply_rotary_pos_emb with cos/sin from the model's rotary module; run by torch on the device of
the test (CPU here; `pytest -k cuda` runs the GPU engine against torch on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

import posenc
from conftest import REPO, needs_cuda, needs_torch, torch

pytestmark = needs_torch
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from transformers.models.gemma3 import modeling_gemma3  # noqa: E402
from transformers.models.glm4_moe import modeling_glm4_moe  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# (tokens, q heads, kv heads): decode, a short prefill with MQA, a longer one with GQA.
SHAPES = [(1, 4, 2), (7, 8, 1), (300, 16, 4)]


def _family_config(family: str, head_dim: int):
    """A small config of the family with its real checkpoint's rope and norm settings."""
    common = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=head_dim, vocab_size=64, max_position_embeddings=131072)
    t = transformers
    if family == "qwen3":  # Qwen3-8B: theta 1e6, eps 1e-6
        return t.Qwen3Config(**common, rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    if family == "gemma3":  # Gemma 3 global layers: theta 1e6, linear factor 8; eps 1e-6
        return t.Gemma3TextConfig(
            **common, rms_norm_eps=1e-6, layer_types=["sliding_attention", "full_attention"],
            rope_parameters=dict(full_attention=dict(rope_type="linear", rope_theta=1e6, factor=8.0),
                                 sliding_attention=dict(rope_type="default", rope_theta=1e4)))
    if family == "glm4_moe":  # GLM-4.5: half-split over half the head, use_qk_norm, eps 1e-5
        return t.Glm4MoeConfig(**common, rms_norm_eps=1e-5, use_qk_norm=True, moe_intermediate_size=32,
                               n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                               first_k_dense_replace=1, n_group=1, topk_group=1,
                               rope_parameters=dict(rope_type="default", rope_theta=1e6, partial_rotary_factor=0.5))
    raise ValueError(family)


# family -> (modeling module, norm class name, rotary class name, layer type, norm after the transpose)
FAMILIES = {
    "qwen3": (modeling_qwen3, "Qwen3RMSNorm", "Qwen3RotaryEmbedding", "default", False),
    "gemma3": (modeling_gemma3, "Gemma3RMSNorm", "Gemma3RotaryEmbedding", "full_attention", True),
    "glm4_moe": (modeling_glm4_moe, "Glm4MoeRMSNorm", "Glm4MoeRotaryEmbedding", "default", False),
}


def _rand(shape, dtype, seed, scale_rows=True):
    """Random rows whose magnitudes spread over a few octaves (the rsqrt then varies per row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if scale_rows:
        x = x * torch.exp(torch.randn(shape[:-1] + (1,), generator=g))
    return x.to(dtype)


def _norm_weights(family, head_dim, dtype, seed):
    # Qwen3/GLM multiply by w (around 1), Gemma 3 by 1 + w (w around 0).
    g = torch.Generator().manual_seed(seed)
    base = 0.0 if family == "gemma3" else 1.0
    return [(torch.randn(head_dim, generator=g) * 0.3 + base).to(dtype) for _ in range(2)]


def transformers_prologue(family, cfg, q, k, positions, q_weight, k_weight, device):
    """transformers' q_norm/k_norm + apply_rotary_pos_emb on [T, H, D] q and k, as the attention
    module runs them (on `device`); returns [T, H, D] tensors on the CPU."""
    module, norm_name, rotary_name, layer_type, after_transpose = FAMILIES[family]
    norm_cls = getattr(module, norm_name)
    with torch.no_grad():
        norms = []
        for w in (q_weight, k_weight):
            norm = norm_cls(w.shape[0], eps=cfg.rms_norm_eps).to(w.dtype)
            norm.weight.copy_(w)
            norms.append(norm.to(device))
        # Built on the CPU as from_pretrained does (its inv_freq), then moved with the model.
        rotary = getattr(module, rotary_name)(cfg).to(device)
        pos = positions.to(device)[None]
        qd, kd = q.to(device)[None], k.to(device)[None]  # [1, T, H, D], the projections' view
        cos, sin = rotary(qd, pos, layer_type) if layer_type != "default" else rotary(qd, pos)
        if after_transpose:  # Gemma 3 normalises [B, H, T, D]
            qs, ks = norms[0](qd.transpose(1, 2)), norms[1](kd.transpose(1, 2))
        else:
            qs, ks = norms[0](qd).transpose(1, 2), norms[1](kd).transpose(1, 2)
        q_out, k_out = module.apply_rotary_pos_emb(qs, ks, cos, sin)
    return q_out[0].transpose(0, 1).cpu(), k_out[0].transpose(0, 1).cpu()


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _differing(a, b):
    return int((_bits(a) != _bits(b)).sum())


def _bits_equal(a, b):
    return a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _case(family, dtype_name, shape, head_dim, seed):
    cfg = _family_config(family, head_dim)
    spec = posenc.RopeSpec.from_config(cfg.to_dict(), layer_type=FAMILIES[family][3])
    dtype = DTYPES[dtype_name]
    tokens, hq, hk = shape
    q = _rand((tokens, hq, head_dim), dtype, seed)
    k = _rand((tokens, hk, head_dim), dtype, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    positions = torch.randint(0, 100000, (tokens,), generator=g)
    positions[: min(tokens, 16)] = torch.arange(min(tokens, 16))
    q_weight, k_weight = _norm_weights(family, head_dim, dtype, seed + 3)
    return cfg, spec, q, k, positions, q_weight, k_weight


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}-H{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_apply_rope_matches_transformers_modules(device, family, dtype_name, shape, head_dim):
    cfg, spec, q, k, positions, q_weight, k_weight = _case(family, dtype_name, shape, head_dim, seed=head_dim)
    assert spec.qk_norm == ("rms_one_plus" if family == "gemma3" else "rms")
    q_want, k_want = transformers_prologue(family, cfg, q, k, positions, q_weight, k_weight, device)

    qd, kd, pd = q.to(device), k.to(device), positions.to(device)
    wq, wk = q_weight.to(device), k_weight.to(device)
    q_out, k_out = posenc.apply_rope(qd, kd, pd, spec, q_norm_weight=wq, k_norm_weight=wk)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(qd.cpu(), q) and torch.equal(kd.cpu(), k), "apply_rope does not write its inputs"
    for name, got, want in (("q", q_out.cpu(), q_want), ("k", k_out.cpu(), k_want)):
        assert _bits_equal(got, want), f"{name}: {_differing(got, want)} of {want.numel()} values differ"

    # In place, and through the op's int32 positions: the same bits.
    posenc.apply_rope_(qd, kd, pd.to(torch.int32), spec, q_norm_weight=wq, k_norm_weight=wk)
    posenc.check(device if device == "cuda" else None)
    assert _bits_equal(qd.cpu(), q_want) and _bits_equal(kd.cpu(), k_want)


def test_q_only_call_normalises_q(device):
    cfg, spec, q, k, positions, q_weight, k_weight = _case("qwen3", "bfloat16", (7, 8, 1), 128, seed=11)
    q_want, _ = transformers_prologue("qwen3", cfg, q, k, positions, q_weight, k_weight, device)
    q_out, k_out = posenc.apply_rope(q.to(device), None, positions.to(device), spec,
                                     q_norm_weight=q_weight.to(device))
    assert k_out is None
    assert _bits_equal(q_out.cpu(), q_want)


def test_rotary_only_normalises_the_window():
    """qk_norm_rotary_only: the norm reads and writes the rotary window only (weights of rotary_dim);
    checked on the CPU against Glm4MoeRMSNorm over that slice followed by the partial rotation."""
    family, head_dim = "glm4_moe", 128
    cfg, spec, q, k, positions, _, _ = _case(family, "bfloat16", (7, 4, 2), head_dim, seed=21)
    spec = spec.replace(qk_norm_rotary_only=True)
    r = spec.rotary
    assert r == 64
    q_weight, k_weight = _norm_weights(family, r, torch.bfloat16, seed=22)
    norm_q = modeling_glm4_moe.Glm4MoeRMSNorm(r, eps=cfg.rms_norm_eps).to(torch.bfloat16)
    norm_k = modeling_glm4_moe.Glm4MoeRMSNorm(r, eps=cfg.rms_norm_eps).to(torch.bfloat16)
    with torch.no_grad():
        norm_q.weight.copy_(q_weight)
        norm_k.weight.copy_(k_weight)
        qn = torch.cat([norm_q(q[..., :r]), q[..., r:]], dim=-1)
        kn = torch.cat([norm_k(k[..., :r]), k[..., r:]], dim=-1)
    # With the norm stage done by the modules, posenc's spec without QK norm does the rotation.
    q_want, k_want = posenc.apply_rope(qn, kn, positions, spec.replace(qk_norm="none"))
    q_out, k_out = posenc.apply_rope(q, k, positions, spec, q_norm_weight=q_weight, k_norm_weight=k_weight)
    assert _bits_equal(q_out, q_want) and _bits_equal(k_out, k_want)
    assert torch.equal(q_out[..., r:], q[..., r:]), "the pass-through part is not normalised"


@needs_cuda
@pytest.mark.parametrize("heads", [(1, 1), (32, 8), (40, 8), (64, 4), (5, 3)], ids=lambda h: f"H{h[0]}x{h[1]}")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cuda_exact_equals_cpu_engine(dtype_name, heads):
    """hf_arithmetic "exact": the GPU kernel and the CPU engine give the same bits, apply and append,
    for head counts that split into one or several batches of rows per warp (uneven ones too)."""
    hq, hk = heads
    cfg, spec, q, k, positions, q_weight, k_weight = _case("qwen3", dtype_name, (37, hq, hk), 128, seed=hq * 7 + hk)
    spec = spec.replace(hf_arithmetic="exact")
    q_cpu, k_cpu = posenc.apply_rope(q, k, positions, spec, q_norm_weight=q_weight, k_norm_weight=k_weight)
    q_gpu, k_gpu = posenc.apply_rope(q.cuda(), k.cuda(), positions.cuda(), spec,
                                     q_norm_weight=q_weight.cuda(), k_norm_weight=k_weight.cuda())
    posenc.check("cuda")
    assert _bits_equal(q_gpu.cpu(), q_cpu), f"q: {_differing(q_gpu.cpu(), q_cpu)} values differ"
    assert _bits_equal(k_gpu.cpu(), k_cpu), f"k: {_differing(k_gpu.cpu(), k_cpu)} values differ"

    v = _rand(k.shape, q.dtype, 5)
    slots = torch.randperm(64, generator=torch.Generator().manual_seed(6))[:q.shape[0]]
    caches = []
    for device in ("cpu", "cuda"):
        kc = torch.full((1, 64, hk, 128), 3.0, dtype=q.dtype, device=device)  # contiguous [B, L, Hk, D]
        vc = kc.clone()
        qd = q.clone().to(device)
        posenc.append_kv_(qd, k.to(device), v.to(device), positions.to(device), slots.to(device), kc, vc, spec,
                          layout="contiguous", q_norm_weight=q_weight.to(device), k_norm_weight=k_weight.to(device))
        posenc.check(device if device == "cuda" else None)
        caches.append((qd.cpu(), kc.cpu(), vc.cpu()))
    for name, got, want in zip(("q", "k cache", "v cache"), caches[1], caches[0]):
        assert _bits_equal(got, want), f"append {name}: {_differing(got, want)} values differ"


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_fp8_serving_prologue(device, family):
    """fp8 serving in one call: q/k norm + RoPE, K and V into an fp8 paged cache, Q to an fp8 q_out;
    byte for byte what transformers' own modules (norms, rotary, apply_rotary_pos_emb) followed by
    torch's clamp-and-cast and a scatter into the cache give."""
    cfg, spec, q, k, positions, q_weight, k_weight = _case(family, "bfloat16", (37, 8, 2), 128, seed=51)
    q_want, k_want = transformers_prologue(family, cfg, q, k, positions, q_weight, k_weight, device)
    v = _rand(k.shape, torch.bfloat16, 52)
    fp8, k_scale, v_scale, q_scale, page, blocks = torch.float8_e4m3fn, 0.5, 0.25, 0.125, 16, 4
    slots = torch.randperm(blocks * page, generator=torch.Generator().manual_seed(53))[: q.shape[0]]
    slots[[3, 9]] = -1  # padding tokens: no cache rows, but Q is still written

    def quant(x, scale):
        return (x.float() / scale).clamp(-448, 448).to(fp8).view(torch.uint8)

    k_cache = torch.zeros((blocks, page, 2, 128), dtype=fp8, device=device)
    v_cache = torch.zeros_like(k_cache)
    q_out = torch.zeros(q.shape, dtype=fp8, device=device)
    qd = q.to(device)
    posenc.append_kv_(qd, k.to(device), v.to(device), positions.to(device), slots.to(device), k_cache, v_cache, spec,
                      k_scale=k_scale, v_scale=v_scale, q_norm_weight=q_weight.to(device),
                      k_norm_weight=k_weight.to(device), q_out=q_out, q_scale=q_scale)
    posenc.check(device if device == "cuda" else None)
    assert torch.equal(qd.cpu(), q), "q is only read with q_out"
    assert torch.equal(q_out.cpu().view(torch.uint8), quant(q_want, q_scale))
    k_expect = torch.zeros((blocks * page, 2, 128), dtype=torch.uint8)
    v_expect = torch.zeros_like(k_expect)
    kept = slots >= 0
    k_expect[slots[kept]] = quant(k_want[kept], k_scale)
    v_expect[slots[kept]] = quant(v[kept], v_scale)
    assert torch.equal(k_cache.cpu().view(torch.uint8).view(-1, 2, 128), k_expect)
    assert torch.equal(v_cache.cpu().view(torch.uint8).view(-1, 2, 128), v_expect)


@pytest.mark.parametrize("layout", ["contiguous", "paged_nhd", "paged_hnd"])
def test_append_kv_writes_normalised_rotated_k(device, layout):
    family = "qwen3"
    cfg, spec, q, k, positions, q_weight, k_weight = _case(family, "bfloat16", (13, 4, 2), 128, seed=31)
    q_want, k_want = transformers_prologue(family, cfg, q, k, positions, q_weight, k_weight, device)
    tokens, hk, head_dim = k.shape
    v = _rand(k.shape, torch.bfloat16, 32)
    blocks, page = 6, 4
    slots = torch.randperm(blocks * page, generator=torch.Generator().manual_seed(33))[:tokens]
    slots[[2, 7]] = -1  # padding tokens: not written
    shape = (blocks, hk, page, head_dim) if layout == "paged_hnd" else (blocks, page, hk, head_dim)
    poison = torch.full(shape, 3.0, dtype=torch.bfloat16)
    k_cache, v_cache = poison.clone().to(device), poison.clone().to(device)

    qd, kd = q.to(device), k.to(device)
    posenc.append_kv_(qd, kd, v.to(device), positions.to(device), slots.to(device), k_cache, v_cache, spec,
                      layout=layout, q_norm_weight=q_weight.to(device), k_norm_weight=k_weight.to(device))
    posenc.check(device if device == "cuda" else None)
    assert _bits_equal(qd.cpu(), q_want), "q: normalised and rotated in place"
    assert torch.equal(kd.cpu(), k), "K itself is not written"
    k_cache, v_cache = k_cache.cpu(), v_cache.cpu()
    for t, slot in enumerate(slots.tolist()):
        b, o = divmod(slot, page)
        k_row = k_cache[b, :, o] if layout == "paged_hnd" else k_cache[b, o]
        v_row = v_cache[b, :, o] if layout == "paged_hnd" else v_cache[b, o]
        if slot < 0:
            continue
        assert _bits_equal(k_row, k_want[t]), f"token {t}: cached K is not the normalised rotated K"
        assert torch.equal(v_row, v[t]), f"token {t}: V is copied as it is"
    written = torch.zeros(blocks * page, dtype=torch.bool)
    written[slots[slots >= 0]] = True
    untouched = ~written.view(blocks, page)
    if layout == "paged_hnd":
        assert torch.equal(k_cache.transpose(1, 2)[untouched], poison.transpose(1, 2)[untouched])
    else:
        assert torch.equal(k_cache[untouched], poison[untouched])


def test_from_config_qwen3_and_gemma3():
    qwen3 = posenc.RopeSpec.from_config(f"{REPO}/configs/qwen3-8b-yarn.json")
    assert (qwen3.qk_norm, qwen3.qk_norm_epsilon, qwen3.qk_norm_rotary_only) == ("rms", 1e-6, False)
    assert "qk_norm=rms" in repr(qwen3)
    for layer in ("full_attention", "sliding_attention"):
        gemma = posenc.RopeSpec.from_config(f"{REPO}/configs/gemma-3-4b.json", layer_type=layer)
        assert (gemma.qk_norm, gemma.qk_norm_epsilon) == ("rms_one_plus", 1e-6)
    # A transformers config object's dict: the same stage (GLM-4.5 only with use_qk_norm).
    assert posenc.RopeSpec.from_config(_family_config("qwen3", 128).to_dict()).qk_norm == "rms"
    glm = _family_config("glm4_moe", 128)
    assert posenc.RopeSpec.from_config(glm.to_dict()).qk_norm_epsilon == 1e-5
    glm.use_qk_norm = False
    assert posenc.RopeSpec.from_config(glm.to_dict()).qk_norm == "none"
    # Models without QK norm, and the fields' round trip through replace().
    assert posenc.RopeSpec.from_config(f"{REPO}/configs/llama-3.1-8b.json").qk_norm == "none"
    spec = posenc.RopeSpec(head_dim=64, qk_norm="rms_one_plus", qk_norm_epsilon=1e-5, qk_norm_rotary_only=True)
    assert spec.replace(theta=1e4).to_dict()["qk_norm"] == "rms_one_plus"
    assert "qk_norm=rms_one_plus(rotary_only)" in repr(spec)


def test_spec_rejects_bad_qk_norm_fields():
    with pytest.raises(posenc.InvalidArgumentError, match="qk_norm 'layer' is not one of: none, rms, rms_one_plus"):
        posenc.RopeSpec(head_dim=64, qk_norm="layer")
    with pytest.raises(posenc.InvalidArgumentError, match="qk_norm.epsilon"):
        posenc.RopeSpec(head_dim=64, qk_norm="rms", qk_norm_epsilon=-1.0)


def test_norm_weight_errors(device):
    spec = posenc.RopeSpec(head_dim=64, qk_norm="rms")
    plain = posenc.RopeSpec(head_dim=64)
    q = _rand((4, 2, 64), torch.float16, 1).to(device)
    k = _rand((4, 1, 64), torch.float16, 2).to(device)
    w = torch.ones(64, dtype=torch.float16, device=device)
    pos = torch.arange(4, device=device)
    q0, k0 = q.clone(), k.clone()
    cases = [
        (spec, dict(), "q_norm_weight is missing"),
        (spec, dict(q_norm_weight=w), "k_norm_weight is missing"),
        (plain, dict(q_norm_weight=w, k_norm_weight=w), "no QK norm"),
        (spec, dict(q_norm_weight=w.float(), k_norm_weight=w), r"q_norm_weight: dtype torch.float32, want q's dtype"),
        (spec, dict(q_norm_weight=w, k_norm_weight=torch.ones(128, dtype=torch.float16, device=device)[::2]),
         r"k_norm_weight: must be contiguous"),
        (spec, dict(q_norm_weight=torch.ones(65, dtype=torch.float16, device=device), k_norm_weight=w),
         r"q_norm_weight: shape \[65\], want \[64\] \(head_dim\)"),
        (spec.replace(rotary_dim=32, qk_norm_rotary_only=True), dict(q_norm_weight=w, k_norm_weight=w),
         r"shape \[64\], want \[32\] \(rotary_dim"),
    ]
    if device == "cuda":
        cases.append((spec, dict(q_norm_weight=w.cpu(), k_norm_weight=w), "q_norm_weight is on cpu"))
    for s, kwargs, message in cases:
        with pytest.raises(posenc.InvalidArgumentError, match=message):
            posenc.apply_rope_(q, k, pos, s, **kwargs)
    with pytest.raises(posenc.InvalidArgumentError, match="k_norm_weight is given but the call has no k"):
        posenc.apply_rope(q, None, pos, spec, q_norm_weight=w, k_norm_weight=w)
    assert torch.equal(q, q0) and torch.equal(k, k0), "a refused call writes nothing"


def test_numpy_path_matches_torch():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg, spec, q, k, positions, q_weight, k_weight = _case("gemma3", "bfloat16", (7, 4, 2), 256, seed=41)
    q_want, k_want = posenc.apply_rope(q, k, positions, spec, q_norm_weight=q_weight, k_norm_weight=k_weight)

    def to_np(t):
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)

    qn, kn = to_np(q).copy(), to_np(k).copy()
    q_out, k_out = posenc.apply_rope(qn, kn, positions.numpy(), spec, q_norm_weight=to_np(q_weight),
                                     k_norm_weight=to_np(k_weight))
    assert np.array_equal(q_out.view(np.int16), to_np(q_want).view(np.int16))
    assert np.array_equal(k_out.view(np.int16), to_np(k_want).view(np.int16))
    posenc.apply_rope_(qn, kn, positions.numpy(), spec, q_norm_weight=to_np(q_weight), k_norm_weight=to_np(k_weight))
    assert np.array_equal(qn.view(np.int16), q_out.view(np.int16))
    with pytest.raises(posenc.InvalidArgumentError, match="k_norm_weight is missing"):
        posenc.apply_rope(qn, kn, positions.numpy(), spec, q_norm_weight=to_np(q_weight))


def test_opcheck_and_compile_with_norm_weights(device):
    """The ops' schemas with the optional weights pass torch.library.opcheck, and a step using all
    three traces whole under torch.compile(fullgraph=True) with eager's bits."""
    _, spec, q, k, positions, q_weight, k_weight = _case("qwen3", "bfloat16", (5, 4, 2), 64, seed=51)
    q, k, pos, wq, wk = (t.to(device) for t in (q, k, positions, q_weight, k_weight))
    v = _rand(k.shape, torch.bfloat16, 52).to(device)
    slots = torch.tensor([3, 0, -1, 5, 1], device=device)
    kc = torch.zeros((2, 4, 2, 64), dtype=torch.bfloat16, device=device)
    ops = torch.ops.posenc
    torch.library.opcheck(ops.apply_rope_, (q.clone(), k.clone(), pos, spec.id, wq, wk))
    torch.library.opcheck(ops.apply_rope_, (q.clone(), None, pos, spec.id, wq, None))
    torch.library.opcheck(ops.apply_rope, (q, k, pos, spec.id, wq, wk))
    torch.library.opcheck(ops.append_kv_, (q.clone(), k, v, pos, slots, kc, kc.clone(), spec.id, "paged_nhd", 1.0,
                                           1.0, None, 1.0, wq, wk))

    def step(q, k, v, pos, k_cache, v_cache, wq, wk):
        q2, k2 = posenc.apply_rope(q, k, pos, spec, q_norm_weight=wq, k_norm_weight=wk)
        posenc.apply_rope_(q, k, pos, spec, q_norm_weight=wq, k_norm_weight=wk)
        posenc.append_kv_(q2 * 2, k2, v, pos, slots, k_cache, v_cache, spec, q_norm_weight=wq, k_norm_weight=wk)
        return q + q2, k

    caches = [kc.clone() for _ in range(4)]
    eager = step(q.clone(), k.clone(), v, pos, caches[0], caches[1], wq, wk)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(q.clone(), k.clone(), v, pos, caches[2], caches[3], wq, wk)
    for a, b in zip(eager, compiled):
        assert _bits_equal(a, b)
    assert _bits_equal(caches[0], caches[2]) and _bits_equal(caches[1], caches[3])
    assert not torch.equal(caches[0], kc), "the step wrote the cache"
