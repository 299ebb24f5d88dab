#!/usr/bin/env python3
"""Writes the fixtures of examples/glm4_attention.cpp by running transformers' own GlmAttention.

A tiny random GlmConfig (float32, seeded) builds transformers.models.glm.modeling_glm.GlmAttention
and GlmRotaryEmbedding exactly as GlmModel uses them (eager attention, additive causal mask,
position_embeddings from the rotary module, one DynamicCache per sequence). The schedule is a
continuous batch:

    step 0        prefill of sequences 0, 1, 2 (PROMPTS tokens, positions 0..len-1)
    steps 1..32   one decode token for every live sequence; at step JOIN_STEP sequence 3 joins
                  with a prefill chunk of JOIN_PROMPT tokens in the same step (a mixed batch)

Every token of a step is flattened in entry order (the order of meta.json's "entries").
Nothing is downloaded. Run it where torch and transformers are installed:

    python3 scripts/golden/glm_attention.py --out tests/golden/glm_attention

Files (float32 unless stated, one row per token, all steps concatenated in order):
    glm_attention.meta.json        config, schedule, versions (not meta.json: tests/test_golden.cpp
                                   takes every tests/golden/*/meta.json for a RoPE-only family)
    q_proj.weight.npy ... o_proj.weight.npy, {q,k,v}_proj.bias.npy   the module's parameters
    hidden.npy     [T, hidden]     input hidden states
    positions.npy  int64 [T]       position ids passed to the rotary module
    seq_ids.npy    int64 [T]       sequence of each token
    steps.npy      int64 [T]       step of each token
    output.npy     [T, hidden]     attention output after o_proj
    k_proj.npy     [T, kv*hd]      k_proj output inside forward (captured by a hook), pre-RoPE
    k_rope.npy     [T, kv*hd]      the rotated key the DynamicCache holds for that token
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import DynamicCache, GlmConfig
from transformers.models.glm import modeling_glm

SEED = 20240917
PROMPTS = [5, 9, 3]      # prefill lengths of sequences 0, 1, 2
DECODE_STEPS = 32
JOIN_STEP = 10           # sequence 3 joins at this decode step ...
JOIN_PROMPT = 4          # ... with a prefill chunk of this many tokens
MAX_LEN = 48             # cache rows per sequence on the posenc side (>= longest sequence)


def causal_mask(past: int, new: int) -> torch.Tensor:
    """Additive [1, 1, new, past + new] mask: query i (position past + i) sees keys 0..past + i."""
    q = torch.arange(new)[:, None] + past
    k = torch.arange(past + new)[None, :]
    mask = torch.zeros(new, past + new, dtype=torch.float32)
    mask[k > q] = torch.finfo(torch.float32).min
    return mask[None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    config = GlmConfig(
        vocab_size=32, pad_token_id=0, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
        rope_theta=10000.0, attention_bias=True, max_position_embeddings=MAX_LEN, attention_dropout=0.0,
    )
    config._attn_implementation = "eager"
    attn = modeling_glm.GlmAttention(config, layer_idx=0).to(torch.float32).eval()
    # nn.Linear's default init gives tiny biases; draw everything so each term matters.
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    rotary = modeling_glm.GlmRotaryEmbedding(config)
    kv_width = config.num_key_value_heads * config.head_dim

    captured: list[torch.Tensor] = []
    attn.k_proj.register_forward_hook(lambda _m, _i, o: captured.append(o.detach().clone()))

    caches: dict[int, DynamicCache] = {}
    lengths: dict[int, int] = {}
    rows: dict[str, list] = {k: [] for k in ("hidden", "positions", "seq_ids", "steps", "output", "k_proj")}
    kpos: list[tuple[int, int]] = []  # (seq, position) of each row, to read k_rope from the caches
    schedule = []

    def run_entry(step: int, seq: int, new: int) -> None:
        past = lengths.get(seq, 0)
        if seq not in caches:
            caches[seq] = DynamicCache(config=config)
        hidden = torch.randn(1, new, config.hidden_size, dtype=torch.float32)
        position_ids = torch.arange(past, past + new, dtype=torch.int64)[None]
        with torch.no_grad():
            pe = rotary(hidden, position_ids)
            output, _ = attn(hidden, position_embeddings=pe, attention_mask=causal_mask(past, new),
                             past_key_values=caches[seq])
        lengths[seq] = past + new
        rows["hidden"].append(hidden[0].numpy())
        rows["positions"].append(position_ids[0].numpy())
        rows["seq_ids"].append(np.full(new, seq, dtype=np.int64))
        rows["steps"].append(np.full(new, step, dtype=np.int64))
        rows["output"].append(output[0].numpy())
        rows["k_proj"].append(captured.pop()[0].numpy())
        kpos.extend((seq, past + j) for j in range(new))

    schedule.append({"step": 0, "entries": [[s, n] for s, n in enumerate(PROMPTS)]})
    for s, n in enumerate(PROMPTS):
        run_entry(0, s, n)
    for step in range(1, DECODE_STEPS + 1):
        entries = [[s, 1] for s in sorted(lengths)]
        if step == JOIN_STEP:
            entries.append([len(PROMPTS), JOIN_PROMPT])
        schedule.append({"step": step, "entries": entries})
        for s, n in entries:
            run_entry(step, s, n)

    # The cache holds [1, kv_heads, len, head_dim] per sequence; token rows are [kv_heads * head_dim].
    k_rope = np.stack([caches[s].layers[0].keys[0, :, p, :].reshape(kv_width).numpy() for s, p in kpos])

    def save(name: str, array: np.ndarray) -> None:
        np.save(out / f"{name}.npy", np.ascontiguousarray(array))

    for name, p in attn.named_parameters():
        save(name, p.detach().numpy().astype(np.float32))
    for name, parts in rows.items():
        save(name, np.concatenate(parts).astype(parts[0].dtype))
    save("k_rope", k_rope.astype(np.float32))

    meta = {
        "generator": "scripts/golden/glm_attention.py",
        "module": "transformers.models.glm.modeling_glm.GlmAttention (eager)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "seed": SEED,
        "config": {"hidden_size": config.hidden_size, "num_attention_heads": config.num_attention_heads,
                   "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
                   "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "attention_bias": True,
                   "dtype": "float32"},
        "max_len": MAX_LEN,
        "tokens": int(sum(len(p) for p in rows["positions"])),
        "schedule": schedule,
    }
    # One schedule step per line keeps the file short and diffable.
    text = json.dumps({k: v for k, v in meta.items() if k != "schedule"}, indent=1)[:-2]
    steps = ",\n  ".join(json.dumps(s) for s in schedule)
    (out / "glm_attention.meta.json").write_text(text + ',\n "schedule": [\n  ' + steps + "\n ]\n}\n")


if __name__ == "__main__":
    main()
