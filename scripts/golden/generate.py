#!/usr/bin/env python3
"""Writes posenc's golden fixtures by running Hugging Face transformers' own RoPE code.

For every family it builds the model file's rotary-embedding module from a real config.json
(configs/ or tests/golden/configs/), draws random Q/K, calls that module and the model file's own
`apply_rotary_pos_emb` (or its family-specific equivalent), and stores inputs, positions, the
inv_freq and attention factor the module used, and the outputs, per dtype (bf16, fp16, fp32).

Nothing is downloaded: only configuration files from this repository are read, and no weights
are needed (RoPE modules have none). Run it where torch and transformers are installed:

    python3 scripts/golden/generate.py --out tests/golden [--only llama-3.1,glm]

Layout of one family directory:
    meta.json                         family, config, versions, cpu capability, cases
    <case>.positions.npy              int64 [tokens] or [3, tokens] (M-RoPE)
    <case>.inv_freq.npy               float32 [R/2] as the module held it for this call
    <case>.<dtype>.{q,k,q_out,k_out}.npy   [tokens, heads, head_dim]; bf16 stored as '<u2' raw bits
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig

REPO = Path(__file__).resolve().parents[2]
BATCH = 2          # sequences per call (tokens are flattened: posenc takes one position per token)
SEQ = 9            # tokens per sequence
Q_HEADS = 2
K_HEADS = 1        # GQA: fewer K heads than Q heads
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# family -> how to build and call transformers' code for it
FAMILIES: dict[str, dict] = {
    "llama-3.1": {"config": "configs/llama-3.1-8b.json", "module": "llama"},
    "qwen3-yarn": {"config": "configs/qwen3-8b-yarn.json", "module": "qwen3"},
    "gpt-oss": {"config": "configs/gpt-oss-20b.json", "module": "gpt_oss"},
    "deepseek-v3": {"config": "configs/deepseek-v3.json", "module": "deepseek_v3", "kind": "deepseek"},
    "phi-3.5-mini": {"config": "configs/phi-3.5-mini.json", "module": "phi3", "cases": ["short", "long"]},
    "dynamic-ntk": {"config": "tests/golden/configs/llama-2-7b-dynamic.json", "module": "llama",
                    "cases": ["short", "long"]},
    "linear": {"config": "tests/golden/configs/llama-2-7b-linear.json", "module": "llama"},
    "gpt-neox": {"config": "configs/gpt-neox-20b.json", "module": "gpt_neox"},
    "gpt-j": {"config": "configs/gpt-j-6b.json", "module": "gptj", "kind": "gptj"},
    "glm": {"config": "configs/glm-4-9b-chat-hf.json", "module": "glm"},
    "glm4": {"config": "configs/glm-4-9b-0414.json", "module": "glm4"},
    "glm4-moe": {"config": "configs/glm-4.5.json", "module": "glm4_moe"},
    "cohere": {"config": "configs/command-r.json", "module": "cohere"},
    "gemma3-local": {"config": "configs/gemma-3-4b.json", "module": "gemma3", "layer_type": "sliding_attention"},
    "gemma3-global": {"config": "configs/gemma-3-4b.json", "module": "gemma3", "layer_type": "full_attention"},
    "qwen2-vl": {"config": "configs/qwen2-vl-7b.json", "module": "qwen2_vl", "kind": "mrope",
                 "cases": ["text", "grid"]},
    "glm4v": {"config": "configs/glm-4.1v-9b.json", "module": "glm4v", "kind": "mrope", "cases": ["text", "grid"]},
}


def seed_of(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "little")


def load_config(path: Path):
    raw = json.loads(path.read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("_comment")}
    model_type = raw.pop("model_type")
    if model_type in ("glm4v", "qwen2_vl"):
        text = raw.get("text_config")
        if text is None:  # Qwen2-VL keeps text keys at the top level
            text = {k: v for k, v in raw.items() if k != "vision_config"}
            text_type = "qwen2_vl_text"
        else:
            text = dict(text)
            text_type = text.pop("model_type", model_type + "_text")
        return AutoConfig.for_model(text_type, **text)
    if model_type == "gemma3":
        text = dict(raw.get("text_config", raw))
        text.pop("model_type", None)
        return AutoConfig.for_model("gemma3_text", **text)
    return AutoConfig.for_model(model_type, **raw)


def rotary_class(module):
    for name in dir(module):
        if name.endswith("RotaryEmbedding") and "Vision" not in name:
            return getattr(module, name)
    raise RuntimeError(f"no rotary embedding class in {module.__name__}")


def limits(cfg) -> tuple[int, int]:
    """(max_position_embeddings, original_max_position_embeddings or the former)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    max_pos = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
    omp = int(params.get("original_max_position_embeddings") or max_pos) if isinstance(params, dict) else max_pos
    return max_pos, omp


