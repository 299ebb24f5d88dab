#!/usr/bin/env python3
"""Writes the MLA fixture of tests/test_golden_mla.cpp with transformers' own DeepSeek-V3 code.

DeepseekV3Attention.forward (transformers 5.17) splits the query [B, H, S, nope + rope] and the
compressed KV [B, S, latent + rope] with torch.split, rotates the rope slices with the model's
DeepseekV3RotaryEmbedding (YaRN, mscale) and apply_rotary_pos_emb_interleave (rope_interleave),
and caches the latent and the rotated k_pe; the nope part and the latent pass through unchanged.
This script makes exactly those calls, with the module built from configs/deepseek-v3.json, on
random bfloat16 tensors for TOKENS positions (0, both sides of original_max_position_embeddings
4096, up to 163839), and stores the rope slices only (the pass-through parts are the identity,
which the C++ test checks on random data of its own). Nothing is downloaded. Run it where torch
and transformers are installed:

    python3 scripts/golden/mla.py --out tests/golden/deepseek_v3_mla

Files (bfloat16 as '<u2' raw bits, one row per token):
    mla.meta.json        config, versions, shapes, attention factor (not meta.json: tests/test_golden.cpp
                         takes every tests/golden/*/meta.json for a RoPE-only family)
    positions.npy        int64 [T]
    inv_freq.npy         float32 [32] as the rotary module held it
    q_pe.npy, q_out.npy  [T, H, 64]   the query's rope slice before and after the rotation
    k_pe.npy, k_out.npy  [T, 1, 64]   the compressed KV's rope slice before and after the rotation
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as deepseek

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import REPO, load_config, seed_of, to_numpy  # noqa: E402

CONFIG = "configs/deepseek-v3.json"
TOKENS = 192
HEADS = 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "golden" / "deepseek_v3_mla"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / CONFIG)
    assert cfg.rope_interleave, "DeepSeek-V3 rotates with apply_rotary_pos_emb_interleave"
    nope, rope, latent = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    rotary = deepseek.DeepseekV3RotaryEmbedding(config=cfg)

    rng = np.random.default_rng(seed_of("deepseek_v3_mla", "positions"))
    fixed = [0, 1, 2, 7, 2047, 4095, 4096, 4097, 8191, 65539, 131072, 163839]
    positions = sorted(fixed + rng.integers(0, 163840, TOKENS - len(fixed)).tolist())
    position_ids = torch.tensor([positions], dtype=torch.int64)  # one sequence of TOKENS tokens

    gen = torch.Generator().manual_seed(seed_of("deepseek_v3_mla", "tensors"))
    q_states = torch.randn(1, HEADS, TOKENS, nope + rope, generator=gen).to(torch.bfloat16)
    compressed_kv = torch.randn(1, TOKENS, latent + rope, generator=gen).to(torch.bfloat16)
    # DeepseekV3Attention.forward, the rotary part (the model calls the rotary module on its
    # bfloat16 hidden states, which gives cos/sin their dtype).
    q_pass, q_rot = torch.split(q_states, [nope, rope], dim=-1)
    _, k_rot = torch.split(compressed_kv, [latent, rope], dim=-1)
    k_rot = k_rot.view(1, 1, TOKENS, rope)
    cos, sin = rotary(compressed_kv, position_ids)
    q_out, k_out = deepseek.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
    assert torch.equal(torch.cat((q_pass, q_out), dim=-1)[..., :nope], q_states[..., :nope])

    def tokens_first(x: torch.Tensor) -> np.ndarray:  # [1, H, S, D] -> [S, H, D]
        return to_numpy(x[0].transpose(0, 1))

    for name, tensor in (("q_pe", q_rot), ("q_out", q_out), ("k_pe", k_rot), ("k_out", k_out)):
        np.save(out / f"{name}.npy", tokens_first(tensor))
    np.save(out / "positions.npy", position_ids[0].numpy())
    np.save(out / "inv_freq.npy", rotary.inv_freq.detach().float().numpy())
    meta = {"config": CONFIG, "module": deepseek.__name__, "tokens": TOKENS, "q_heads": HEADS,
            "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "kv_lora_rank": latent,
            "attention_factor": float(rotary.attention_scaling), "dtype": "bfloat16",
            "transformers": transformers.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "numpy": np.__version__,
            "note": "tensors are [tokens, heads, 64]; bfloat16 arrays hold raw bits as uint16"}
    (out / "mla.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"deepseek_v3_mla: {TOKENS} tokens -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
