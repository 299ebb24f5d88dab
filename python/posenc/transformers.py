"""posenc.transformers: swaps a loaded Hugging Face transformers model's RoPE for posenc's torch ops.

    import posenc.transformers
    model = posenc.transformers.patch(model)      # same logits (hf_compatible), no cos/sin tensors built
    posenc.transformers.unpatch(model)            # transformers' own code again

How (transformers 5.x model files):
- The model's rotary module (e.g. LlamaRotaryEmbedding) keeps its ``dynamic_rope_update`` decorator,
  so dynamic NTK and LongRoPE still swap its ``inv_freq`` buffer at call time, but instead of
  (cos, sin) it returns a light marker (RotaryPositions) holding the position ids, the module's
  current ``inv_freq`` buffer and ``attention_scaling``. The decoder passes it to every layer as
  ``position_embeddings``.
- The model file's apply function (``apply_rotary_pos_emb`` and friends, looked up by the attention
  code as a module global at call time) is replaced by one that rotates Q and K with posenc when it
  receives a marker and calls transformers' original otherwise, so unpatched models of the same
  family in the same process are unaffected.
- The posenc spec is ``scaling="table"`` over the buffer's values: transformers' inv_freq by
  construction. Specs are cached per buffer (object and version), so a step reads the buffer on the
  host only when the rotary module replaced or changed it.

Families are listed in FAMILIES; any other model is refused with posenc.UnsupportedError.
docs/PYTHON.md ("transformers drop-in") documents the exactness measured for each family.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import threading
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import apply_rope, apply_rope_
from ._errors import InvalidArgumentError, UnsupportedError
from ._spec import RopeSpec

__all__ = ["patch", "unpatch", "is_patched", "supported_model_types", "RotaryPositions", "FAMILIES"]

_NUMERICS = ("hf_compatible", "hf_fp32_apply", "accurate")
_HF_ARITHMETICS = ("engine", "torch_cpu", "torch_cuda", "exact")
_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """How one of a model file's apply functions rotates: posenc pairing, and the numerics that
    reproduce that function's arithmetic (Cohere rotates in float32 and rounds once)."""

    pairing: str
    numerics: str = "hf_compatible"


@dataclasses.dataclass(frozen=True)
class Family:
    """One transformers model file: where its rotary module and apply functions live.

    partial: the apply function rotates the first 2*len(inv_freq) dims of a head and passes the
    rest through (Phi-3, GLM, Glm4Moe); otherwise the window must be the whole head (as
    transformers' function assumes)."""

    module: str
    rotary_class: str
    applies: Tuple[Tuple[str, Rotation], ...]
    partial: bool = False
    mrope: bool = False


_HALF = Rotation("half_split")
_STANDARD = (("apply_rotary_pos_emb", _HALF),)

# config.model_type -> the family's model file. Every entry is checked against transformers'
# source (see docs/PYTHON.md) and covered by python/tests/test_transformers.py.
FAMILIES: Dict[str, Family] = {
    "llama": Family("transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding", _STANDARD),
    "mistral": Family("transformers.models.mistral.modeling_mistral", "MistralRotaryEmbedding", _STANDARD),
    "qwen2": Family("transformers.models.qwen2.modeling_qwen2", "Qwen2RotaryEmbedding", _STANDARD),
    "qwen3": Family("transformers.models.qwen3.modeling_qwen3", "Qwen3RotaryEmbedding", _STANDARD),
    "mixtral": Family("transformers.models.mixtral.modeling_mixtral", "MixtralRotaryEmbedding", _STANDARD),
    "qwen2_moe": Family("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeRotaryEmbedding", _STANDARD),
    "qwen3_moe": Family("transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeRotaryEmbedding", _STANDARD),
    # Phi-3 / Phi-3.5 / Phi-4-mini: half-split over the first R dims (partial_rotary_factor), LongRoPE.
    "phi3": Family("transformers.models.phi3.modeling_phi3", "Phi3RotaryEmbedding", _STANDARD, partial=True),
    # GLM-4 (glm, glm4): adjacent pairs over the first R dims.
    "glm": Family("transformers.models.glm.modeling_glm", "GlmRotaryEmbedding",
                  (("apply_rotary_pos_emb", Rotation("interleaved")),), partial=True),
    "glm4": Family("transformers.models.glm4.modeling_glm4", "Glm4RotaryEmbedding",
                   (("apply_rotary_pos_emb", Rotation("interleaved")),), partial=True),
    # GLM-4.5 (Glm4Moe): half-split over the first R dims.
    "glm4_moe": Family("transformers.models.glm4_moe.modeling_glm4_moe", "Glm4MoeRotaryEmbedding", _STANDARD,
                       partial=True),
    # gpt-oss: its own chunk-based rotation, the same arithmetic as half-split.
    "gpt_oss": Family("transformers.models.gpt_oss.modeling_gpt_oss", "GptOssRotaryEmbedding", _STANDARD),
    # DeepSeek-V3: MLA rotates only q_rot / k_rot (qk_rope_head_dim); rope_interleave picks the
    # second function (pairs read adjacent, written de-interleaved).
    "deepseek_v3": Family("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3RotaryEmbedding",
                          (("apply_rotary_pos_emb", _HALF),
                           ("apply_rotary_pos_emb_interleave", Rotation("interleaved_to_half")))),
    # Cohere (Command-R): adjacent pairs, rotation in float32 rounded once.
    "cohere": Family("transformers.models.cohere.modeling_cohere", "CohereRotaryEmbedding",
                     (("apply_rotary_pos_emb", Rotation("interleaved", "hf_fp32_apply")),)),
    # Qwen2-VL: M-RoPE, (t, h, w) position streams by the module's mrope_section; the vision
    # tower's own rotary embedding is not touched.
    "qwen2_vl": Family("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLRotaryEmbedding", _STANDARD,
                       mrope=True),
}
FAMILIES["qwen2_vl_text"] = FAMILIES["qwen2_vl"]