def positions_for(case: str, family: str, cfg, kind: str) -> torch.Tensor:
    """[BATCH, SEQ] int64 positions (or [3, BATCH, SEQ] for M-RoPE)."""
    rng = np.random.default_rng(seed_of(family, case, "positions"))
    max_pos, omp = limits(cfg)
    if kind == "gptj":  # GPT-J gathers from a table of n_positions rows
        n = int(cfg.n_positions)
        row0 = [0, 1, 2, 7, 100, 1000, 2000, n - 2, n - 1]
        row1 = sorted(rng.integers(0, n, SEQ).tolist())
    elif case == "short":  # below the switch point of dynamic/longrope: the init-time table
        limit = omp if family.startswith("phi") else max_pos
        row0 = [0, 1, 2, 7, 100, 1000, 2047, limit - 2, limit - 1]
        row1 = sorted(rng.integers(0, limit, SEQ).tolist())
    else:  # the positions the issue names: 0, 1, 2047, 4097, 65539 and the first beyond OMP
        row0 = [0, 1, 2, 7, 2047, 4097, 65539, omp, omp + 1]
        row1 = sorted(rng.integers(0, 131072, SEQ).tolist())
    pos = torch.tensor([row0, row1], dtype=torch.int64)
    if kind != "mrope":
        return pos
    if case == "text":  # text tokens: the three axes agree and M-RoPE reduces to 1-D RoPE
        return pos[None].expand(3, -1, -1).clone()
    # image grid: t fixed, h and w walking a 3x3 grid, offset so the axes differ
    t = pos.clone()
    h = pos.clone()
    w = pos.clone()
    for b in range(BATCH):
        base = int(pos[b, 0])
        for j in range(SEQ):
            t[b, j] = base + 3
            h[b, j] = base + 3 + j // 3
            w[b, j] = base + 3 + j % 3 + 5 * b
    return torch.stack([t, h, w])


def to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def flatten_tokens(x: torch.Tensor, layout: str) -> torch.Tensor:
    """[B, H, S, D] (HF 'bhsd') or [B, S, H, D] ('bshd') -> posenc's [B*S, H, D]."""
    if layout == "bhsd":
        x = x.permute(0, 2, 1, 3)
    return x.reshape(-1, x.shape[2], x.shape[3])


