// posenc._core: the nanobind extension behind the Python package (specs, engines, raw tensor views).
//
// The extension knows nothing of torch: the Python layer (posenc/_tensors.py) turns a torch tensor
// or a NumPy array into a plain tuple (data pointer, dtype code, sizes, strides) and the current
// stream into an integer, so the wheel does not link libtorch and works with any torch version.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "posenc/posenc.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

/// (data pointer, DType code, tokens, heads, head_dim, token_stride, head_stride); strides in elements.
using TensorTuple = std::tuple<std::uintptr_t, int, std::int64_t, std::int64_t, std::int64_t,
                               std::int64_t, std::int64_t>;
/// (data pointer, is_int64, count, streams, stream_stride).
using PositionsTuple = std::tuple<std::uintptr_t, bool, std::int64_t, int, std::int64_t>;
/// (data pointer, DType code, rows, rotary_dim, row_stride).
using CacheTuple = std::tuple<std::uintptr_t, int, std::int64_t, std::int64_t, std::int64_t>;
/// (q weight pointer, k weight pointer or 0): the QK-norm weights (posenc::NormWeights), checked by
/// the Python layer for dtype, width and device.
using NormTuple = std::pair<std::uintptr_t, std::uintptr_t>;
/// AppendArgs::q_out: (data pointer, cache dtype code, token_stride, head_stride, scale).
using QOutTuple = std::tuple<std::uintptr_t, int, std::int64_t, std::int64_t, float>;
/// Per-head fp8 scales (k pointer, v pointer, q_out pointer; 0: absent): float32 arrays checked by the
/// Python layer for dtype, length and device (KvCacheView::k_head_scales, QuantizedOutput::head_scales).
using HeadScalesTuple = std::tuple<std::uintptr_t, std::uintptr_t, std::uintptr_t>;
/// (k pointer, v pointer, CacheDType code, layout code, kv_heads, head_dim, blocks, block_len, k_scale, v_scale,
/// latent_dim); the mla layout passes v pointer 0 and its latent_dim, the others latent_dim 0.
using KvCacheTuple = std::tuple<std::uintptr_t, std::uintptr_t, int, int, std::int64_t, std::int64_t,
                                std::int64_t, std::int64_t, float, float, std::int64_t>;

posenc::DType dtype_of(int code) {
  switch (code) {
    case 0: return posenc::DType::f32;
    case 1: return posenc::DType::f16;
    case 2: return posenc::DType::bf16;
    default:
      throw posenc::Error(posenc::ErrorKind::invalid_argument,
                          "dtype code " + std::to_string(code) + " outside [0, 3) (float32, float16, bfloat16)");
  }
}

posenc::TensorView tensor_view(const TensorTuple& t) {
  const auto& [ptr, dtype, tokens, heads, head_dim, token_stride, head_stride] = t;
  return {reinterpret_cast<void*>(ptr), dtype_of(dtype), tokens, heads, head_dim, token_stride, head_stride};
}

posenc::TensorView optional_view(const std::optional<TensorTuple>& t) {
  return t ? tensor_view(*t) : posenc::TensorView{};
}

posenc::PositionsView positions_view(const PositionsTuple& p) {
  const auto& [ptr, is_i64, count, streams, stream_stride] = p;
  return {reinterpret_cast<const void*>(ptr), is_i64 ? posenc::IndexType::i64 : posenc::IndexType::i32,
          count, streams, stream_stride};
}

posenc::CosSinCacheView cache_view(const std::optional<CacheTuple>& c) {
  if (!c) return {};
  const auto& [ptr, dtype, rows, rotary_dim, row_stride] = *c;
  posenc::CosSinCacheView v;
  v.data = reinterpret_cast<const void*>(ptr);
  v.dtype = dtype_of(dtype);
  v.rows = rows;
  v.rotary_dim = rotary_dim;
  v.row_stride = row_stride;
  return v;
}

