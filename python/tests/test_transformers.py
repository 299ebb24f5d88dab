"""posenc.transformers.patch: tiny random-weight models of every supported family generate the same
tokens patched and unpatched; the logit differences are measured and printed (pytest -s)."""

from __future__ import annotations

import contextlib
import importlib

import pytest

from conftest import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytestmark = pytest.mark.skipif(torch is None, reason="torch is not installed")

import posenc  # noqa: E402
import posenc.transformers as pt  # noqa: E402

VOCAB = 100
PROMPT, NEW = 12, 8
# Common to every text config: 2 layers, hidden 128, 4 query heads of 32, 2 KV heads, no EOS
# (greedy generation runs the full NEW tokens).
COMMON = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)


def _config(family: str):
    """Each family's config with its real checkpoint's rope settings (scaled to head_dim 32)."""
    t = transformers
    if family == "llama":  # Llama 3.1: llama3 scaling
        return t.LlamaConfig(**COMMON, max_position_embeddings=131072, rope_parameters=dict(
            rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192))
    if family == "mistral":
        return t.MistralConfig(**COMMON, head_dim=32, sliding_window=None, rope_parameters=dict(
            rope_type="default", rope_theta=1e6))
    if family == "qwen2":
        return t.Qwen2Config(**COMMON, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    if family == "qwen3":  # Qwen3 with YaRN (factor 4 over 32768), QK norm
        return t.Qwen3Config(**COMMON, head_dim=32, max_position_embeddings=131072, rope_parameters=dict(
            rope_type="yarn", rope_theta=1e6, factor=4.0, original_max_position_embeddings=32768))
    if family == "mixtral":
        return t.MixtralConfig(**COMMON, head_dim=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                               rope_parameters=dict(rope_type="default", rope_theta=1e6))
    if family == "qwen2_moe":
        return t.Qwen2MoeConfig(**COMMON, moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4,
                                num_experts_per_tok=2, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    if family == "qwen3_moe":  # Qwen3-30B-A3B style, with YaRN
        return t.Qwen3MoeConfig(**COMMON, head_dim=32, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                max_position_embeddings=131072, rope_parameters=dict(
                                    rope_type="yarn", rope_theta=1e6, factor=4.0,
                                    original_max_position_embeddings=32768))
    if family == "phi3":
        # Phi-4-mini style: LongRoPE over 24 of 32 dims; the original context is 16 tokens here, so
        # generation crosses it and the rotary module swaps in the long factors mid-run.
        return t.Phi3Config(**COMMON, max_position_embeddings=64, original_max_position_embeddings=16,
                            rope_parameters=dict(rope_type="longrope", rope_theta=1e4, partial_rotary_factor=0.75,
                                                 short_factor=[1.0 + 0.05 * i for i in range(12)],
                                                 long_factor=[1.0 + 0.5 * i for i in range(12)],
                                                 original_max_position_embeddings=16))
    if family == "glm":  # GLM-4-9B-chat-hf: interleaved over half the head
        return t.GlmConfig(**COMMON, head_dim=32, rope_parameters=dict(
            rope_type="default", rope_theta=5e6, partial_rotary_factor=0.5))
    if family == "glm4":  # GLM-4-0414
        return t.Glm4Config(**COMMON, head_dim=32, rope_parameters=dict(
            rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5))
    if family == "glm4_moe":  # GLM-4.5: half-split over half the head, QK norm, MoE
        return t.Glm4MoeConfig(**COMMON, head_dim=32, use_qk_norm=True, moe_intermediate_size=32, n_routed_experts=4,
                               num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                               topk_group=1, rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                                                  partial_rotary_factor=0.5))
    if family == "gpt_oss":  # gpt-oss-20b: YaRN factor 32 without truncation; sliding/full layers, sinks
        return t.GptOssConfig(**COMMON, head_dim=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                              rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0,
                                                   beta_slow=1.0, original_max_position_embeddings=4096,
                                                   truncate=False))
    if family.startswith("deepseek_v3"):  # MLA with a 16-dim rotary part, YaRN factor 40 with mscale
        return t.DeepseekV3Config(**{**COMMON, "num_key_value_heads": 4}, moe_intermediate_size=32,
                                  n_routed_experts=4, num_experts_per_tok=2,
                                  n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1,
                                  kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=32,
                                  v_head_dim=32, rope_interleave=not family.endswith("no_interleave"),
                                  max_position_embeddings=163840,
                                  rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=40.0, beta_fast=32.0,
                                                       beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                                                       original_max_position_embeddings=4096))
    if family == "cohere":  # Command-R: interleaved, float32 rotation
        return t.CohereConfig(**COMMON, rope_parameters=dict(rope_type="default", rope_theta=8e6))
    if family == "qwen2_vl":  # M-RoPE sections [4, 6, 6] of 16 pairs (the 7B's [16, 24, 24] scaled)
        text = {k: v for k, v in COMMON.items() if k not in ("tie_word_embeddings",)}
        return t.Qwen2VLConfig(
            text_config=dict(**text, rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                                          mrope_section=[4, 6, 6])),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=128, num_heads=2, mlp_ratio=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=96, video_token_id=97, vision_start_token_id=94, vision_end_token_id=95,
            tie_word_embeddings=False)
    raise KeyError(family)