def run_case(family: str, spec: dict, cfg, module, case: str, out: Path) -> dict:
    kind = spec.get("kind", "standard")
    layer_type = spec.get("layer_type")
    position_ids = positions_for(case, family, cfg, kind)
    rec: dict = {"name": case, "positions": f"{case}.positions.npy", "inv_freq": f"{case}.inv_freq.npy",
                 "dtypes": {}}

    if kind == "gptj":
        head_dim = cfg.n_embd // cfg.n_head
        rotary_dim = cfg.rotary_dim
        table = module.create_sinusoidal_positions(cfg.n_positions, rotary_dim)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64) / rotary_dim))
        attention = 1.0
    else:
        rotary = rotary_class(module)(config=cfg)
        head_dim = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads

    gen = torch.Generator().manual_seed(seed_of(family, case, "qk"))
    q32 = torch.randn(BATCH, Q_HEADS, SEQ, head_dim, generator=gen)
    k32 = torch.randn(BATCH, K_HEADS, SEQ, head_dim, generator=gen)

    for dname, dtype in DTYPES.items():
        q, k = q32.to(dtype), k32.to(dtype)
        if kind == "gptj":
            # GPTJAttention.forward: gather the fp32 table rows, cast to the activation dtype, split.
            qb, kb = q.transpose(1, 2), k.transpose(1, 2)  # GPT-J works on [B, S, H, D]
            embed = module.get_embed_positions(table, position_ids)
            idx = position_ids.unsqueeze(-1).repeat(1, 1, embed.shape[-1])
            sincos = torch.gather(embed, 1, idx).to(kb.dtype)
            sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
            q_rot = module.apply_rotary_pos_emb(qb[..., :rotary_dim], sin, cos)
            k_rot = module.apply_rotary_pos_emb(kb[..., :rotary_dim], sin, cos)
            q_out = torch.cat([q_rot, qb[..., rotary_dim:]], dim=-1).transpose(1, 2)
            k_out = torch.cat([k_rot, kb[..., rotary_dim:]], dim=-1).transpose(1, 2)
        else:
            if layer_type:
                cos, sin = rotary(q, position_ids, layer_type)
            else:
                cos, sin = rotary(q, position_ids)
            if kind == "deepseek":
                q_out, k_out = module.apply_rotary_pos_emb_interleave(q, k, cos, sin)
            else:
                q_out, k_out = module.apply_rotary_pos_emb(q, k, cos, sin)
        files = {}
        for name, tensor in (("q", q), ("k", k), ("q_out", q_out), ("k_out", k_out)):
            fname = f"{case}.{dname}.{name}.npy"
            np.save(out / fname, to_numpy(flatten_tokens(tensor, "bhsd")))
            files[name] = fname
        rec["dtypes"][dname] = files

    if kind != "gptj":
        inv_freq = getattr(rotary, f"{layer_type}_inv_freq") if layer_type else rotary.inv_freq
        attention = getattr(rotary, f"{layer_type}_attention_scaling") if layer_type else rotary.attention_scaling
    np.save(out / rec["inv_freq"], inv_freq.detach().float().numpy())
    flat_pos = position_ids.reshape(3, -1) if kind == "mrope" else position_ids.reshape(-1)
    np.save(out / rec["positions"], flat_pos.numpy())
    rec["attention_factor"] = float(attention)
    rec["tokens"] = BATCH * SEQ
    rec["max_position"] = int(position_ids.max())
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "tests" / "golden"))
    ap.add_argument("--only", default="", help="comma-separated family names")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
    only = {s for s in args.only.split(",") if s}
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "numpy": np.__version__, "python": sys.version.split()[0]}
    print(f"transformers {versions['transformers']}, torch {versions['torch']}, "
          f"cpu capability {versions['cpu_capability']}")
    failures = 0
    for family, spec in FAMILIES.items():
        if only and family not in only:
            continue
        cfg_path = REPO / spec["config"]
        if not cfg_path.exists():
            print(f"  {family}: SKIPPED, {spec['config']} is missing")
            failures += 1
            continue
        out = Path(args.out) / family
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.npy"):
            old.unlink()
        cfg = load_config(cfg_path)
        module = importlib.import_module(f"transformers.models.{spec['module']}.modeling_{spec['module']}")
        cases = [run_case(family, spec, cfg, module, case, out) for case in spec.get("cases", ["main"])]
        meta = {"family": family, "config": spec["config"], "module": module.__name__,
                "layer_type": spec.get("layer_type", "default"), "kind": spec.get("kind", "standard"),
                "q_heads": Q_HEADS, "k_heads": K_HEADS, **versions, "cases": cases,
                "note": "tensors are [tokens, heads, head_dim] with tokens = batch*seq flattened; "
                        "bfloat16 arrays hold raw bits as uint16"}
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"  {family}: {len(cases)} case(s) -> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
