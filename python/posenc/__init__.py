"""posenc: exact rotary position embeddings (RoPE) for LLM queries and keys, on CPU and CUDA.

    import posenc, torch
    spec = posenc.RopeSpec.from_config("config.json")          # or RopeSpec(head_dim=128, theta=1e6)
    posenc.apply_rope_(q, k, positions, spec)                  # q [T, Hq, D], k [T, Hk, D], in place

torch tensors go through the torch ops torch.ops.posenc.* (torch.compile- and CUDA-graph-safe);
NumPy arrays run on the CPU engine directly. docs/PYTHON.md documents every function.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

try:  # torch is optional: without it posenc works on NumPy arrays. Imported before the extension
    # so that a CUDA build binds to the CUDA runtime torch already loaded (one runtime per process).
    import torch as _torch
except ImportError:  # pragma: no cover - exercised where torch is absent
    _torch = None

from . import _core
from ._errors import (ConfigError, Error, FileError, InvalidArgumentError, OutOfMemoryError, OutOfRangeError,
                      SizeOverflowError, UnsupportedError, VendorError, from_kind)
from ._spec import RopeSpec, all_specs, load_config

_core._set_error_factory(from_kind)

__version__ = _core.version()
__all__ = [
    "RopeSpec", "apply_rope_", "apply_rope", "append_kv_", "rotary_embedding", "check", "gpu_available",
    "gpu_unavailable_reason", "backend", "load_config", "Error", "InvalidArgumentError", "OutOfRangeError",
    "SizeOverflowError", "ConfigError", "UnsupportedError", "VendorError", "FileError", "OutOfMemoryError",
]

if _torch is not None:
    from . import _torch_ops


def gpu_available() -> bool:
    """True when this build has a GPU backend and a device is visible."""
    return _core.gpu_available()


def gpu_unavailable_reason() -> str:
    """Why no GPU can be used, or "" when one can."""
    return _core.gpu_unavailable_reason()


def backend() -> str:
    """"cuda", "hip" or "none": the GPU backend this build was compiled for."""
    return _core.backend()


def _is_torch(x: Any) -> bool:
    return _torch is not None and isinstance(x, _torch.Tensor)


def apply_rope_(q: Any, k: Optional[Any], positions: Any, spec: RopeSpec, q_norm_weight: Optional[Any] = None,
                k_norm_weight: Optional[Any] = None) -> None:
    """Rotates q ([T, Hq, D], [T, Hq*D] or [B, S, Hq, D]) and k in place by `spec`.

    positions: int32/int64, one per token ([T] or [B, S]); [streams, T] for specs with several
    position streams (M-RoPE, ChatGLM 2-D). torch tensors (CPU or CUDA) or NumPy arrays.
    A spec with QK norm (spec.qk_norm "rms" / "rms_one_plus": Qwen3, Gemma 3, GLM-4.5) first
    normalises every head of q and k; it then needs q_norm_weight and (with k) k_norm_weight: the
    attention module's q_norm.weight / k_norm.weight, [head_dim] in q's dtype on q's device."""
    if _is_torch(q):
        _torch.ops.posenc.apply_rope_(q, k, positions, spec.id, q_norm_weight, k_norm_weight)
    else:
        _numpy_apply(q, k, positions, spec, out=False, q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight)


def apply_rope(q: Any, k: Optional[Any], positions: Any, spec: RopeSpec, q_norm_weight: Optional[Any] = None,
               k_norm_weight: Optional[Any] = None) -> Tuple[Any, Optional[Any]]:
    """Like apply_rope_, but returns new (q, k) (k None when absent); the inputs are not written."""
    if _is_torch(q):
        out = _torch.ops.posenc.apply_rope(q, k, positions, spec.id, q_norm_weight, k_norm_weight)
        return out[0], (out[1] if len(out) > 1 else None)
    return _numpy_apply(q, k, positions, spec, out=True, q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight)