posenc::NormWeights norm_weights(const std::optional<NormTuple>& n) {
  if (!n) return {};
  return {reinterpret_cast<const void*>(n->first), reinterpret_cast<const void*>(n->second)};
}

posenc::RopeArgs rope_args(const TensorTuple& q, const std::optional<TensorTuple>& k,
                           const std::optional<TensorTuple>& q_src, const std::optional<TensorTuple>& k_src,
                           const PositionsTuple& positions, const std::optional<CacheTuple>& cos_sin,
                           const std::optional<NormTuple>& norm) {
  posenc::RopeArgs args;
  args.q = tensor_view(q);
  args.k = optional_view(k);
  args.q_src = optional_view(q_src);
  args.k_src = optional_view(k_src);
  args.positions = positions_view(positions);
  args.cos_sin = cache_view(cos_sin);
  args.norm = norm_weights(norm);
  return args;
}

posenc::AppendArgs append_args(const TensorTuple& q, const std::optional<TensorTuple>& q_src,
                               const TensorTuple& k, const TensorTuple& v, const PositionsTuple& positions,
                               std::uintptr_t slots, const KvCacheTuple& cache,
                               const std::optional<CacheTuple>& cos_sin, const std::optional<NormTuple>& norm,
                               const std::optional<QOutTuple>& q_out, const std::optional<HeadScalesTuple>& heads) {
  posenc::AppendArgs args;
  args.q = tensor_view(q);
  args.q_src = optional_view(q_src);
  args.k = tensor_view(k);
  args.v = tensor_view(v);
  args.positions = positions_view(positions);
  args.slots = reinterpret_cast<const std::int64_t*>(slots);
  const auto& [kp, vp, dtype, layout, kv_heads, head_dim, blocks, block_len, k_scale, v_scale, latent_dim] = cache;
  if (dtype < 0 || dtype > 3) {
    throw posenc::Error(posenc::ErrorKind::invalid_argument,
                        "cache dtype code " + std::to_string(dtype) + " outside [0, 4)");
  }
  if (layout < 0 || layout > 3) {
    throw posenc::Error(posenc::ErrorKind::invalid_argument,
                        "cache layout code " + std::to_string(layout) + " outside [0, 4)");
  }
  args.cache.k = reinterpret_cast<void*>(kp);
  args.cache.v = reinterpret_cast<void*>(vp);
  args.cache.dtype = static_cast<posenc::CacheDType>(dtype);
  args.cache.layout = static_cast<posenc::CacheLayout>(layout);
  args.cache.kv_heads = kv_heads;
  args.cache.head_dim = head_dim;
  args.cache.blocks = blocks;
  args.cache.block_len = block_len;
  args.cache.k_scale = k_scale;
  args.cache.v_scale = v_scale;
  args.cache.latent_dim = latent_dim;
  args.cos_sin = cache_view(cos_sin);
  args.norm = norm_weights(norm);
  if (q_out) {
    const auto& [ptr, out_dtype, token_stride, head_stride, scale] = *q_out;
    if (out_dtype < 0 || out_dtype > 3) {
      throw posenc::Error(posenc::ErrorKind::invalid_argument,
                          "q_out dtype code " + std::to_string(out_dtype) + " outside [0, 4)");
    }
    args.q_out = {reinterpret_cast<void*>(ptr), static_cast<posenc::CacheDType>(out_dtype), token_stride, head_stride,
                  scale};
  }
  if (heads) {
    const auto& [k_scales, v_scales, q_scales] = *heads;
    args.cache.k_head_scales = reinterpret_cast<const float*>(k_scales);
    args.cache.v_head_scales = reinterpret_cast<const float*>(v_scales);
    args.q_out.head_scales = reinterpret_cast<const float*>(q_scales);
  }
  return args;
}

