"""NumPy arrays on the CPU engine: the same results as torch, without torch in the call."""

from __future__ import annotations

import numpy as np
import pytest

import posenc
from conftest import reference64


def test_numpy_float32_in_place_and_out_of_place():
    spec = posenc.RopeSpec(head_dim=64, theta=1e4, numerics="accurate")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((17, 3, 64)).astype(np.float32)
    k = rng.standard_normal((17, 1, 64)).astype(np.float32)
    pos = rng.integers(0, 1 << 16, 17)
    want_q = reference64(q, pos, spec)
    q_out, k_out = posenc.apply_rope(q, k, pos, spec)
    assert np.abs(q_out - want_q).max() <= 8 * 2.0 ** -24 * np.abs(want_q).max()
    q2 = q.copy()
    posenc.apply_rope_(q2, k.copy(), pos.astype(np.int32), spec)
    assert np.array_equal(q2, q_out)


def test_numpy_matches_torch_bits():
    torch = pytest.importorskip("torch")
    spec = posenc.RopeSpec(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((9, 4, 128)).astype(np.float16)
    pos = rng.integers(0, 1 << 17, 9)
    out, _ = posenc.apply_rope(q, None, pos, spec)
    t = torch.from_numpy(q.copy())
    posenc.apply_rope_(t, None, torch.from_numpy(pos), spec)
    assert np.array_equal(t.numpy().view(np.uint16), out.view(np.uint16))


def test_numpy_errors():
    spec = posenc.RopeSpec(head_dim=64)
    q = np.ones((4, 2, 64), dtype=np.float64)
    with pytest.raises(posenc.InvalidArgumentError, match="float64"):
        posenc.apply_rope_(q, None, np.arange(4), spec)
    q = np.ones((4, 2, 64), dtype=np.float32)
    q.flags.writeable = False
    with pytest.raises(posenc.InvalidArgumentError, match="read-only"):
        posenc.apply_rope_(q, None, np.arange(4), spec)
