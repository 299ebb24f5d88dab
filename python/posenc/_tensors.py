"""Turns torch tensors and NumPy arrays into the plain views the extension takes (no copies)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ._errors import InvalidArgumentError

# DType codes of the extension (posenc::DType order) and CacheDType codes.
_F32, _F16, _BF16 = 0, 1, 2
# The extension's activation dtype codes by dtype name (NumPy's names, torch's without "torch.").
_ACT_CODES = {"float32": _F32, "float16": _F16, "bfloat16": _BF16}


def act_code_of_name(name: str) -> Optional[int]:
    """The extension's code of an activation dtype named `name` ("torch." prefix allowed), or None."""
    return _ACT_CODES.get(name.replace("torch.", "", 1))
_CACHE_FP8 = 3
LAYOUTS = {"contiguous": 0, "paged_nhd": 1, "paged_hnd": 2, "mla": 3}


def _dtype_tables():
    import torch
    act = {torch.float32: _F32, torch.float16: _F16, torch.bfloat16: _BF16}
    cache = dict(act)
    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is not None:
        cache[fp8] = _CACHE_FP8
    return act, cache


_tables = None


def _code(t: Any, name: str, cache: bool) -> int:
    global _tables
    if _tables is None:
        _tables = _dtype_tables()
    code = _tables[1 if cache else 0].get(t.dtype)
    if code is None:
        allowed = "float32, float16, bfloat16" + (", float8_e4m3fn" if cache else "")
        raise InvalidArgumentError(f"{name}: dtype {t.dtype} is not supported ({allowed})")
    return code


def act_code(t: Any, name: str) -> int:
    """DType code of an activation tensor (or a cos/sin cache)."""
    return _code(t, name, cache=False)


def cache_code(t: Any, name: str) -> int:
    """CacheDType code of a KV-cache tensor."""
    return _code(t, name, cache=True)


def heads_view(shape: Tuple[int, ...], stride: Tuple[int, ...], head_dim: int, name: str) -> Tuple[int, int, int, int]:
    """(tokens, heads, token_stride, head_stride) of Q/K given as [T, H, D], [T, H*D], [B, S, H, D]
    or [B, S, H*D]; the leading (token) dims must merge into one stride, the head dim contiguous."""
    if len(shape) < 2:
        raise InvalidArgumentError(f"{name}: shape {list(shape)} has fewer than 2 dims (want [tokens, heads, head_dim])")
    if shape[-1] == head_dim and len(shape) >= 3:
        heads, head_stride = shape[-2], stride[-2]
        lead, lead_stride = shape[:-2], stride[:-2]
    else:
        if shape[-1] % head_dim != 0:
            raise InvalidArgumentError(
                f"{name}: last dim {shape[-1]} is neither head_dim {head_dim} nor a multiple of it")
        heads, head_stride = shape[-1] // head_dim, head_dim
        lead, lead_stride = shape[:-1], stride[:-1]
    if head_dim > 1 and stride[-1] != 1:
        raise InvalidArgumentError(f"{name}: the last dim must be contiguous (stride {stride[-1]}, want 1)")
    tokens, token_stride = _merge(lead, lead_stride, name)
    return tokens, heads, token_stride, head_stride


def _merge(shape: Tuple[int, ...], stride: Tuple[int, ...], name: str) -> Tuple[int, int]:
    """One (count, stride) for leading dims that form a single arithmetic progression."""
    if 0 in shape:
        return 0, (stride[-1] if stride else 0)
    count, step = 1, None
    for size, st in zip(reversed(shape), reversed(stride)):
        if size == 1:
            continue
        if step is None:
            count, step = size, st
        elif st == step * count:
            count *= size
        else:
            raise InvalidArgumentError(
                f"{name}: token dims {list(shape)} with strides {list(stride)} do not merge into one token stride")
    if step is None:  # a single token: its stride is never used to step
        step = stride[-1] if stride else 0
    return count, step


