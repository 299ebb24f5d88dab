"""transformers' own outputs (tests/golden, written by scripts/golden/generate.py) through the Python API."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import posenc
from conftest import REPO, needs_torch, torch

pytestmark = needs_torch

GOLDEN = os.path.join(REPO, "tests", "golden")
FAMILIES = sorted(d for d in os.listdir(GOLDEN)
                  if os.path.isfile(os.path.join(GOLDEN, d, "meta.json")))
TORCH_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def load(path, dtype):
    a = np.load(path)
    t = torch.from_numpy(a.copy())
    return t.view(torch.bfloat16) if dtype == "bfloat16" and a.dtype == np.uint16 else t


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_family(device, family):
    """The fixture's inv_freq fed in (scaling="table"): bf16/fp16 bit for bit on the CPU, fp32 within
    2^-21 max|x| (transformers' CPU float32 cos/sin is not correctly rounded; posenc's is); on CUDA
    16-bit within 2 ulps of the head's largest value (CUDA's cos/sin are not the CPU fixture's)."""
    meta = json.load(open(os.path.join(GOLDEN, family, "meta.json")))
    layer = meta["layer_type"]
    spec = posenc.RopeSpec.from_config(os.path.join(REPO, meta["config"]), layer_type=layer)
    for case in meta["cases"]:
        d = os.path.join(GOLDEN, family)
        pos = torch.from_numpy(np.load(os.path.join(d, case["positions"]))).to(device)
        inv = np.load(os.path.join(d, case["inv_freq"])).astype(np.float32).tolist()
        # The fixtures record the rotation alone: a config's QK-norm stage (Qwen3, Gemma 3) is left
        # out here and checked by test_qk_norm.py.
        fed = spec.replace(scaling="table", inv_freq=inv, attention_factor=case["attention_factor"], qk_norm="none")
        for dname, files in case["dtypes"].items():
            q = load(os.path.join(d, files["q"]), dname).to(device)
            k = load(os.path.join(d, files["k"]), dname).to(device)
            q_want = load(os.path.join(d, files["q_out"]), dname)
            k_want = load(os.path.join(d, files["k_out"]), dname)
            posenc.apply_rope_(q, k, pos, fed)
            for got, want, name in ((q.cpu(), q_want, "Q"), (k.cpu(), k_want, "K")):
                if dname == "float32" or device == "cuda":
                    # float32: 2^-21 max|x|. On CUDA the fixture's CPU cos/sin (MKL) and the
                    # engine's (CUDA cosf/sinf, as torch on the GPU) can differ by an ulp, which
                    # can flip the last bit of a 16-bit product or sum: within 2 ulps of the
                    # head's largest value (bit-exactness on CUDA is test_transformers.py's, against
                    # transformers run on the GPU).
                    rel = 2.0 ** -21 if dname == "float32" else 2.0 * torch.finfo(want.dtype).eps
                    bound = rel * want.float().abs().amax(dim=-1, keepdim=True)
                    err = (got.float() - want.float()).abs()
                    assert (err <= bound).all(), f"{family}/{case['name']}/{dname} {name}"
                else:
                    assert torch.equal(got, want), f"{family}/{case['name']}/{dname} {name} not bit-exact"
