"""RopeSpec: the complete definition of one rotary embedding, and the per-device engines built for it."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from . import _core
from ._errors import InvalidArgumentError
from ._tensors import act_code_of_name

# Every spec gets a process-wide integer id: torch ops take the id (an int is a schema type that
# torch.compile bakes into the graph as a constant), and look the spec up here.
_registry_lock = threading.Lock()
_registry: Dict[int, "RopeSpec"] = {}

_FIELDS = (
    "head_dim", "rotary_dim", "rotary_offset", "pairing", "theta", "scaling", "numerics", "hf_arithmetic",
    "attention_factor", "qk_norm", "qk_norm_epsilon", "qk_norm_rotary_only",
    "mrope_section", "mrope_interleaved", "position_limit", "factor", "original_max_position_embeddings",
    "max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate",
    "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "inv_freq",
)


class RopeSpec:
    """Everything that defines a model's rotary position embedding (the C++ ``posenc::RopeSpec``).

    Build one from a Hugging Face ``config.json`` with :meth:`from_config`, or field by field::

        spec = posenc.RopeSpec(head_dim=128, theta=1e6)                 # Qwen2-style half-split
        spec = posenc.RopeSpec(head_dim=128, rotary_dim=64, pairing="interleaved", theta=5e6)  # GLM-4
        spec = posenc.RopeSpec(head_dim=128, theta=1e6, qk_norm="rms", qk_norm_epsilon=1e-6)  # Qwen3

    ``qk_norm`` ("none", "rms": Qwen3/GLM-4.5, "rms_one_plus": Gemma 3) normalises every Q and K
    head before the rotation; the calls then take the norm weights (q_norm_weight, k_norm_weight).

    ``hf_arithmetic`` says whose float32 pow/cos/sin the hf numerics reproduce: "engine" (the
    default: torch on the tensors' device, i.e. "torch_cpu" for CPU tensors and "torch_cuda" for
    CUDA tensors), "torch_cpu", "torch_cuda" or "exact" (correctly rounded, the same bits on every
    device). An engine refuses an arithmetic it cannot reproduce (docs/PYTHON.md).

    A spec is immutable once built (engines are cached per spec); :meth:`replace` returns a
    modified copy. Field names and meanings are the C++ ones (docs/PYTHON.md lists them).
    """

    __slots__ = ("_spec", "_id", "_engines", "_lock", "__weakref__")

    def __init__(self, **fields: Any) -> None:
        spec = _core.Spec()
        for name, value in fields.items():
            if name not in _FIELDS:
                raise InvalidArgumentError(f"RopeSpec: unknown field '{name}' (fields: {', '.join(_FIELDS)})")
            setattr(spec, name, list(value) if isinstance(value, (tuple, list)) else value)
        self._adopt(spec)

    @classmethod
    def _wrap(cls, spec: "_core.Spec") -> "RopeSpec":
        self = cls.__new__(cls)
        self._adopt(spec)
        return self

    def _adopt(self, spec: "_core.Spec") -> None:
        spec.validate()
        self._spec = spec
        self._engines: Dict[Tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        with _registry_lock:
            self._id = len(_registry) + 1
            _registry[self._id] = self

    # -- construction from a model config ---------------------------------------------------------

    @classmethod
    def from_config(cls, config: Union[str, os.PathLike, Mapping[str, Any]], layer_type: str = "default",
                    numerics: Optional[str] = None, hf_arithmetic: Optional[str] = None) -> "RopeSpec":
        """The spec of a Hugging Face ``config.json`` (a path, its JSON text, or a dict such as
        ``transformers.PretrainedConfig.to_dict()``), for ``layer_type`` ("default" for models with
        one rotary embedding; e.g. "full_attention"/"sliding_attention" for Gemma 3)."""
        model = load_config(config)
        spec = cls._wrap(model.spec(layer_type))
        changes = {k: v for k, v in (("numerics", numerics), ("hf_arithmetic", hf_arithmetic)) if v is not None}
        return spec.replace(**changes) if changes else spec

    def replace(self, **fields: Any) -> "RopeSpec":
        """A copy with some fields changed (validated like a new spec)."""
        values = self.to_dict()
        values.update(fields)
        return RopeSpec(**values)

    # -- reading ------------------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """Process-wide handle the torch ops take (``torch.ops.posenc.*(..., spec_id)``)."""
        return self._id

    def __getattr__(self, name: str) -> Any:
        if name in _FIELDS:
            return getattr(self._spec, name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS:
            raise AttributeError(f"RopeSpec is immutable; use spec.replace({name}=...)")
        object.__setattr__(self, name, value)

    @property
    def rotary(self) -> int:
        """The rotary window R (rotary_dim, 0 resolved to head_dim)."""
        return self._spec.rotary()

    @property
    def position_streams(self) -> int:
        """Position streams a call passes: 2 for half_split_2d, len(mrope_section) for M-RoPE, else 1."""
        return self._spec.position_streams()

    def frequencies(self, seq_len: Optional[int] = None) -> Tuple[list, float]:
        """(inv_freq as float32 values, attention factor) as transformers computes them."""
        return self._spec.frequencies(seq_len)

    def to_dict(self) -> Dict[str, Any]:
        return {name: getattr(self._spec, name) for name in _FIELDS}

    def describe(self) -> str:
        return self._spec.describe()

    def __repr__(self) -> str:
        s = self._spec
        norm = (f"qk_norm={s.qk_norm}{'(rotary_only)' if s.qk_norm_rotary_only else ''}, "
                f"qk_norm_epsilon={s.qk_norm_epsilon:g}, " if s.qk_norm != "none" else "")
        return (f"RopeSpec(head_dim={s.head_dim}, rotary={s.rotary()}, pairing={s.pairing}, theta={s.theta:g}, "
                f"scaling={s.scaling}, {norm}numerics={s.numerics}, hf_arithmetic={s.hf_arithmetic}, id={self._id})")

    # -- engines ------------------------------------------------------------------------------------

    def cpu_kernel_build(self, dtype: Any) -> str:
        """The CPU kernel build that rotates `dtype` (a torch or NumPy dtype, or its name) under this spec
        on this machine: "avx512_bf16", "avx512", "avx2" or "baseline" (CpuEngine::kernel_build)."""
        code = act_code_of_name(str(dtype))
        if code is None:
            raise InvalidArgumentError(f"dtype {dtype} is not supported (float32, float16, bfloat16)")
        return self.engine("cpu").kernel_build(code)

    def engine(self, device_type: str, index: int = 0) -> Any:
        """The engine of this spec on a device ("cpu", or "cuda" with an ordinal), built on first
        use and kept: a GPU engine uploads its tables and synchronizes once when it is built, so
        build it (call once, or call this) before capturing a CUDA graph."""
        key = (device_type, index)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = _build_engine(self._spec, device_type, index)
                self._engines[key] = engine
        return engine

    def engines(self) -> Iterable[Tuple[Tuple[str, int], Any]]:
        return list(self._engines.items())


def _build_engine(spec: "_core.Spec", device_type: str, index: int) -> Any:
    if device_type == "cpu":
        return _core.CpuEngine(spec, 0)
    if device_type == "cuda":
        _refuse_while_capturing(index)
        return _core.GpuEngine(spec, index)
    raise InvalidArgumentError(f"device type '{device_type}' is not supported (cpu, cuda)")


def _refuse_while_capturing(index: int) -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise InvalidArgumentError(
            f"posenc: the engine for cuda:{index} would be built inside CUDA graph capture (building it "
            "uploads tables and synchronizes); run the op once before capturing")


def spec_by_id(spec_id: int) -> RopeSpec:
    spec = _registry.get(spec_id)
    if spec is None:
        raise InvalidArgumentError(f"spec id {spec_id} names no RopeSpec of this process (ids 1..{len(_registry)})")
    return spec


def all_specs() -> Sequence[RopeSpec]:
    with _registry_lock:
        return list(_registry.values())


def load_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> "_core.ModelConfig":
    """Parses a config.json given as a path, JSON text, or a mapping."""
    if isinstance(config, Mapping):
        return _core.parse_model_config(json.dumps(dict(config), default=_json_default), "<dict>")
    text = os.fspath(config)
    if isinstance(text, str) and text.lstrip().startswith("{"):
        return _core.parse_model_config(text, "<text>")
    return _core.load_model_config(text)


def _json_default(value: Any) -> Any:
    # transformers configs hold torch dtypes and the like; posenc never reads those keys.
    return str(value)