def append_kv_(q: Any, k: Any, v: Any, positions: Any, slots: Any, k_cache: Any, v_cache: Optional[Any],
               spec: RopeSpec, layout: str = "paged_nhd", k_scale: float = 1.0, v_scale: float = 1.0,
               q_norm_weight: Optional[Any] = None, k_norm_weight: Optional[Any] = None,
               q_out: Optional[Any] = None, q_scale: float = 1.0, k_head_scales: Optional[Any] = None,
               v_head_scales: Optional[Any] = None, q_head_scales: Optional[Any] = None) -> None:
    """Fused RoPE + KV-cache append (torch tensors): q rotated in place; k rotated and v copied into
    k_cache/v_cache at each token's slot (int64, -1 skips the token), cast to the cache dtype.

    Cache shapes: contiguous [B, L, Hk, D]; paged_nhd [blocks, page, Hk, D]; paged_hnd [blocks, Hk, page, D].
    float8_e4m3fn caches store fp8(x / scale).

    layout "mla" (DeepSeek-V3 / Kimi K2 multi-head latent attention): q is the rope slice of the
    query, e.g. q_full[..., qk_nope_head_dim:] (a view: rotated in place, the nope part untouched);
    k is k_pe [T, 1, rope] (or [T, rope]); v is the latent c_kv [T, 1, latent] (or [T, latent]), e.g.
    both slices of kv_a_proj_with_mqa's output; k_cache is the one cache [blocks, page, latent + rope]
    (or FlashMLA's [blocks, page, 1, latent + rope]) receiving [c_kv | rotated k_pe] per slot, and
    v_cache is None. fp8: c_kv is divided by v_scale, k_pe by k_scale (vLLM uses one scale: pass it twice).

    A spec with QK norm normalises q and k before the rotation (the cache receives the normalised,
    rotated k) and needs q_norm_weight and k_norm_weight, as apply_rope_.

    q_out (fp8 serving): a tensor of q's shape in the cache's dtype; the rotated q is written there,
    cast as k is (float8_e4m3fn: fp8(x / q_scale), saturating), instead of into q, which is then
    only read. An fp8 attention kernel reads q_out with q_scale as its descale.

    Per-head fp8 scales: k_head_scales and v_head_scales (float32 [kv_heads], on the tensors'
    device) store head h as fp8(x / scale[h]) instead of one k_scale / v_scale (which must then be
    1); q_head_scales (float32 [q heads], with q_out) does the same for q_out instead of q_scale.
    Each must be finite and > 0: on the CPU the call raises naming the head; on CUDA the head's rows
    are left unwritten and the next posenc.check(device) raises."""
    _torch.ops.posenc.append_kv_(q, k, v, positions, slots, k_cache, v_cache, spec.id, layout, float(k_scale),
                                 float(v_scale), q_out, float(q_scale), q_norm_weight, k_norm_weight,
                                 k_head_scales, v_head_scales, q_head_scales)


def rotary_embedding(positions: Any, query: Any, key: Optional[Any], head_size: int, cos_sin_cache: Any,
                     is_neox: bool = True) -> None:
    """vLLM's / sgl-kernel's rotary_embedding: rotates query and key in place by the rows of the
    caller's cos_sin_cache [max_position, rot_dim] (cos of the rot_dim/2 pairs, then sin).
    A position outside [0, max_position) raises (CPU) or is recorded and raised by check() (GPU);
    it never reads outside the cache."""
    _torch.ops.posenc.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)


def check(device: Any = None) -> None:
    """Synchronizes `device` (default: the current CUDA device) and raises the first fault that a
    GPU op recorded since the last check (an out-of-range position or slot), naming token, value
    and limit. Call it once per step, not per layer."""
    if _torch is None or not _torch.cuda.is_available():
        return
    dev = _torch.device(device) if device is not None else _torch.device("cuda", _torch.cuda.current_device())
    index = dev.index if dev.index is not None else _torch.cuda.current_device()
    stream = _torch.cuda.current_stream(index).cuda_stream
    for spec in all_specs():
        engine = spec._engines.get(("cuda", index))
        if engine is not None:
            engine.check(stream)


def _numpy_apply(q, k, positions, spec: RopeSpec, out: bool, q_norm_weight=None, k_norm_weight=None):
    import numpy as np
    from . import _tensors as tv
    q_t = tv.np_tensor_tuple(q, spec.head_dim, "q", written=not out)
    k_t = tv.np_tensor_tuple(k, spec.head_dim, "k", written=not out) if k is not None else None
    pos_array, pos = tv.np_positions_tuple(np.asarray(positions), q_t[2], spec.position_streams)  # kept alive
    weights = [None if w is None else np.asarray(w) for w in (q_norm_weight, k_norm_weight)]  # kept alive
    norm = tv.norm_tuple(spec, q, k is not None, weights[0], weights[1])
    engine = spec.engine("cpu")
    if not out:
        engine.apply(q_t, k_t, None, None, pos, None, norm)
        return None
    q_out = np.empty_like(q, order="C")
    k_out = np.empty_like(k, order="C") if k is not None else None
    engine.apply(tv.np_tensor_tuple(q_out, spec.head_dim, "q_out"),
                 tv.np_tensor_tuple(k_out, spec.head_dim, "k_out") if k is not None else None, q_t, k_t, pos, None,
                 norm)
    return q_out, k_out