FAMILIES = ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "glm", "glm4",
            "glm4_moe", "gpt_oss", "deepseek_v3", "deepseek_v3_no_interleave", "cohere", "qwen2_vl"]

_models = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: torch's intra-op threads only add overhead (tens of times slower on
    # a busy 2-core machine). Patched and unpatched runs share the setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family: str, dtype: str, device: str):
    """The tiny model (random weights from a fixed seed), built once per (family, dtype, device)."""
    key = (family, dtype, device)
    if key not in _models:
        torch.manual_seed(1234)
        if family == "qwen2_vl":
            model = transformers.Qwen2VLForConditionalGeneration(_config(family))
        else:
            model = transformers.AutoModelForCausalLM.from_config(_config(family))
        model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        _models[key] = model
    return _models[key]


def _prompt(device: str):
    """Two prompts of PROMPT tokens, the second left-padded by 3 (its positions start after the pad)."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, 90, (2, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3] = 0
    mask[1, :3] = 0
    return ids.to(device), mask.to(device)


def _generate(model, ids, mask, **extra):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, **extra)
    return out.sequences, torch.stack(out.logits)  # [steps, batch, vocab]


@contextlib.contextmanager
def exact_trig():
    """transformers' own arithmetic, but with float32 cos/sin correctly rounded (evaluated in float64
    and rounded once), which is how posenc computes them. torch's float32 cos/sin (SLEEF on the CPU)
    can be 1 ulp off; with this context the patched model must match transformers bit for bit."""
    cos, sin = torch.Tensor.cos, torch.Tensor.sin

    def exact(f):
        return lambda self: f(self.double()).to(self.dtype) if self.dtype == torch.float32 else f(self)

    torch.Tensor.cos, torch.Tensor.sin = exact(cos), exact(sin)
    try:
        yield
    finally:
        torch.Tensor.cos, torch.Tensor.sin = cos, sin


@pytest.fixture
def posenc_calls(monkeypatch):
    """Counts the posenc op calls the patch makes (so an exact match is not a vacuous one)."""
    calls = [0]
    for name in ("apply_rope", "apply_rope_"):
        real = getattr(pt, name)

        def counting(*a, _real=real, **k):
            calls[0] += 1
            return _real(*a, **k)

        monkeypatch.setattr(pt, name, counting)
    return calls


def _equal(label: str, want, got, dtype: str, device: str):
    """transformers as it is against the patched model (hf_arithmetic "engine": torch's own cos/sin on
    the tensors' device): the same bits. Prints how many logits differ when they do not."""
    delta = (want.float() - got.float()).abs()
    assert torch.equal(want, got), (
        f"{label} {dtype} {device}: {100 * (delta > 0).float().mean().item():.2f} % of the logits differ from "
        f"transformers' (max |dlogit| {delta.max().item():.3g})")


DTYPES = ["bfloat16", "float16", "float32"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_generation_matches(device, family, dtype, posenc_calls):
    model = _model(family, dtype, device)
    ids, mask = _prompt(device)
    want_seq, want_logits = _generate(model, ids, mask)
    with exact_trig():
        exact_seq, exact_logits = _generate(model, ids, mask)
    pt.patch(model)  # hf_arithmetic "engine": torch's own cos/sin on the device
    try:
        assert pt.is_patched(model)
        got_seq, got_logits = _generate(model, ids, mask)
    finally:
        pt.unpatch(model)
    pt.patch(model, hf_arithmetic="exact")
    try:
        with exact_trig():  # touches only code the patch left alone (none in these text models)
            got_exact_seq, got_exact_logits = _generate(model, ids, mask)
    finally:
        pt.unpatch(model)
    layers = model.config.get_text_config().num_hidden_layers
    assert posenc_calls[0] == 2 * layers * NEW, "every layer of every step must go through posenc"
    assert torch.equal(got_seq, want_seq), f"{family} {dtype}: greedy tokens differ"
    assert torch.equal(got_exact_seq, exact_seq) and torch.equal(got_exact_logits, exact_logits), (
        f"{family} {dtype}: logits differ from transformers' arithmetic with correctly rounded cos/sin")
    _equal(family, want_logits, got_logits, dtype, device)
    again_seq, again_logits = _generate(model, ids, mask)  # unpatched: transformers' own results again
    assert torch.equal(again_seq, want_seq) and torch.equal(again_logits, want_logits)


def _rotation_case(family: str):
    """(rotary module, the model file's apply function, head_dim of the Q/K it rotates)."""
    model = _model(family, "float32", "cpu")
    fam = pt.FAMILIES[model.config.model_type]
    module = importlib.import_module(fam.module)
    rotary = next(m for m in model.modules() if type(m).__name__ == fam.rotary_class)
    if family.startswith("deepseek_v3"):
        name = "apply_rotary_pos_emb_interleave" if model.config.rope_interleave else "apply_rotary_pos_emb"
        return model, rotary, getattr(module, name), model.config.qk_rope_head_dim
    text = model.config.get_text_config()
    return model, rotary, module.apply_rotary_pos_emb, text.hidden_size // text.num_attention_heads


@pytest.mark.parametrize("family", FAMILIES)
def test_rotation_matches_at_long_positions(family):
    """Q/K of 2048 tokens at random positions over the model's context, rotated by the patched and
    the original apply function: bit-identical given equal cos/sin in every dtype; the elements
    that differ against torch's own cos/sin are counted and printed."""
    model, rotary, _, head_dim = _rotation_case(family)
    tokens = 2048
    g = torch.Generator().manual_seed(11)
    limit = min(model.config.get_text_config().max_position_embeddings, 131072)
    streams = (3,) if pt.FAMILIES[model.config.model_type].mrope else ()
    positions = torch.randint(0, limit, (*streams, 1, tokens), generator=g)
    q32 = torch.randn(1, 4, tokens, head_dim, generator=g)
    k32 = torch.randn(1, 2, tokens, head_dim, generator=g)
    report = []
    for dtype in DTYPES:
        q, k = q32.to(getattr(torch, dtype)), k32.to(getattr(torch, dtype))
        x = torch.zeros(1, tokens, 8, dtype=q.dtype)
        _, _, apply, _ = _rotation_case(family)
        with torch.no_grad():
            want = apply(q, k, *rotary(x, positions))
            with exact_trig():
                exact = apply(q, k, *rotary(x, positions))
            got = {}
            for arithmetic in ("engine", "exact"):
                pt.patch(model, hf_arithmetic=arithmetic)
                try:
                    _, _, patched_apply, _ = _rotation_case(family)
                    marker, _ = rotary(x, positions)
                    assert isinstance(marker, pt.RotaryPositions)
                    got[arithmetic] = patched_apply(q, k, marker, marker)
                finally:
                    pt.unpatch(model)
        assert torch.equal(got["exact"][0], exact[0]) and torch.equal(got["exact"][1], exact[1]), f"{family} {dtype}"
        assert torch.equal(got["engine"][0], want[0]) and torch.equal(got["engine"][1], want[1]), (
            f"{family} {dtype}: differs from transformers' own arithmetic")
        differing = sum(int((a != b).sum()) for a, b in zip(exact, want))
        report.append(f"{dtype} {differing}/{q.numel() + k.numel()}")
    print(f"\nposenc.transformers {family} Q/K at {tokens} positions < {limit}: elements where correctly "
          f"rounded cos/sin change the result: " + ", ".join(report))


@pytest.mark.parametrize("layout", ["bhsd_view", "bhsd_dense", "bshd_unsqueeze2"])
@pytest.mark.parametrize("batch_positions", [1, 3])
def test_apply_layouts_and_position_broadcast(layout, batch_positions):
    """The patched apply function against transformers' (correctly rounded cos/sin) for the layouts
    an attention can pass: HF's transposed view (one pass), a dense [B, H, S, D] with B > 1 (copied
    once), [B, S, H, D] with unsqueeze_dim=2; positions [1, S] broadcast over the batch or [B, S]."""
    from transformers.models.llama import modeling_llama
    model, rotary, _, head_dim = _rotation_case("llama")
    B, S, H = 3, 7, 4
    g = torch.Generator().manual_seed(5)
    positions = torch.randint(0, 100000, (batch_positions, S), generator=g)
    x = torch.zeros(B, S, 8, dtype=torch.bfloat16)
    bshd = torch.randn(B, S, H, head_dim, generator=g).to(torch.bfloat16)
    if layout == "bhsd_view":
        q, dim = bshd.transpose(1, 2), 1
    elif layout == "bhsd_dense":
        q, dim = bshd.transpose(1, 2).contiguous(), 1
    else:
        q, dim = bshd, 2
    k = q[:, :2] if dim == 1 else q[:, :, :2]
    q_before, k_before = q.clone(), k.clone()
    with torch.no_grad():
        want = modeling_llama.apply_rotary_pos_emb(q, k, *rotary(x, positions), unsqueeze_dim=dim)
    pt.patch(model)
    try:
        with torch.no_grad():
            marker, _ = rotary(x, positions)
            got = modeling_llama.apply_rotary_pos_emb(q, k, marker, marker, unsqueeze_dim=dim)
    finally:
        pt.unpatch(model)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(q, q_before) and torch.equal(k, k_before), "the inputs must not be written"


def test_patched_calls_posenc_not_transformers(monkeypatch):
    """The patched model never builds cos/sin: transformers' apply function is not called, the
    posenc op is, once per layer."""
    from transformers.models.llama import modeling_llama
    model = _model("llama", "bfloat16", "cpu")
    ids, mask = _prompt("cpu")
    calls = {"posenc": 0, "transformers": 0}
    real_posenc, real_hf = pt.apply_rope, modeling_llama.apply_rotary_pos_emb

    def counting_posenc(*a, **k):
        calls["posenc"] += 1
        return real_posenc(*a, **k)

    def counting_hf(*a, **k):
        calls["transformers"] += 1
        return real_hf(*a, **k)

    monkeypatch.setattr(pt, "apply_rope", counting_posenc)
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", counting_hf)
    pt.patch(model)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        pt.unpatch(model)
    assert calls == {"posenc": model.config.num_hidden_layers, "transformers": 0}
    assert modeling_llama.apply_rotary_pos_emb is counting_hf


def test_qwen2_vl_image_grid_positions(device):
    """An image in the prompt gives distinct (t, h, w) position streams: the M-RoPE sections matter."""
    model = _model("qwen2_vl", "bfloat16", device)
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    grid = torch.tensor([[1, 4, 6]], device=device)  # 24 patches -> 6 image tokens
    tokens = int(grid.prod()) // merge ** 2
    g = torch.Generator().manual_seed(3)
    text = torch.randint(2, 90, (1, 5), generator=g).tolist()[0]
    ids = torch.tensor([text[:2] + [cfg.vision_start_token_id] + [cfg.image_token_id] * tokens
                        + [cfg.vision_end_token_id] + text[2:]], device=device)
    patch_dim = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
    pixels = torch.randn(int(grid.prod()), patch_dim, generator=g).to(device=device, dtype=torch.bfloat16)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_grid_thw=grid,
                  mm_token_type_ids=(ids == cfg.image_token_id).int())
    with torch.no_grad():
        position_ids, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], grid)
    assert not torch.equal(position_ids[1], position_ids[2]), "the image should give distinct h/w streams"
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    want_seq, want_logits = _generate(model, ids, inputs["attention_mask"], **extra)
    with exact_trig():
        exact_seq, exact_logits = _generate(model, ids, inputs["attention_mask"], **extra)
    pt.patch(model)
    try:
        got_seq, got_logits = _generate(model, ids, inputs["attention_mask"], **extra)
    finally:
        pt.unpatch(model)
    pt.patch(model, hf_arithmetic="exact")
    try:
        with exact_trig():  # the vision tower (not patched) uses the same cos/sin as the reference
            got_exact_seq, got_exact_logits = _generate(model, ids, inputs["attention_mask"], **extra)
    finally:
        pt.unpatch(model)
    assert torch.equal(got_seq, want_seq)
    assert torch.equal(got_exact_seq, exact_seq) and torch.equal(got_exact_logits, exact_logits)
    _equal("qwen2_vl+image", want_logits, got_logits, "bfloat16", device)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_torch_compile_fullgraph(family):
    """A patched model traces whole under torch.compile(fullgraph=True): the rotary module's marker
    and the spec (built by patch()) are plain Python; the posenc op is one opaque call per layer."""
    model = _model(family, "bfloat16", "cpu")
    ids, mask = _prompt("cpu")
    pt.patch(model)
    try:
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).logits
            torch._dynamo.reset()
            got = torch.compile(model, backend="aot_eager", fullgraph=True)(input_ids=ids, attention_mask=mask).logits
    finally:
        pt.unpatch(model)
        torch._dynamo.reset()
    assert torch.equal(got, want)


