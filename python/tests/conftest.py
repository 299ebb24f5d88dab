"""Shared fixtures of the Python suite: devices (CUDA tests skip with the reason), references, RNG."""

from __future__ import annotations

import os

import numpy as np
import pytest

import posenc

try:
    import torch
except ImportError:  # the NumPy tests still run
    torch = None

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def cuda_skip_reason():
    if torch is None:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    if not posenc.gpu_available():
        return "posenc has no GPU backend here: " + posenc.gpu_unavailable_reason()
    return None


needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))


def device_params():
    reason = cuda_skip_reason()
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(reason is not None, reason=str(reason)))]


@pytest.fixture(params=device_params())
def device(request):
    return request.param


def hf_reference(x, positions, spec, pairing=None, device="cpu"):
    """transformers' eager arithmetic (hf_compatible) as torch computes it on `device`, for the spec's
    hf_arithmetic: with "engine" (the default) torch's own float32 cos/sin on that device (what
    posenc's engine of that device reproduces), with "exact" cos/sin correctly rounded from float64:
        angle = fl32(inv_freq * fl32(p)); c = cos(angle) * fl32(af) -> dtype; out = x*c + rot(x)*s.
    The table is the spec's (torch's CPU table: transformers builds it on the CPU, also for a model
    on the GPU); call-time tables computed on the GPU (dynamic NTK, LongRoPE's long table) are not
    modelled here. x: [T, H, D] torch tensor (CPU); positions: [T] int64 (one stream)."""
    inv_freq, af = spec.frequencies(int(positions.max()) + 1)
    inv = torch.tensor(inv_freq, dtype=torch.float32)
    angle = positions.to(torch.float32)[:, None] * inv[None, :]
    factor = torch.tensor(af, dtype=torch.float32)
    if spec.hf_arithmetic == "exact":
        c, s = torch.cos(angle.double()).float(), torch.sin(angle.double()).float()
    else:
        on = angle.to(device)
        c, s = torch.cos(on).cpu(), torch.sin(on).cpu()
    cos = (c * factor).to(x.dtype)[:, None, :]
    sin = (s * factor).to(x.dtype)[:, None, :]
    return rotate_with(x, cos, sin, spec, pairing)


def rotate_with(x, cos, sin, spec, pairing=None):
    """The HF rotation (three roundings in x's dtype) of the spec's window, given per-pair cos/sin
    [T, 1, R/2] already in x's dtype."""
    pairing = pairing or spec.pairing
    r, off = spec.rotary, spec.rotary_offset
    h = r // 2
    out = x.clone()
    win = x[..., off:off + r]
    if pairing == "half_split":
        a, b = win[..., :h], win[..., h:]
        out[..., off:off + h] = a * cos - b * sin
        out[..., off + h:off + r] = b * cos + a * sin
    elif pairing in ("interleaved", "interleaved_to_half"):
        a, b = win[..., 0::2], win[..., 1::2]
        ra, rb = a * cos - b * sin, b * cos + a * sin
        if pairing == "interleaved":
            out[..., off:off + r:2] = ra
            out[..., off + 1:off + r:2] = rb
        else:
            out[..., off:off + h] = ra
            out[..., off + h:off + r] = rb
    else:
        raise ValueError(pairing)
    return out


def reference64(x, positions, spec):
    """Float64 rotation (NumPy) of [T, H, D] by the spec's own table: the exact math, for tolerances."""
    inv_freq, af = spec.frequencies(int(np.max(positions)) + 1)
    x = np.asarray(x, dtype=np.float64)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    c = (np.cos(angle) * af)[:, None, :]
    s = (np.sin(angle) * af)[:, None, :]
    r, off, h = spec.rotary, spec.rotary_offset, spec.rotary // 2
    out = x.copy()
    win = x[..., off:off + r]
    if spec.pairing == "half_split":
        a, b = win[..., :h], win[..., h:]
        out[..., off:off + h] = a * c - b * s
        out[..., off + h:off + r] = b * c + a * s
    else:
        a, b = win[..., 0::2], win[..., 1::2]
        out[..., off:off + r:2] = a * c - b * s
        out[..., off + 1:off + r:2] = b * c + a * s
    return out