def tensor_tuple(t: Any, head_dim: int, name: str):
    tokens, heads, ts, hs = heads_view(tuple(t.shape), tuple(t.stride()), head_dim, name)
    return (t.data_ptr(), act_code(t, name), tokens, heads, head_dim, ts, hs)


def q_out_tuple(q_out: Any, q: Any, head_dim: int, q_tuple, cache: Any, scale: float, device: Any):
    """The extension's q_out tuple (ptr, cache dtype code, token_stride, head_stride, scale): Q's
    shape, in the cache's dtype, on Q's device."""
    if q_out is None:
        return None
    same_device("q_out", q_out, device)
    if tuple(q_out.shape) != tuple(q.shape):
        raise InvalidArgumentError(f"q_out: shape {list(q_out.shape)} differs from q's {list(q.shape)}")
    if q_out.dtype != cache.dtype:
        raise InvalidArgumentError(f"q_out: dtype {q_out.dtype} differs from the cache's {cache.dtype}: "
                                   "Q is quantized as the cache is")
    tokens, heads, ts, hs = heads_view(tuple(q_out.shape), tuple(q_out.stride()), head_dim, "q_out")
    if (tokens, heads) != (q_tuple[2], q_tuple[3]):
        raise InvalidArgumentError(f"q_out: {tokens} tokens x {heads} heads; q has {q_tuple[2]} x {q_tuple[3]}")
    return (q_out.data_ptr(), cache_code(q_out, "q_out"), ts, hs, float(scale))


def head_scales_tuple(k_scales: Any, v_scales: Any, q_scales: Any, kv_heads: int, q_heads: int,
                      q_out: Any, device: Any):
    """The extension's per-head fp8 scales (k ptr, v ptr, q_out ptr; 0 where absent), or None when
    all are absent: contiguous float32 vectors of kv_heads (q_heads) values on the tensors' device.
    Their values are checked by the call (the CPU engine refuses, the GPU engine reports at check)."""
    import torch
    if k_scales is None and v_scales is None and q_scales is None:
        return None
    if q_scales is not None and q_out is None:
        raise InvalidArgumentError("q_head_scales: given without q_out (they scale the quantized Q)")
    ptrs = []
    for name, t, heads in (("k_head_scales", k_scales, kv_heads), ("v_head_scales", v_scales, kv_heads),
                           ("q_head_scales", q_scales, q_heads)):
        if t is None:
            ptrs.append(0)
            continue
        same_device(name, t, device)
        if t.dtype != torch.float32:
            raise InvalidArgumentError(f"{name}: dtype {t.dtype}, want float32")
        if t.dim() != 1 or t.shape[0] != heads:
            raise InvalidArgumentError(f"{name}: shape {list(t.shape)}, want [{heads}] (one scale per head)")
        if heads > 1 and t.stride(0) != 1:
            raise InvalidArgumentError(f"{name}: must be contiguous (stride {t.stride(0)})")
        ptrs.append(t.data_ptr())
    return tuple(ptrs)


def positions_tuple(p: Any, tokens: int, streams: int, name: str = "positions"):
    """(ptr, is_int64, tokens, streams, stream_stride): [T] / [B, S] for one stream, [streams, ...] for several."""
    import torch
    if p.dtype not in (torch.int32, torch.int64):
        raise InvalidArgumentError(f"{name}: dtype {p.dtype} is not supported (int32, int64)")
    if streams == 1:
        if p.numel() != tokens:
            raise InvalidArgumentError(f"{name}: {p.numel()} values for {tokens} tokens")
        count, step = _merge(tuple(p.shape), tuple(p.stride()), name) if p.dim() > 0 else (1, 1)
        if tokens > 1 and step != 1:
            raise InvalidArgumentError(f"{name}: must be contiguous (stride {step})")
        return (p.data_ptr(), p.dtype == torch.int64, tokens, 1, tokens)
    if p.dim() < 2 or p.shape[0] != streams:
        raise InvalidArgumentError(
            f"{name}: shape {list(p.shape)}; this spec takes {streams} position streams: want [{streams}, tokens]")
    count, step = _merge(tuple(p.shape[1:]), tuple(p.stride()[1:]), name)
    if count != tokens or (tokens > 1 and step != 1):
        raise InvalidArgumentError(f"{name}: each stream must hold {tokens} contiguous values (shape {list(p.shape)})")
    return (p.data_ptr(), p.dtype == torch.int64, tokens, streams, p.stride(0))