template <typename E>
E parse_enum(const std::string& text, const char* what, std::initializer_list<E> values) {
  std::string names;
  for (E v : values) {
    if (text == posenc::to_string(v)) return v;
    names += names.empty() ? "" : ", ";
    names += posenc::to_string(v);
  }
  throw posenc::Error(posenc::ErrorKind::invalid_argument,
                      std::string(what) + " '" + text + "' is not one of: " + names);
}

posenc::Pairing parse_pairing(const std::string& s) {
  using P = posenc::Pairing;
  return parse_enum<P>(s, "pairing", {P::half_split, P::interleaved, P::interleaved_to_half, P::half_split_2d});
}
posenc::Numerics parse_numerics(const std::string& s) {
  using N = posenc::Numerics;
  return parse_enum<N>(s, "numerics", {N::hf_compatible, N::hf_fp32_apply, N::accurate});
}
posenc::HfArithmetic parse_hf_arithmetic(const std::string& s) {
  const std::optional<posenc::HfArithmetic> a = posenc::parse_hf_arithmetic(s);
  if (a) return *a;
  using A = posenc::HfArithmetic;
  return parse_enum<A>(s, "hf_arithmetic", {A::engine, A::torch_cpu, A::torch_cuda, A::exact});  // throws, naming them
}
posenc::QkNormKind parse_qk_norm(const std::string& s) {
  using K = posenc::QkNormKind;
  return parse_enum<K>(s, "qk_norm", {K::none, K::rms, K::rms_one_plus});
}
posenc::Scaling parse_scaling(const std::string& s) {
  using S = posenc::Scaling;
  return parse_enum<S>(s, "scaling", {S::none, S::linear, S::dynamic, S::yarn, S::longrope, S::llama3, S::table});
}

/// A CPU engine; apply/append release the GIL (the engine runs its own threads).
struct CpuEngineBox {
  posenc::CpuEngine engine;
  CpuEngineBox(const posenc::RopeSpec& spec, int threads) : engine(spec, posenc::CpuOptions{threads}) {}
};

/// A GPU engine on one device; every call takes the caller's stream as an integer handle.
struct GpuEngineBox {
  posenc::gpu::Device device;
  posenc::gpu::GpuEngine engine;
  GpuEngineBox(const posenc::RopeSpec& spec, int ordinal)
      : device(posenc::gpu::Device::open(ordinal)), engine(spec, device) {}
};

