#!/usr/bin/env python3
"""Every bfloat16 value cast to float8 e4m3fn by torch as a quantized KV cache stores it: (x / scale), clamped to +-448, `.to(torch.float8_e4m3fn)`.

Writes tests/golden/arithmetic/fp8/bf16_to_e4m3.bin: raw uint8 [scales, 65536], row s holding the e4m3 bits of
bf16 bit pattern i (NaNs and infinities included) for scale SCALES[s], computed in float32 on the
CPU. tests/test_qk_norm.cpp's Fp8Cast test writes all 65536 values through the fused append into
an fp8 cache and compares byte for byte.

usage: scripts/golden/fp8_cast.py   (torch 2.11)
"""
import json
import pathlib

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCALES = [1.0, 0.0375, 3.5]


def main():
    out = ROOT / "tests/golden/arithmetic/fp8"
    out.mkdir(parents=True, exist_ok=True)
    x = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    rows = []
    for scale in SCALES:
        q = (x / torch.tensor(scale, dtype=torch.float32)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        rows.append(q.view(torch.uint8).numpy())
    (out / "bf16_to_e4m3.bin").write_bytes(np.stack(rows).astype(np.uint8).tobytes())
    (out / "meta.json").write_text(json.dumps({"scales": SCALES, "torch": torch.__version__,
                                               "rule": "(x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)"},
                                              indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