def cos_sin_tuple(c: Any, name: str = "cos_sin_cache"):
    if c.dim() != 2:
        raise InvalidArgumentError(f"{name}: shape {list(c.shape)}, want [max_position, rot_dim]")
    if c.stride(1) != 1:
        raise InvalidArgumentError(f"{name}: the last dim must be contiguous (stride {c.stride(1)})")
    return (c.data_ptr(), act_code(c, name), c.shape[0], c.shape[1], c.stride(0))


def norm_tuple(spec: Any, q: Any, has_k: bool, q_weight: Any, k_weight: Any, device: Any = None):
    """The extension's QK-norm weights (q pointer, k pointer or 0), or None for a spec without QK norm.

    Each weight (torch tensor on `device`, or a NumPy array when device is None) is a dense 1-D
    vector of the norm's width (head_dim; rotary_dim with qk_norm_rotary_only) in q's dtype, e.g.
    the attention module's q_norm.weight / k_norm.weight; k's only when the call has K."""
    kind = spec.qk_norm
    given = [(name, w) for name, w in (("q_norm_weight", q_weight), ("k_norm_weight", k_weight)) if w is not None]
    if kind == "none":
        if given:
            raise InvalidArgumentError(f"{given[0][0]} is given but the spec has no QK norm (qk_norm 'none')")
        return None
    width = spec.rotary if spec.qk_norm_rotary_only else spec.head_dim
    what = "rotary_dim, qk_norm_rotary_only" if spec.qk_norm_rotary_only else "head_dim"
    if q_weight is None:
        raise InvalidArgumentError(
            f"q_norm_weight is missing: the spec's QK norm ({kind}) needs a weight of {width} elements "
            "(the attention module's q_norm.weight)")
    if has_k and k_weight is None:
        raise InvalidArgumentError(
            f"k_norm_weight is missing: the spec's QK norm ({kind}) needs a weight of {width} elements for k "
            "(the attention module's k_norm.weight)")
    if not has_k and k_weight is not None:
        raise InvalidArgumentError("k_norm_weight is given but the call has no k")
    pointers = []
    for name, w in given:
        if device is not None:
            same_device(name, w, device)
        if w.dtype != q.dtype:
            raise InvalidArgumentError(f"{name}: dtype {w.dtype}, want q's dtype {q.dtype} (cast it with .to())")
        if tuple(w.shape) != (width,):
            raise InvalidArgumentError(f"{name}: shape {list(w.shape)}, want [{width}] ({what})")
        if device is not None:
            if width > 1 and w.stride(0) != 1:
                raise InvalidArgumentError(f"{name}: must be contiguous (stride {w.stride(0)})")
            pointers.append(w.data_ptr())
        else:
            if width > 1 and w.strides[0] != w.itemsize:
                raise InvalidArgumentError(f"{name}: must be contiguous (stride {w.strides[0]} bytes)")
            pointers.append(w.ctypes.data)
    return (pointers[0], pointers[1] if len(pointers) > 1 else 0)


def same_device(name: str, t: Any, device: Any) -> None:
    if t.device != device:
        raise InvalidArgumentError(f"{name} is on {t.device}, the other tensors on {device}")


def stream_of(device: Any) -> int:
    """The current torch stream of a CUDA device as an integer handle (0 = legacy default)."""
    import torch
    return torch.cuda.current_stream(device).cuda_stream


def engine_for(spec: Any, device: Any):
    return spec.engine(device.type, device.index if device.index is not None else 0)


