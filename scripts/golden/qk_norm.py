#!/usr/bin/env python3
"""QK-norm fixtures: transformers' own attention modules (Qwen3, Gemma 3, Glm4Moe) normalise and rotate random Q/K.

For each model the script builds the real `*Attention` module from a config in configs/ (shrunk to
two layers, the attention geometry kept), gives q_norm/k_norm random weights, and runs its eager
forward on random hidden states at scattered positions. It records what the forward computed:
the projections q_proj(h), k_proj(h) viewed as [tokens, heads, head_dim] (the norm's input), the
norm weights, the positions, and the Q/K that apply_rotary_pos_emb returned (normalised, then
rotated), all in bfloat16 (raw bits as uint16). tests/test_qk_norm.cpp runs posenc's norm + RoPE
stage, from the same config file, on the recorded input and compares bit for bit.

usage: scripts/golden/qk_norm.py [--out tests/golden/qk_norm]   (CPU; torch 2.11, transformers 5.17)
"""
import argparse
import importlib
import json
import pathlib

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]

CASES = [
    # name, config file, module path, config class, attention class, layer type (None: single spec)
    ("qwen3", "configs/qwen3-8b-yarn.json", "qwen3", "Qwen3Config", "Qwen3Attention", None),
    ("gemma3-global", "configs/gemma-3-4b.json", "gemma3", "Gemma3TextConfig", "Gemma3Attention", "full_attention"),
    ("gemma3-local", "configs/gemma-3-4b.json", "gemma3", "Gemma3TextConfig", "Gemma3Attention", "sliding_attention"),
    ("glm4-moe", "configs/glm-4.5.json", "glm4_moe", "Glm4MoeConfig", "Glm4MoeAttention", None),
]

TOKENS = 40
Q_HEADS = 2
KV_HEADS = 1


def bits(x):
    return x.contiguous().view(torch.int16).numpy().view(np.uint16)


def make_config(cls, path):
    raw = json.loads((ROOT / path).read_text())
    raw = raw.get("text_config", raw) if "text_config" in raw else raw
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    head_dim = raw.get("head_dim") or cls().head_dim
    raw.update(num_attention_heads=Q_HEADS, num_key_value_heads=KV_HEADS, head_dim=head_dim,
               hidden_size=256, num_hidden_layers=2)
    if "layer_types" in cls().to_dict() and cls.__name__.startswith("Gemma3"):
        raw["layer_types"] = ["sliding_attention", "full_attention"]
    cfg = cls(**raw)
    cfg._attn_implementation = "eager"
    return cfg


def run_case(name, config_path, module, config_class, attention_class, layer_type, out_dir, seed):
    mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    cfg = make_config(getattr(importlib.import_module("transformers"), config_class), config_path)
    layer_idx = cfg.layer_types.index(layer_type) if layer_type else 0
    torch.manual_seed(seed)
    attn = getattr(mod, attention_class)(cfg, layer_idx).to(torch.bfloat16).eval()
    rotary_cls = [c for n, c in vars(mod).items() if n.endswith("RotaryEmbedding")][0]
    rotary = rotary_cls(cfg)  # built on the CPU in float32, as from_pretrained does
    head_dim = attn.head_dim
    gemma = module == "gemma3"
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            # Qwen3/Glm4Moe multiply by w (around 1), Gemma 3 by 1 + w (w around 0).
            w = torch.randn(head_dim) * 0.3 + (0.0 if gemma else 1.0)
            norm.weight.copy_(w.to(norm.weight.dtype))
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            lin.weight.copy_((torch.randn_like(lin.weight, dtype=torch.float32) * 0.2).to(lin.weight.dtype))
            if lin.bias is not None:
                lin.bias.copy_((torch.randn_like(lin.bias, dtype=torch.float32)).to(lin.bias.dtype))
    hidden = (torch.randn(1, TOKENS, cfg.hidden_size) * torch.exp(torch.randn(1, TOKENS, 1))).to(torch.bfloat16)
    positions = torch.cat([torch.arange(16), torch.randint(16, 40000, (TOKENS - 16,))]).view(1, TOKENS)

    captured = {}
    attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o))
    attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))
    original = mod.apply_rotary_pos_emb

    def capture(q, k, cos, sin, *args, **kwargs):
        result = original(q, k, cos, sin, *args, **kwargs)
        captured["q_out"], captured["k_out"] = result
        return result

    mod.apply_rotary_pos_emb = capture
    try:
        with torch.no_grad():
            cos, sin = rotary(hidden, positions, layer_type) if layer_type else rotary(hidden, positions)
            attn(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None)
    finally:
        mod.apply_rotary_pos_emb = original

    out = out_dir / name
    out.mkdir(parents=True, exist_ok=True)
    q_in = captured["q"].view(TOKENS, Q_HEADS, head_dim)
    k_in = captured["k"].view(TOKENS, KV_HEADS, head_dim)
    q_out = captured["q_out"][0].transpose(0, 1)  # [heads, tokens, d] -> [tokens, heads, d]
    k_out = captured["k_out"][0].transpose(0, 1)
    for key, tensor in (("q", q_in), ("k", k_in), ("q_out", q_out), ("k_out", k_out),
                        ("q_norm_weight", attn.q_norm.weight.detach()), ("k_norm_weight", attn.k_norm.weight.detach())):
        np.save(out / f"{key}.npy", bits(tensor))
    np.save(out / "positions.npy", positions[0].numpy().astype(np.int64))
    meta = {
        "config": config_path, "layer_type": layer_type or "default", "dtype": "bfloat16",
        "tokens": TOKENS, "q_heads": Q_HEADS, "kv_heads": KV_HEADS, "head_dim": head_dim,
        "norm": type(attn.q_norm).__name__, "epsilon": float(getattr(attn.q_norm, "variance_epsilon", getattr(attn.q_norm, "eps", 0))),
        "torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "note": "bfloat16 arrays hold raw bits as uint16; q/k are the norm's input (the projections), q_out/k_out "
                "what apply_rotary_pos_emb returned inside the module's forward",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: head_dim {head_dim}, {type(attn.q_norm).__name__}, written to {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "tests/golden/qk_norm"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for i, case in enumerate(CASES):
        run_case(*case, pathlib.Path(args.out), seed=1000 + i)


if __name__ == "__main__":
    main()
