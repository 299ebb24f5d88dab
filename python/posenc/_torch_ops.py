"""The torch ops torch.ops.posenc.*: registered with torch.library, with fake implementations.

Each op takes a RopeSpec by its integer id (RopeSpec.id). On CUDA tensors an op only launches on
the current stream (no allocation, no synchronization, no host read of device data), so it can be
captured in a CUDA graph once the spec's engine for that device exists (the first call builds it);
out-of-range positions and bad slots on the GPU are recorded on the device and raised by
posenc.check(). Under torch.compile the ops are opaque calls: the fake implementations give
the shapes, so fullgraph=True traces through them.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from . import _tensors as tv
from ._errors import InvalidArgumentError
from ._spec import RopeSpec, spec_by_id

Tensor = torch.Tensor


def _run_apply(q: Tensor, k: Optional[Tensor], positions: Tensor, spec: RopeSpec, q_out: Optional[Tensor],
               k_out: Optional[Tensor], cos_sin: Optional[Tensor] = None, q_norm_weight: Optional[Tensor] = None,
               k_norm_weight: Optional[Tensor] = None) -> None:
    """Rotates q (and k) into q_out/k_out, or in place when those are None; a spec with QK norm
    normalises them first with the weights."""
    device = q.device
    head_dim = spec.head_dim
    for name, t in (("k", k), ("positions", positions), ("q_out", q_out), ("k_out", k_out),
                    ("cos_sin_cache", cos_sin)):
        if t is not None:
            tv.same_device(name, t, device)
    q_t = tv.tensor_tuple(q, head_dim, "q")
    k_t = tv.tensor_tuple(k, head_dim, "k") if k is not None else None
    if q_out is not None:
        dst_q, src_q = tv.tensor_tuple(q_out, head_dim, "q_out"), q_t
        dst_k = tv.tensor_tuple(k_out, head_dim, "k_out") if k_out is not None else None
        src_k = k_t
    else:
        dst_q, src_q, dst_k, src_k = q_t, None, k_t, None
    pos = tv.positions_tuple(positions, q_t[2], spec.position_streams)
    cache = tv.cos_sin_tuple(cos_sin) if cos_sin is not None else None
    norm = tv.norm_tuple(spec, q, k is not None, q_norm_weight, k_norm_weight, device)
    engine = tv.engine_for(spec, device)
    if device.type == "cuda":
        engine.apply(dst_q, dst_k, src_q, src_k, pos, cache, tv.stream_of(device), norm)
    else:
        engine.apply(dst_q, dst_k, src_q, src_k, pos, cache, norm)


@torch.library.custom_op("posenc::apply_rope_", mutates_args=("q", "k"))
def apply_rope_(q: Tensor, k: Optional[Tensor], positions: Tensor, spec_id: int,
                q_norm_weight: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None) -> None:
    """Rotates q and k in place by spec `spec_id` (normalised first when the spec has QK norm)."""
    _run_apply(q, k, positions, spec_by_id(spec_id), None, None, None, q_norm_weight, k_norm_weight)


@apply_rope_.register_fake
def _(q, k, positions, spec_id, q_norm_weight=None, k_norm_weight=None):
    return None


@torch.library.custom_op("posenc::apply_rope", mutates_args=())
def apply_rope(q: Tensor, k: Optional[Tensor], positions: Tensor, spec_id: int,
               q_norm_weight: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None) -> List[Tensor]:
    """Returns [rotated q] or [rotated q, rotated k] as new tensors (dense, the inputs' shapes)."""
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k is not None else None
    _run_apply(q, k, positions, spec_by_id(spec_id), q_out, k_out, None, q_norm_weight, k_norm_weight)
    return [q_out] if k_out is None else [q_out, k_out]


@apply_rope.register_fake
def _(q, k, positions, spec_id, q_norm_weight=None, k_norm_weight=None):
    out = [q.new_empty(q.shape)]
    if k is not None:
        out.append(k.new_empty(k.shape))
    return out


@torch.library.custom_op("posenc::append_kv_", mutates_args=("q", "k_cache", "v_cache", "q_out"))
def append_kv_(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, slots: Tensor, k_cache: Tensor,
               v_cache: Optional[Tensor], spec_id: int, layout: str, k_scale: float, v_scale: float,
               q_out: Optional[Tensor], q_scale: float,
               q_norm_weight: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None,
               k_head_scales: Optional[Tensor] = None, v_head_scales: Optional[Tensor] = None,
               q_head_scales: Optional[Tensor] = None) -> None:
    """Fused RoPE + KV-cache append: q rotated in place; k rotated and v copied into the caches at
    each token's slot (-1: skipped), cast to the cache dtype (float8_e4m3fn: divided by the scale).
    A spec with QK norm normalises q and k first (k's normalised, rotated rows go to the cache).
    layout "mla": k is k_pe, v the latent c_kv, k_cache the one [c_kv | k_pe] cache, v_cache None.
    q_out (q's shape, the cache's dtype; None: q is written in place): the rotated q goes there, cast
    as the cache casts k with q_scale, and q itself is not written (fp8 serving: an fp8 attention
    kernel reads q_out). q_out and q_scale have no defaults: torch drops a mutated optional argument
    left at its default from the arguments its in-place bookkeeping indexes. k_head_scales,
    v_head_scales ([kv_heads] float32) and q_head_scales ([q heads], with q_out): per-head fp8
    scales replacing k_scale, v_scale and q_scale, which must then be 1."""
    spec = spec_by_id(spec_id)
    device = q.device
    for name, t in (("k", k), ("v", v), ("positions", positions), ("slots", slots), ("k_cache", k_cache),
                    ("v_cache", v_cache)):
        if t is not None:
            tv.same_device(name, t, device)
    if slots.dtype != torch.int64:
        raise InvalidArgumentError(f"slots: dtype {slots.dtype}, want int64")
    head_dim = spec.head_dim
    q_t = tv.tensor_tuple(q, head_dim, "q")
    k_t = tv.tensor_tuple(k, head_dim, "k")
    # mla: V is the latent c_kv, as wide as the cache row minus k_pe.
    latent_dim = k_cache.shape[-1] - head_dim if layout == "mla" else 0
    v_t = tv.tensor_tuple(v, latent_dim if layout == "mla" else head_dim, "v")
    if slots.numel() != q_t[2] or (slots.numel() > 1 and not slots.is_contiguous()):
        raise InvalidArgumentError(f"slots: {slots.numel()} values (contiguous) wanted for {q_t[2]} tokens")
    pos = tv.positions_tuple(positions, q_t[2], spec.position_streams)
    cache = tv.kv_cache_tuple(k_cache, v_cache, layout, k_t[3], head_dim, k_scale, v_scale, latent_dim)
    norm = tv.norm_tuple(spec, q, True, q_norm_weight, k_norm_weight, device)
    out = tv.q_out_tuple(q_out, q, head_dim, q_t, k_cache, q_scale, device)
    heads = tv.head_scales_tuple(k_head_scales, v_head_scales, q_head_scales, k_t[3], q_t[3], q_out, device)
    engine = tv.engine_for(spec, device)
    if device.type == "cuda":
        engine.append(q_t, None, k_t, v_t, pos, slots.data_ptr(), cache, None, tv.stream_of(device), norm, out, heads)
    else:
        engine.append(q_t, None, k_t, v_t, pos, slots.data_ptr(), cache, None, norm, out, heads)


@append_kv_.register_fake
def _(q, k, v, positions, slots, k_cache, v_cache, spec_id, layout, k_scale, v_scale, q_out, q_scale,
      q_norm_weight=None, k_norm_weight=None, k_head_scales=None, v_head_scales=None, q_head_scales=None):
    return None


# One spec per (head_size, rot_dim, is_neox): the cos/sin-cache path reads only these of a spec.
_contract_specs = {}


def contract_spec(head_size: int, rot_dim: int, is_neox: bool) -> RopeSpec:
    key = (head_size, rot_dim, is_neox)
    spec = _contract_specs.get(key)
    if spec is None:
        spec = RopeSpec(head_dim=head_size, rotary_dim=rot_dim,
                        pairing="half_split" if is_neox else "interleaved")
        spec = _contract_specs.setdefault(key, spec)
    return spec


@torch.library.custom_op("posenc::rotary_embedding", mutates_args=("query", "key"))
def rotary_embedding(positions: Tensor, query: Tensor, key: Optional[Tensor], head_size: int,
                     cos_sin_cache: Tensor, is_neox: bool) -> None:
    """vLLM's / sgl-kernel's contract: query/key [tokens, heads * head_size] (or [..., heads, head_size]),
    rotated in place by rows of cos_sin_cache [max_position, rot_dim] (cos then sin)."""
    if cos_sin_cache.dim() != 2:
        raise InvalidArgumentError(f"cos_sin_cache: shape {list(cos_sin_cache.shape)}, want [max_position, rot_dim]")
    spec = contract_spec(head_size, cos_sin_cache.shape[1], is_neox)
    _run_apply(query, key, positions, spec, None, None, cos_sin_cache)


@rotary_embedding.register_fake
def _(positions, query, key, head_size, cos_sin_cache, is_neox):
    return None