def kv_cache_tuple(k_cache: Any, v_cache: Any, layout: str, kv_heads: int, head_dim: int,
                   k_scale: float, v_scale: float, latent_dim: int = 0):
    """The extension's cache tuple. layout "mla": k_cache is the one [blocks, page, latent_dim + head_dim]
    (or [blocks, page, 1, latent_dim + head_dim], FlashMLA's) tensor and v_cache is None."""
    code = LAYOUTS.get(layout)
    if code is None:
        raise InvalidArgumentError(f"layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    if layout == "mla":
        if v_cache is not None:
            raise InvalidArgumentError("v_cache must be None for layout 'mla': k_cache holds [c_kv | k_pe] per slot")
        s = tuple(k_cache.shape)
        if k_cache.dim() not in (3, 4) or (k_cache.dim() == 4 and s[2] != 1):
            raise InvalidArgumentError(
                f"k_cache: shape {list(s)}, want [blocks, page, latent + rope] or [blocks, page, 1, latent + rope]")
        if not k_cache.is_contiguous():
            raise InvalidArgumentError(f"k_cache: must be contiguous (strides {list(k_cache.stride())})")
        if s[-1] != latent_dim + head_dim:
            raise InvalidArgumentError(
                f"k_cache: rows of {s[-1]} elements; c_kv ({latent_dim}) + k_pe ({head_dim}) need {latent_dim + head_dim}")
        return (k_cache.data_ptr(), 0, cache_code(k_cache, "k_cache"), code, kv_heads, head_dim, s[0], s[1],
                float(k_scale), float(v_scale), latent_dim)
    if v_cache is None:
        raise InvalidArgumentError(f"v_cache is None; layout '{layout}' needs a V cache")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4:
            raise InvalidArgumentError(f"{name}: shape {list(c.shape)} is not 4-D")
        if not c.is_contiguous():
            raise InvalidArgumentError(f"{name}: must be contiguous (strides {list(c.stride())})")
    if tuple(k_cache.shape) != tuple(v_cache.shape) or k_cache.dtype != v_cache.dtype:
        raise InvalidArgumentError(
            f"k_cache {list(k_cache.shape)} {k_cache.dtype} and v_cache {list(v_cache.shape)} {v_cache.dtype} differ")
    s = k_cache.shape
    if layout == "paged_hnd":
        blocks, heads, block_len, dim = s
    else:
        blocks, block_len, heads, dim = s
    if heads != kv_heads or dim != head_dim:
        raise InvalidArgumentError(
            f"k_cache: shape {list(s)} ({layout}) holds {heads} heads of {dim}; K has {kv_heads} heads of {head_dim}")
    return (k_cache.data_ptr(), v_cache.data_ptr(), cache_code(k_cache, "k_cache"), code, kv_heads, head_dim,
            blocks, block_len, float(k_scale), float(v_scale), 0)


# ---- NumPy ------------------------------------------------------------------------------------------

def np_act_code(a: Any, name: str) -> int:
    kind = a.dtype.name
    code = act_code_of_name(kind)
    if code is None:
        raise InvalidArgumentError(f"{name}: dtype {kind} is not supported (float32, float16, ml_dtypes.bfloat16)")
    return code


def np_tensor_tuple(a: Any, head_dim: int, name: str, written: bool = True):
    if written and not a.flags.writeable:
        raise InvalidArgumentError(f"{name}: the array is read-only")
    shape = a.shape
    stride = tuple(s // a.itemsize for s in a.strides)
    if any(s * a.itemsize != b for s, b in zip(stride, a.strides)):
        raise InvalidArgumentError(f"{name}: strides {a.strides} are not whole elements")
    tokens, heads, ts, hs = heads_view(tuple(shape), stride, head_dim, name)
    return (a.ctypes.data, np_act_code(a, name), tokens, heads, head_dim, ts, hs)


def np_positions_tuple(p: Any, tokens: int, streams: int):
    import numpy as np
    if p.dtype not in (np.int32, np.int64):
        raise InvalidArgumentError(f"positions: dtype {p.dtype} is not supported (int32, int64)")
    p = np.ascontiguousarray(p)
    if p.size != tokens * streams:
        raise InvalidArgumentError(f"positions: {p.size} values for {tokens} tokens x {streams} streams")
    return p, (p.ctypes.data, p.dtype == np.int64, tokens, streams, tokens)
