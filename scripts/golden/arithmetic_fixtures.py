#!/usr/bin/env python3
"""Writes the HfArithmetic fixtures: transformers' own tables and outputs on one torch device, for every scheme x theta x rotary dim.

For each case (hf_rotary.SCHEMES x THETAS x DIMS) it builds a fresh LlamaRotaryEmbedding on the
device and makes the case's calls (hf_rotary.calls: about 2100 positions each, reaching 2^20 - 1,
and for dynamic / LongRoPE the call-time threshold crossed both ways), each with a fresh module so
that every call's table is the one its own largest position selects. It stores the inv_freq the
module used for each call and, per dtype, the digests of Q and K as transformers'
apply_rotary_pos_emb rotated them (inputs come from hf_rotary.act_input, which the C++ test
recomputes). tests/test_hf_arithmetic.cpp holds posenc's engine to them with zero differing values.

    python3 scripts/golden/arithmetic_fixtures.py --device cpu    # -> tests/golden/arithmetic/torch_cpu
    python3 scripts/golden/arithmetic_fixtures.py --device cuda   # -> tests/golden/arithmetic/torch_cuda

Files: meta.json (versions, the device's CPU capability, scheme parameters, positions sets, every
call's seq_len, table offset, attention factor and digests), inv_freq.npy (float32 tables, one
after another; calls selecting the same table share it), positions.npy (int32 positions sets, one after another).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_rotary as hr  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
Q_HEADS = 1
K_HEADS = 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default="", help="default tests/golden/arithmetic/torch_<device>")
    args = ap.parse_args()
    out = Path(args.out) if args.out else REPO / "tests" / "golden" / "arithmetic" / f"torch_{args.device}"
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False

    positions_sets: dict[str, dict] = {}
    positions_all: list[np.ndarray] = []
    tables: list[np.ndarray] = []
    table_at: dict[bytes, int] = {}
    offset = 0
    table_offset = 0
    cases = []
    for scheme in hr.SCHEMES:
        scheme_calls = hr.calls(scheme)
        for name, pos in scheme_calls:
            key = f"{scheme}.{name}" if hr.threshold(scheme) is not None else "all"
            if key not in positions_sets:
                positions_sets[key] = {"offset": offset, "count": int(pos.size)}
                positions_all.append(pos.astype(np.int64))
                offset += pos.size
        for theta in hr.THETAS:
            for dim in hr.DIMS:
                case = {"scheme": scheme, "theta": theta, "dim": dim, "calls": []}
                for name, pos in scheme_calls:
                    key = f"{scheme}.{name}" if hr.threshold(scheme) is not None else "all"
                    call = {"name": name, "positions": key, "seq_len": int(pos.max()) + 1, "digests": {}}
                    for dname, dtype in hr.DTYPES.items():
                        module = hr.rotary_module(scheme, theta, dim, args.device)
                        q, k, inv, af = hr.rotate(module, pos, dtype, Q_HEADS, K_HEADS, args.device)
                        call["digests"][dname] = [f"{hr.digest(hr.bits(q)):016x}", f"{hr.digest(hr.bits(k)):016x}"]
                    table = inv.astype(np.float32)
                    key = table.tobytes()
                    if key not in table_at:  # calls that select the same table share it
                        table_at[key] = table_offset
                        tables.append(table)
                        table_offset += table.size
                    call["inv_freq"] = {"offset": table_at[key], "count": int(table.size)}
                    call["attention_factor"] = af
                    case["calls"].append(call)
                cases.append(case)
            print(f"  {scheme} theta {theta:g}: {len(hr.DIMS)} dims", flush=True)

    np.save(out / "inv_freq.npy", np.concatenate(tables))
    np.save(out / "positions.npy", np.concatenate(positions_all).astype(np.int32))
    meta = {
        "generator": "scripts/golden/arithmetic_fixtures.py",
        "device": args.device,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # MKL picks its cos/sin kernel by CPU: tests compare outputs only where theirs is the same.
        "cpu_trig_fingerprint": hr.trig_fingerprint(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "module": "transformers.models.llama.modeling_llama (LlamaRotaryEmbedding, apply_rotary_pos_emb)",
        "q_heads": Q_HEADS,
        "k_heads": K_HEADS,
        "act_input": "hf_rotary.act_input: Q salt 1, K salt 2, rounded to the dtype by torch's .to()",
        "digest": "hf_rotary.digest over the [tokens, heads, dim] output bits, as 16 hex digits",
        "params": hr.PARAMS,
        "longrope_factors": {str(d): dict(zip(("short", "long"), hr.longrope_factors(d))) for d in hr.DIMS},
        "positions": positions_sets,
        "cases": cases,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=None, separators=(",", ":")) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{len(cases)} cases, {sum(len(c['calls']) for c in cases)} calls -> "
          f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out} ({size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