posenc::gpu::StreamRef stream_ref(std::uintptr_t stream) {
  return stream == 0 ? posenc::gpu::StreamRef::legacy_default()
                     : posenc::gpu::StreamRef(reinterpret_cast<void*>(stream));
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "posenc's C++ core: RopeSpec, model configs, CPU and GPU engines over raw tensor views.";
  // Specs live in a process-wide registry until exit by design (torch ops name them by id), so
  // nanobind's report of instances alive at shutdown would only list those.
  nb::set_leak_warnings(false);

  // posenc::Error -> posenc.Error (a Python exception class defined in posenc/_errors.py and handed
  // over at import) with the C++ kind name, so Python code can branch on it.
  // A plain handle, kept for the life of the process: an nb::object here would be released by a
  // static destructor after the interpreter has finalized.
  static nb::handle error_factory;
  m.def("_set_error_factory", [](nb::handle f) { error_factory = f.inc_ref(); });
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const posenc::Error& e) {
      if (!error_factory) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return;
      }
      nb::gil_scoped_acquire gil;
      nb::object exc = error_factory(posenc::to_string(e.kind()), e.what());  // NOLINT
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });

  nb::class_<posenc::RopeSpec>(m, "Spec")
      .def(nb::init<>())
      .def_rw("head_dim", &posenc::RopeSpec::head_dim)
      .def_rw("rotary_dim", &posenc::RopeSpec::rotary_dim)
      .def_rw("rotary_offset", &posenc::RopeSpec::rotary_offset)
      .def_prop_rw(
          "pairing", [](const posenc::RopeSpec& s) { return std::string(posenc::to_string(s.pairing)); },
          [](posenc::RopeSpec& s, const std::string& v) { s.pairing = parse_pairing(v); })
      .def_rw("theta", &posenc::RopeSpec::theta)
      .def_prop_rw(
          "scaling", [](const posenc::RopeSpec& s) { return std::string(posenc::to_string(s.scaling)); },
          [](posenc::RopeSpec& s, const std::string& v) { s.scaling = parse_scaling(v); })
      .def_prop_rw(
          "numerics", [](const posenc::RopeSpec& s) { return std::string(posenc::to_string(s.numerics)); },
          [](posenc::RopeSpec& s, const std::string& v) { s.numerics = parse_numerics(v); })
      .def_prop_rw(
          "hf_arithmetic", [](const posenc::RopeSpec& s) { return std::string(posenc::to_string(s.hf_arithmetic)); },
          [](posenc::RopeSpec& s, const std::string& v) { s.hf_arithmetic = parse_hf_arithmetic(v); })
      .def_rw("attention_factor", &posenc::RopeSpec::attention_factor)
      // The QK-norm stage (rope.hpp QkNorm), flattened like the scheme parameters.
      .def_prop_rw(
          "qk_norm", [](const posenc::RopeSpec& s) { return std::string(posenc::to_string(s.qk_norm.kind)); },
          [](posenc::RopeSpec& s, const std::string& v) { s.qk_norm.kind = parse_qk_norm(v); })
      .def_prop_rw("qk_norm_epsilon", [](const posenc::RopeSpec& s) { return s.qk_norm.epsilon; },
                   [](posenc::RopeSpec& s, double v) { s.qk_norm.epsilon = v; })
      .def_prop_rw("qk_norm_rotary_only", [](const posenc::RopeSpec& s) { return s.qk_norm.rotary_only; },
                   [](posenc::RopeSpec& s, bool v) { s.qk_norm.rotary_only = v; })
      .def_rw("mrope_section", &posenc::RopeSpec::mrope_section)
      .def_rw("mrope_interleaved", &posenc::RopeSpec::mrope_interleaved)
      .def_rw("position_limit", &posenc::RopeSpec::position_limit)
      // Scheme parameters (rope.hpp ScalingParams), flattened.
      .def_prop_rw("factor", [](const posenc::RopeSpec& s) { return s.params.factor; },
                   [](posenc::RopeSpec& s, double v) { s.params.factor = v; })
      .def_prop_rw("original_max_position_embeddings",
                   [](const posenc::RopeSpec& s) { return s.params.original_max_position_embeddings; },
                   [](posenc::RopeSpec& s, std::int64_t v) { s.params.original_max_position_embeddings = v; })
      .def_prop_rw("max_position_embeddings",
                   [](const posenc::RopeSpec& s) { return s.params.max_position_embeddings; },
                   [](posenc::RopeSpec& s, std::int64_t v) { s.params.max_position_embeddings = v; })
      .def_prop_rw("beta_fast", [](const posenc::RopeSpec& s) { return s.params.beta_fast; },
                   [](posenc::RopeSpec& s, double v) { s.params.beta_fast = v; })
      .def_prop_rw("beta_slow", [](const posenc::RopeSpec& s) { return s.params.beta_slow; },
                   [](posenc::RopeSpec& s, double v) { s.params.beta_slow = v; })
      .def_prop_rw("mscale", [](const posenc::RopeSpec& s) { return s.params.mscale; },
                   [](posenc::RopeSpec& s, double v) { s.params.mscale = v; })
      .def_prop_rw("mscale_all_dim", [](const posenc::RopeSpec& s) { return s.params.mscale_all_dim; },
                   [](posenc::RopeSpec& s, double v) { s.params.mscale_all_dim = v; })
      .def_prop_rw("truncate", [](const posenc::RopeSpec& s) { return s.params.truncate; },
                   [](posenc::RopeSpec& s, bool v) { s.params.truncate = v; })
      .def_prop_rw("low_freq_factor", [](const posenc::RopeSpec& s) { return s.params.low_freq_factor; },
                   [](posenc::RopeSpec& s, double v) { s.params.low_freq_factor = v; })
      .def_prop_rw("high_freq_factor", [](const posenc::RopeSpec& s) { return s.params.high_freq_factor; },
                   [](posenc::RopeSpec& s, double v) { s.params.high_freq_factor = v; })
      .def_prop_rw("short_factor", [](const posenc::RopeSpec& s) { return s.params.short_factor; },
                   [](posenc::RopeSpec& s, std::vector<double> v) { s.params.short_factor = std::move(v); })
      .def_prop_rw("long_factor", [](const posenc::RopeSpec& s) { return s.params.long_factor; },
                   [](posenc::RopeSpec& s, std::vector<double> v) { s.params.long_factor = std::move(v); })
      .def_prop_rw("inv_freq", [](const posenc::RopeSpec& s) { return s.params.inv_freq; },
                   [](posenc::RopeSpec& s, std::vector<float> v) { s.params.inv_freq = std::move(v); })
      .def("rotary", &posenc::RopeSpec::rotary)
      .def("position_streams", &posenc::RopeSpec::position_streams)
      .def("validate", &posenc::RopeSpec::validate)
      .def("describe", &posenc::RopeSpec::describe)
      .def("__copy__", [](const posenc::RopeSpec& s) { return s; })
      .def(
          "frequencies",
          [](const posenc::RopeSpec& s, std::optional<std::int64_t> seq_len) {
            const posenc::FrequencyTable t = posenc::compute_frequencies(s, seq_len);
            return std::make_pair(t.inv_freq, t.attention_factor);
          },
          "seq_len"_a = nb::none(),
          "(inv_freq, attention_factor) as transformers computes them (seq_len: the call's largest position + 1).");

  nb::class_<posenc::ModelConfig>(m, "ModelConfig")
      .def_ro("model_type", &posenc::ModelConfig::model_type)
      .def_ro("source", &posenc::ModelConfig::source)
      .def_ro("num_attention_heads", &posenc::ModelConfig::num_attention_heads)
      .def_ro("num_key_value_heads", &posenc::ModelConfig::num_key_value_heads)
      .def_ro("head_dim", &posenc::ModelConfig::head_dim)
      .def_ro("max_position_embeddings", &posenc::ModelConfig::max_position_embeddings)
      .def("layer_types",
           [](const posenc::ModelConfig& c) {
             std::vector<std::string> names;
             for (const auto& [name, spec] : c.rope) names.push_back(name);
             return names;
           })
      .def("spec", [](const posenc::ModelConfig& c, const std::string& layer) { return c.spec(layer); },
           "layer_type"_a = "default");
  m.def("parse_model_config", &posenc::parse_model_config, "json_text"_a, "source"_a = "<text>");
  m.def("load_model_config", &posenc::load_model_config, "path"_a);
  m.def("default_model_config_json", [] { return std::string(posenc::default_model_config_json()); });

  nb::class_<CpuEngineBox>(m, "CpuEngine")
      .def(nb::init<const posenc::RopeSpec&, int>(), "spec"_a, "threads"_a = 0)
      .def(
          "apply",
          [](const CpuEngineBox& e, const TensorTuple& q, const std::optional<TensorTuple>& k,
             const std::optional<TensorTuple>& q_src, const std::optional<TensorTuple>& k_src,
             const PositionsTuple& positions, const std::optional<CacheTuple>& cos_sin,
             const std::optional<NormTuple>& norm) {
            const posenc::RopeArgs args = rope_args(q, k, q_src, k_src, positions, cos_sin, norm);
            nb::gil_scoped_release release;
            e.engine.apply(args);
          },
          "q"_a, "k"_a.none(), "q_src"_a.none(), "k_src"_a.none(), "positions"_a, "cos_sin"_a.none(),
          "norm"_a = nb::none())
      .def(
          "append",
          [](const CpuEngineBox& e, const TensorTuple& q, const std::optional<TensorTuple>& q_src,
             const TensorTuple& k, const TensorTuple& v, const PositionsTuple& positions, std::uintptr_t slots,
             const KvCacheTuple& cache, const std::optional<CacheTuple>& cos_sin,
             const std::optional<NormTuple>& norm, const std::optional<QOutTuple>& q_out,
             const std::optional<HeadScalesTuple>& head_scales) {
            const posenc::AppendArgs args =
                append_args(q, q_src, k, v, positions, slots, cache, cos_sin, norm, q_out, head_scales);
            nb::gil_scoped_release release;
            e.engine.append(args);
          },
          "q"_a, "q_src"_a.none(), "k"_a, "v"_a, "positions"_a, "slots"_a, "cache"_a, "cos_sin"_a.none(),
          "norm"_a = nb::none(), "q_out"_a = nb::none(), "head_scales"_a = nb::none())
      .def("threads", [](const CpuEngineBox& e) { return e.engine.threads(); })
      .def("kernel_build",
           [](const CpuEngineBox& e, int dtype) { return std::string(e.engine.kernel_build(dtype_of(dtype))); },
           "dtype"_a);

  nb::class_<GpuEngineBox>(m, "GpuEngine")
      .def(nb::init<const posenc::RopeSpec&, int>(), "spec"_a, "device"_a)
      .def(
          "apply",
          [](const GpuEngineBox& e, const TensorTuple& q, const std::optional<TensorTuple>& k,
             const std::optional<TensorTuple>& q_src, const std::optional<TensorTuple>& k_src,
             const PositionsTuple& positions, const std::optional<CacheTuple>& cos_sin, std::uintptr_t stream,
             const std::optional<NormTuple>& norm) {
            e.engine.apply(rope_args(q, k, q_src, k_src, positions, cos_sin, norm), stream_ref(stream));
          },
          "q"_a, "k"_a.none(), "q_src"_a.none(), "k_src"_a.none(), "positions"_a, "cos_sin"_a.none(), "stream"_a,
          "norm"_a = nb::none())
      .def(
          "append",
          [](const GpuEngineBox& e, const TensorTuple& q, const std::optional<TensorTuple>& q_src,
             const TensorTuple& k, const TensorTuple& v, const PositionsTuple& positions, std::uintptr_t slots,
             const KvCacheTuple& cache, const std::optional<CacheTuple>& cos_sin, std::uintptr_t stream,
             const std::optional<NormTuple>& norm, const std::optional<QOutTuple>& q_out,
             const std::optional<HeadScalesTuple>& head_scales) {
            e.engine.append(append_args(q, q_src, k, v, positions, slots, cache, cos_sin, norm, q_out, head_scales),
                            stream_ref(stream));
          },
          "q"_a, "q_src"_a.none(), "k"_a, "v"_a, "positions"_a, "slots"_a, "cache"_a, "cos_sin"_a.none(),
          "stream"_a, "norm"_a = nb::none(), "q_out"_a = nb::none(), "head_scales"_a = nb::none())
      .def(
          "check",
          [](const GpuEngineBox& e, std::uintptr_t stream) {
            nb::gil_scoped_release release;
            e.engine.check(stream_ref(stream));
          },
          "stream"_a)
      .def_prop_ro("device", [](const GpuEngineBox& e) { return e.device.ordinal(); });

  m.def("gpu_available", &posenc::gpu::available);
  m.def("gpu_unavailable_reason", &posenc::gpu::unavailable_reason);
  m.def("backend", [] { return std::string(posenc::gpu::backend_name()); });
  m.def("version", [] { return std::string(posenc::version_string); });
}