def supported_model_types() -> List[str]:
    return sorted(FAMILIES)


# ---- the marker --------------------------------------------------------------------------------

class RotaryPositions:
    """What a patched rotary module returns for both cos and sin: the call's position ids and the
    module's frequency table, from which the patched apply function rotates Q and K with posenc.

    Code that would use it as a tensor gets a posenc.UnsupportedError saying so."""

    __slots__ = ("position_ids", "inv_freq", "attention_scaling", "mrope_section", "dtype", "_state", "_x",
                 "_positions", "_materialized")

    def __init__(self, state: "_RotaryState", module: Any, x: torch.Tensor, position_ids: torch.Tensor) -> None:
        self.position_ids = position_ids
        self.inv_freq = module.inv_freq
        self.attention_scaling = module.attention_scaling
        self.mrope_section = tuple(module.mrope_section) if state.family.mrope else ()
        self.dtype = x.dtype
        self._state = state
        self._x = x
        self._positions: Dict[Tuple[int, int], torch.Tensor] = {}
        self._materialized: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def positions(self, batch: int, seq: int) -> torch.Tensor:
        """Contiguous positions for a [batch, seq] call: [batch, seq], or [streams, batch, seq] for M-RoPE
        (transformers broadcasts a batch of 1 over the batch; so does this)."""
        key = (batch, seq)
        pos = self._positions.get(key)
        if pos is None:
            p = self.position_ids
            lead = p.shape[:-2] if self.mrope_section else ()
            if p.dim() != 2 + len(lead) or p.shape[-1] != seq or p.shape[-2] not in (1, batch):
                raise InvalidArgumentError(
                    f"posenc.transformers: position_ids of shape {list(p.shape)} do not fit Q/K of batch {batch}, "
                    f"{seq} tokens")
            pos = p.expand(*lead, batch, seq).contiguous()
            self._positions[key] = pos
        return pos

    def materialize(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """transformers' own (cos, sin) for this call (the original forward of the rotary module)."""
        if self._materialized is None:
            self._materialized = self._state.original_forward(self._x, self.position_ids)
        return self._materialized

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocol probes (copy, pickle, torch.compile) get the usual answer
            raise AttributeError(name)
        raise UnsupportedError(
            f"posenc.transformers: code outside the model file's apply function used the patched rotary "
            f"embedding's output as a tensor (attribute '{name}'); this code path is not covered by the patch: "
            f"call posenc.transformers.unpatch(model)")

    @classmethod
    def __torch_function__(cls, func, types_, args=(), kwargs=None):
        raise UnsupportedError(
            f"posenc.transformers: {getattr(func, '__name__', func)} received the patched rotary embedding's "
            f"output instead of a tensor; this code path is not covered by the patch: call "
            f"posenc.transformers.unpatch(model)")

    def __repr__(self) -> str:
        return (f"RotaryPositions(position_ids={list(self.position_ids.shape)}, "
                f"rotary_dim={2 * self.inv_freq.numel()}, "
                f"attention_scaling={self.attention_scaling}, mrope_section={list(self.mrope_section)})")


# ---- per rotary module: the original forward and the spec cache --------------------------------

class _RotaryState:
    def __init__(self, family: Family, module: Any, numerics: str, hf_arithmetic: str) -> None:
        self.family = family
        self.numerics = numerics
        self.hf_arithmetic = hf_arithmetic
        self.rope_type = str(getattr(module, "rope_type", "default"))
        self.updates_at_call_time = "dynamic" in self.rope_type or "longrope" in self.rope_type
        self.original_forward = module.forward  # the class's bound forward (decorators included)
        self._lock = threading.Lock()
        # (rotation, head_dim) -> (inv_freq buffer, its version, attention_scaling, mrope_section, spec)
        self._by_buffer: Dict[Tuple[Rotation, int], Tuple[Any, int, float, tuple, RopeSpec]] = {}
        # the same specs by value: a rotary module that rebuilds an equal buffer (LongRoPE does, on
        # every call past the original context) reuses the spec instead of registering a new one
        self._by_value: Dict[Tuple, RopeSpec] = {}
        self.fallback_reasons: Dict[str, int] = {}

    def spec(self, marker: RotaryPositions, rotation: Rotation, head_dim: int) -> RopeSpec:
        key = (rotation, head_dim)
        hit = self._by_buffer.get(key)
        if torch.compiler.is_compiling():
            # A traced graph cannot read the buffer; it takes the spec of the buffer as patch() (or the
            # last eager call) saw it. Rotary modules that change inv_freq at call time are refused.
            if hit is None or self.updates_at_call_time:
                raise UnsupportedError(
                    f"posenc.transformers: torch.compile of a patched model needs a spec for head_dim {head_dim} "
                    f"built before tracing (run the model once eagerly) and a rotary module whose inv_freq is "
                    f"fixed (rope_type '{self.rope_type}')")
            return hit[4]
        inv = marker.inv_freq
        scaling = marker.attention_scaling
        if (hit is not None and hit[0] is inv and hit[1] == inv._version and hit[2] == scaling
                and hit[3] == marker.mrope_section):
            return hit[4]
        return self._refresh(key, inv, scaling, marker.mrope_section)

    def _refresh(self, key: Tuple[Rotation, int], inv: torch.Tensor, scaling: float, mrope_section: tuple) -> RopeSpec:
        with self._lock:
            values = tuple(inv.detach().to("cpu", torch.float32).tolist())  # the one host read per table
            spec = self._by_value.get((key, values, scaling, mrope_section))
            if spec is None:
                spec = self._build(values, float(scaling), mrope_section, key[0], key[1])
                self._by_value[(key, values, scaling, mrope_section)] = spec
            self._by_buffer[key] = (inv, inv._version, scaling, mrope_section, spec)
        return spec

    def prepare(self, module: Any, head_dims: Tuple[int, ...]) -> None:
        """Builds the specs of the current table for the head sizes the model's attention will pass,
        so that a traced (torch.compile) forward finds them."""
        rotary = 2 * module.inv_freq.numel()
        mrope = tuple(module.mrope_section) if self.family.mrope else ()
        for _, rotation in self.family.applies:
            for head_dim in head_dims:
                if head_dim == rotary or (self.family.partial and head_dim > rotary):
                    self._refresh((rotation, head_dim), module.inv_freq, module.attention_scaling, mrope)

    def _build(self, inv_freq: Tuple[float, ...], scaling: float, mrope_section: tuple, rotation: Rotation,
               head_dim: int) -> RopeSpec:
        rotary = 2 * len(inv_freq)
        if rotary > head_dim or (rotary != head_dim and not self.family.partial):
            raise InvalidArgumentError(
                f"posenc.transformers: the rotary module's inv_freq has {len(inv_freq)} entries (rotary dim {rotary}) "
                f"but the heads passed to {self.family.module}'s apply function have {head_dim} dims"
                + ("" if self.family.partial else "; this model file rotates whole heads"))
        numerics = rotation.numerics if self.numerics == "hf_compatible" else self.numerics
        fields: Dict[str, Any] = dict(head_dim=head_dim, rotary_dim=rotary, pairing=rotation.pairing,
                                      scaling="table", inv_freq=list(inv_freq), attention_factor=scaling,
                                      numerics=numerics, hf_arithmetic=self.hf_arithmetic)
        if mrope_section:
            if sum(mrope_section) != len(inv_freq):
                raise InvalidArgumentError(
                    f"posenc.transformers: mrope_section {list(mrope_section)} sums to {sum(mrope_section)}, "
                    f"the rotary module has {len(inv_freq)} frequencies")
            fields["mrope_section"] = list(mrope_section)
        return RopeSpec(**fields)

    def note_fallback(self, reason: str) -> None:
        count = self.fallback_reasons.get(reason, 0)
        self.fallback_reasons[reason] = count + 1
        if count == 0:
            warnings.warn(f"posenc.transformers: {reason}; this call used transformers' own rotation", stacklevel=4)


def _marker_forward(self, x, position_ids):
    state: _RotaryState = self._posenc_state
    marker = RotaryPositions(state, self, x, position_ids)
    return marker, marker


def _patched_forward():
    from transformers.modeling_rope_utils import dynamic_rope_update
    # Same decorators as transformers' forward: dynamic NTK / LongRoPE update inv_freq (and the
    # attention scaling) before the marker reads them.
    return torch.no_grad()(dynamic_rope_update(_marker_forward))


# ---- the apply function -------------------------------------------------------------------------

def _merges(t: torch.Tensor) -> bool:
    """True when [B, S, H, D]'s batch and sequence dims form one token stride (posenc's layout)."""
    b, s = t.shape[0], t.shape[1]
    return b == 1 or s == 1 or t.stride(0) == s * t.stride(1)


def _rotate(q: torch.Tensor, k: torch.Tensor, marker: RotaryPositions, rotation: Rotation,
            unsqueeze_dim: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """posenc's rotation of transformers' q, k ([B, H, S, D] for unsqueeze_dim 1, [B, S, H, D] for
    2); None when this call must go to transformers' own code (the reason is recorded)."""
    state = marker._state
    if q.dtype not in _ACT_DTYPES or q.dtype != marker.dtype or k.dtype != q.dtype:
        state.note_fallback(f"Q/K dtype {q.dtype}/{k.dtype} differs from the hidden states' {marker.dtype} "
                            "or is not float32/float16/bfloat16")
        return None
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        state.note_fallback("Q/K require grad and posenc's ops have no backward")
        return None
    if q.dim() != 4 or k.dim() != 4 or unsqueeze_dim not in (1, 2):
        raise InvalidArgumentError(
            f"posenc.transformers: Q {list(q.shape)}, K {list(k.shape)} with unsqueeze_dim {unsqueeze_dim}; "
            "want 4-D [batch, heads, seq, head_dim] (1) or [batch, seq, heads, head_dim] (2)")
    qs, ks = (q.transpose(1, 2), k.transpose(1, 2)) if unsqueeze_dim == 1 else (q, k)  # [B, S, H, D]
    spec = state.spec(marker, rotation, qs.shape[-1])
    positions = marker.positions(qs.shape[0], qs.shape[1])
    if _merges(qs) and _merges(ks):
        q_out, k_out = apply_rope(qs, ks, positions, spec)
    else:  # e.g. a dense [B, H, S, D] with B > 1: one copy into [B, S, H, D], rotated in place
        q_out = qs.clone(memory_format=torch.contiguous_format)
        k_out = ks.clone(memory_format=torch.contiguous_format)
        apply_rope_(q_out, k_out, positions, spec)
    if unsqueeze_dim == 1:
        return q_out.transpose(1, 2), k_out.transpose(1, 2)
    return q_out, k_out


def _make_apply(original: Callable, rotation: Rotation) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply(q, k, cos, sin, *args, **kwargs):
        if type(cos) is not RotaryPositions:
            return original(q, k, cos, sin, *args, **kwargs)
        unsqueeze_dim = 1
        if args or kwargs:
            bound = signature.bind(q, k, cos, sin, *args, **kwargs)
            unsqueeze_dim = bound.arguments.get("unsqueeze_dim", 1)
        out = _rotate(q, k, cos, rotation, unsqueeze_dim)
        if out is None:
            cos_t, sin_t = cos.materialize()
            return original(q, k, cos_t, sin_t, *args, **kwargs)
        return out

    apply._posenc_original = original  # type: ignore[attr-defined]
    return apply


# ---- installing ---------------------------------------------------------------------------------

_install_lock = threading.Lock()
# (module name, function name) -> [transformers' original, number of patched models using it]
_installed: Dict[Tuple[str, str], List[Any]] = {}


def _install_applies(family: Family, module: types.ModuleType) -> None:
    with _install_lock:
        for name, rotation in family.applies:
            entry = _installed.get((family.module, name))
            if entry is None:
                original = getattr(module, name)
                setattr(module, name, _make_apply(original, rotation))
                _installed[(family.module, name)] = [original, 1]
            else:
                entry[1] += 1


def _remove_applies(family: Family, module: types.ModuleType) -> None:
    with _install_lock:
        for name, _ in family.applies:
            entry = _installed.get((family.module, name))
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] == 0:
                setattr(module, name, entry[0])
                del _installed[(family.module, name)]


@dataclasses.dataclass
class _Patch:
    family: Family
    model_type: str
    numerics: str
    hf_arithmetic: str
    rotary_modules: List[Any]


def _model_type(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or "<no config.model_type>"


def _refuse(model: Any, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"posenc.transformers.patch: {type(model).__name__} (model_type '{_model_type(model)}'): {why}. "
        f"Supported model types: {', '.join(supported_model_types())}")


def _head_dims(model: Any) -> Tuple[int, ...]:
    """Head sizes the attention passes to the apply function, from the config (DeepSeek's MLA: its
    rotary part); the rotary module's own window size is always tried as well."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    dims = set()
    for name in ("head_dim", "qk_rope_head_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            dims.add(value)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        dims.add(hidden // heads)
    return tuple(sorted(dims))


def patch(model: Any, numerics: str = "hf_compatible", hf_arithmetic: str = "engine") -> Any:
    """Replaces the rotary embedding of a loaded transformers model with posenc's ops; returns the model.

    numerics: "hf_compatible" (transformers' own arithmetic for the family: bit-identical Q/K in
    bf16 and fp16; Cohere's float32 rotation is posenc's hf_fp32_apply), "hf_fp32_apply", or
    "accurate" (posenc's accurate angles and one rounding; not transformers').
    hf_arithmetic: whose cos/sin the hf numerics take: "engine" (torch's on the tensors' device,
    which is what the unpatched model computes), or "torch_cpu", "torch_cuda", "exact". The table
    is always the rotary module's own inv_freq buffer.
    Raises posenc.UnsupportedError for a model whose family is not in FAMILIES. Patching a patched
    model with the same numerics and arithmetic returns it unchanged."""
    if numerics not in _NUMERICS:
        raise InvalidArgumentError(
            f"posenc.transformers.patch: numerics '{numerics}' is not one of {', '.join(_NUMERICS)}")
    if hf_arithmetic not in _HF_ARITHMETICS:
        raise InvalidArgumentError(
            f"posenc.transformers.patch: hf_arithmetic '{hf_arithmetic}' is not one of {', '.join(_HF_ARITHMETICS)}")
    current: Optional[_Patch] = getattr(model, "_posenc_patch", None)
    if current is not None:
        if current.numerics == numerics and current.hf_arithmetic == hf_arithmetic:
            return model
        unpatch(model)
    if not callable(getattr(model, "modules", None)):
        raise _refuse(model, "not a torch.nn.Module")
    model_type = _model_type(model)
    family = FAMILIES.get(model_type)
    if family is None:
        raise _refuse(model, "posenc has no patch for this model type")
    try:
        module = importlib.import_module(family.module)
    except ImportError as e:  # pragma: no cover - depends on the transformers install
        raise _refuse(model, f"cannot import {family.module} ({e})") from e
    missing = [name for name, _ in family.applies if not callable(getattr(module, name, None))]
    rotary_class = getattr(module, family.rotary_class, None)
    if missing or rotary_class is None:
        import transformers
        lacking = missing + ([] if rotary_class else [family.rotary_class])
        raise _refuse(model, f"this transformers ({transformers.__version__}) lacks {', '.join(lacking)} "
                             f"in {family.module}")
    rotaries = [m for m in model.modules() if type(m) is rotary_class]
    if not rotaries:
        raise _refuse(model, f"no {family.rotary_class} module inside (a subclass or a replaced module is not patched)")
    for m in rotaries:
        if "forward" in vars(m):
            raise _refuse(model, f"its {family.rotary_class}.forward was already replaced by other code")
        if not isinstance(getattr(m, "inv_freq", None), torch.Tensor):
            raise _refuse(model, f"its {family.rotary_class} has no inv_freq buffer")
    forward = _patched_forward()
    head_dims = _head_dims(model)
    for m in rotaries:
        state = _RotaryState(family, m, numerics, hf_arithmetic)
        state.prepare(m, head_dims)
        m._posenc_state = state
        m.forward = types.MethodType(forward, m)
    _install_applies(family, module)
    model._posenc_patch = _Patch(family, model_type, numerics, hf_arithmetic, rotaries)
    return model


def unpatch(model: Any) -> Any:
    """Undoes patch(): the rotary modules and the model file's apply functions are transformers'
    own again (the functions once no other patched model uses them). A no-op for an unpatched model."""
    current: Optional[_Patch] = getattr(model, "_posenc_patch", None)
    if current is None:
        return model
    for m in current.rotary_modules:
        vars(m).pop("forward", None)
        vars(m).pop("_posenc_state", None)
    _remove_applies(current.family, importlib.import_module(current.family.module))
    del model._posenc_patch
    return model


def is_patched(model: Any) -> bool:
    return getattr(model, "_posenc_patch", None) is not None
