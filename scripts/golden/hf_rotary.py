"""Shared by the bit-exactness fixtures and sweep: transformers' own rotary module and apply function for a grid of schemes.

Each case is (scheme, theta, rotary dim): a LlamaConfig whose head is the rotary window
(head_dim = dim), the scheme's rope_parameters, and transformers' LlamaRotaryEmbedding +
apply_rotary_pos_emb, run on a torch device. Q/K inputs come from a formula that C++ computes to
the same bits (act_input), so fixtures need not store them, and outputs are compared through
`digest`, which any single differing element changes.

Used by scripts/golden/arithmetic_fixtures.py and scripts/golden/sweep_bitexact.py.
"""
from __future__ import annotations

import numpy as np
import torch

THETAS = (1e4, 1e5, 5e5, 1e6, 5e6, 1e7, 1e8)
DIMS = (16, 32, 64, 80, 96, 128, 160, 256)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SCHEMES = ("none", "linear", "dynamic", "yarn", "longrope", "llama3")
TOP = 1 << 20  # positions run to 2^20 - 1

# The scheme parameters of every case (posenc's ScalingParams names; max_position_embeddings is
# the config's). Dynamic's threshold is max_position_embeddings, LongRoPE's the original one.
PARAMS = {
    "none": {"max_position_embeddings": 4096},
    "linear": {"factor": 4.0, "max_position_embeddings": 16384},
    "dynamic": {"factor": 2.0, "max_position_embeddings": 4096},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 4096, "max_position_embeddings": 16384},
    "longrope": {"factor": 32.0, "original_max_position_embeddings": 4096, "max_position_embeddings": 131072},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "max_position_embeddings": 131072},
}


def longrope_factors(dim: int) -> tuple[list[float], list[float]]:
    """Short and long factor lists of dim/2 entries, uneven so float32 rounding matters."""
    n = dim // 2
    short = [1.0 + 0.37 * (i / n) ** 1.5 + 0.001 * (i % 7) for i in range(n)]
    long = [1.0 + 47.3 * (i / n) ** 2 + 0.013 * (i % 5) for i in range(n)]
    return short, long


def threshold(scheme: str) -> int | None:
    """The largest seq_len whose call uses the init table (dynamic, longrope), else None."""
    if scheme == "dynamic":
        return PARAMS["dynamic"]["max_position_embeddings"]
    if scheme == "longrope":
        return PARAMS["longrope"]["original_max_position_embeddings"]
    return None


def rope_parameters(scheme: str, theta: float, dim: int) -> dict:
    p = {k: v for k, v in PARAMS[scheme].items() if k != "max_position_embeddings"}
    rope = {"rope_type": "default" if scheme == "none" else scheme, "rope_theta": theta, **p}
    if scheme == "longrope":
        rope["short_factor"], rope["long_factor"] = longrope_factors(dim)
    return rope