def test_unsupported_model_is_refused_and_untouched():
    cfg = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(posenc.UnsupportedError, match=r"model_type 'gpt_neox'.*Supported model types: .*llama"):
        pt.patch(model)
    assert not pt.is_patched(model)
    assert all("forward" not in vars(m) for m in model.modules())
    with pytest.raises(posenc.UnsupportedError, match="not a torch.nn.Module"):
        pt.patch(object())


def test_bad_numerics_is_refused():
    model = _model("llama", "bfloat16", "cpu")
    with pytest.raises(posenc.InvalidArgumentError, match="numerics 'fast'"):
        pt.patch(model, numerics="fast")
    assert not pt.is_patched(model)


def test_unpatch_restores_and_other_models_are_unaffected():
    from transformers.models.llama import modeling_llama
    original = modeling_llama.apply_rotary_pos_emb
    a = _model("llama", "bfloat16", "cpu")
    torch.manual_seed(5)
    b = transformers.AutoModelForCausalLM.from_config(_config("llama")).to(torch.bfloat16).eval()
    ids, mask = _prompt("cpu")
    with torch.no_grad():
        want_b = b(input_ids=ids, attention_mask=mask).logits
    pt.patch(a)
    pt.patch(a)  # idempotent
    try:
        assert modeling_llama.apply_rotary_pos_emb is not original
        with torch.no_grad():  # b is not patched: transformers' apply function gets real cos/sin
            got_b = b(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(got_b, want_b)
        assert "forward" not in vars(b.model.rotary_emb)
    finally:
        pt.unpatch(a)
    assert modeling_llama.apply_rotary_pos_emb is original
    assert "forward" not in vars(a.model.rotary_emb) and not pt.is_patched(a)
    pt.unpatch(a)  # no-op


def test_marker_leak_is_a_clear_error():
    model = _model("llama", "bfloat16", "cpu")
    pt.patch(model)
    try:
        rotary = model.model.rotary_emb
        cos, sin = rotary(torch.zeros(1, 3, 128, dtype=torch.bfloat16), torch.arange(3)[None])
        assert isinstance(cos, pt.RotaryPositions)
        with pytest.raises(posenc.UnsupportedError, match="not covered by the patch"):
            cos.unsqueeze(1)
        with pytest.raises(posenc.UnsupportedError, match="not covered by the patch"):
            torch.cat([cos, cos])
    finally:
        pt.unpatch(model)


def test_grad_and_dtype_mismatch_fall_back_to_transformers():
    """Calls posenc cannot serve exactly (autograd; Q/K of another dtype than the hidden states) use
    transformers' own rotation, with a warning, and give its results."""
    from transformers.models.llama import modeling_llama
    model = _model("llama", "float32", "cpu")
    pt.patch(model)
    try:
        rotary = model.model.rotary_emb
        x = torch.zeros(1, 5, 128)
        pos = torch.arange(5)[None]
        q = torch.randn(1, 4, 5, 32, requires_grad=True)
        k = torch.randn(1, 2, 5, 32)
        marker, _ = rotary(x, pos)
        want = modeling_llama.apply_rotary_pos_emb._posenc_original(q, k, *marker.materialize())
        with pytest.warns(UserWarning, match="require grad"):
            got = modeling_llama.apply_rotary_pos_emb(q, k, marker, marker)
        assert torch.equal(got[0], want[0]) and got[0].requires_grad
        marker, _ = rotary(x.to(torch.bfloat16), pos)
        with pytest.warns(UserWarning, match="dtype"):
            got = modeling_llama.apply_rotary_pos_emb(q.detach(), k, marker, marker)
        assert got[0].dtype == torch.float32
    finally:
        pt.unpatch(model)


def test_spec_cache_reads_the_buffer_once_and_follows_updates():
    """The spec is rebuilt only when the rotary module's inv_freq changes (another object, or an
    in-place update); equal tables share one spec."""
    model = _model("llama", "float32", "cpu")
    ids, mask = _prompt("cpu")
    pt.patch(model)
    try:
        rotary = model.model.rotary_emb
        state = rotary._posenc_state
        with torch.no_grad():
            base = model(input_ids=ids, attention_mask=mask).logits
            model(input_ids=ids, attention_mask=mask)
        assert len(state._by_value) == 1
        spec = next(iter(state._by_value.values()))
        rotary.inv_freq.mul_(0.5)  # in place: the version changes
        with torch.no_grad():
            halved = model(input_ids=ids, attention_mask=mask).logits
        assert len(state._by_value) == 2 and not torch.equal(halved, base)
        rotary.inv_freq = rotary.inv_freq.clone().mul_(2.0)  # a new object, equal to the first table
        with torch.no_grad():
            again = model(input_ids=ids, attention_mask=mask).logits
        assert len(state._by_value) == 2 and torch.equal(again, base)
        assert next(iter(state._by_value.values())) is spec
    finally:
        pt.unpatch(model)