def rotary_module(scheme: str, theta: float, dim: int, device: str):
    """A fresh LlamaRotaryEmbedding on `device`, built as from_pretrained builds a model's: transformers 5
    initializes the non-persistent inv_freq buffer on the CPU (its rope functions run without a
    device) and copies it to the model's device, so the init table is torch's CPU table on every
    device; tables computed during a call (dynamic NTK, LongRoPE's long table) come from `device`."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = LlamaConfig(hidden_size=2 * dim, num_attention_heads=2, num_key_value_heads=1, head_dim=dim,
                      max_position_embeddings=PARAMS[scheme]["max_position_embeddings"],
                      rope_parameters=rope_parameters(scheme, theta, dim))
    return LlamaRotaryEmbedding(cfg).to(device)


def act_input(tokens: int, heads: int, dim: int, salt: int) -> np.ndarray:
    """[tokens, heads, dim] float32 in [-1, 1): element i (row-major) is (u - 2^23) / 2^23 with u the top
    24 bits of a 64-bit mix of i + salt: exact in float32, and C++ computes the same (tests)."""
    i = np.arange(tokens * heads * dim, dtype=np.uint64) + np.uint64(salt)
    with np.errstate(over="ignore"):
        x = i * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(32)
    u = (x >> np.uint64(40)).astype(np.float32)
    return ((u - np.float32(1 << 23)) / np.float32(1 << 23)).reshape(tokens, heads, dim)


def bits(t: torch.Tensor) -> np.ndarray:
    """Raw bits of a tensor as uint64 (float32: 32 bits, 16-bit types: 16 bits), row-major."""
    t = t.detach().cpu().contiguous()
    view = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype]
    mask = 0xFFFFFFFF if t.dtype == torch.float32 else 0xFFFF
    return (t.view(view).numpy().astype(np.int64) & mask).astype(np.uint64).reshape(-1)


def digest(b: np.ndarray) -> int:
    """sum_i bits_i * (2i + 1) * 0x9E3779B97F4A7C15 mod 2^64: any one differing element changes it."""
    i = np.arange(b.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        m = (i * np.uint64(2) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        return int(np.sum(b * m, dtype=np.uint64))


def rotate(module, positions: np.ndarray, dtype: torch.dtype, q_heads: int, k_heads: int, device: str):
    """transformers' rotation of act_input Q (salt 1) and K (salt 2) at `positions` (one sequence):
    (q_out, k_out) as [tokens, heads, dim] on the CPU, plus the module's inv_freq and attention
    scaling after the call."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    tokens = positions.size
    dim = 2 * module.inv_freq.numel()
    q = torch.from_numpy(act_input(tokens, q_heads, dim, 1)).to(device=device, dtype=dtype)
    k = torch.from_numpy(act_input(tokens, k_heads, dim, 2)).to(device=device, dtype=dtype)
    pos = torch.from_numpy(positions.astype(np.int64)).to(device)[None, :]
    qh, kh = q.transpose(0, 1)[None], k.transpose(0, 1)[None]  # [1, heads, tokens, dim]
    cos, sin = module(qh, pos)
    q_out, k_out = apply_rotary_pos_emb(qh, kh, cos, sin)
    return (q_out[0].transpose(0, 1).cpu(), k_out[0].transpose(0, 1).cpu(),
            module.inv_freq.detach().float().cpu().numpy(), float(module.attention_scaling))


def spread(rng: np.random.Generator, lo: int, hi: int, count: int) -> np.ndarray:
    """`count` distinct sorted positions in [lo, hi)."""
    return np.sort(rng.choice(np.arange(lo, hi, dtype=np.int64), size=min(count, hi - lo), replace=False))


def calls(scheme: str, seed: int = 16) -> list[tuple[str, np.ndarray]]:
    """The calls a case makes, in order: (name, positions). Fixed tables: one call reaching 2^20 - 1.
    dynamic / longrope: below the threshold (seq_len = threshold), just above it (seq_len =
    threshold + 1), far above (2^20), and below again: the threshold crossed both ways."""
    rng = np.random.default_rng(seed)
    top = np.arange(TOP - 64, TOP, dtype=np.int64)
    far = np.concatenate([np.arange(0, 1024, dtype=np.int64), spread(rng, 1024, TOP - 64, 1024), top])
    t = threshold(scheme)
    if t is None:
        return [("all", far)]
    below = np.concatenate([np.arange(0, 1024, dtype=np.int64), spread(rng, 1024, t - 1, 1000), [t - 1]])
    above = np.concatenate([np.arange(0, 1024, dtype=np.int64), spread(rng, 1024, t, 1000), [t]])
    return [("below", below), ("above", above), ("far", far), ("below_again", below)]


def trig_fingerprint() -> str:
    """Which cos/sin this host's torch computes on the CPU (Intel MKL picks its kernel by CPU: the
    generic one on AMD, others on Intel): the digest of torch's float32 cos then sin of 8192 fixed
    angles up to 2^20 (angle i = fl32(u_i) * 2^-12, u_i = i * 2654435761 mod 2^32), as 16 hex digits.
    tests/support/trig_fingerprint.hpp computes the same with posenc's MKL."""
    u = (np.arange(8192, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
    angle = torch.from_numpy(u.astype(np.float32) * np.float32(2.0 ** -12))
    return f"{digest(np.concatenate([bits(angle.cos()), bits(angle.sin())])):016x}"
