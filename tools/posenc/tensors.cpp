// Loading Q/K/positions .npy files into a HostBatch and comparing rotated tensors (apply, check).
#include "tensors.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "command.hpp"
#include "options.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"

namespace posenc::cli {

NpyArray read_input(const std::string& path) {
  try {
    return read_npy(path);
  } catch (const Error& e) {
    usage_error(e.what());  // the message starts with the path
  }
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (const std::int64_t d : shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

std::optional<DType> float_dtype(NpyType type) {
  switch (type) {
    case NpyType::f32: return DType::f32;
    case NpyType::f16: return DType::f16;
    case NpyType::bf16: return DType::bf16;
    case NpyType::u16:  // bfloat16 bits only when the user says so (source_dtype)
    case NpyType::i32:
    case NpyType::i64: return std::nullopt;
  }
  return std::nullopt;
}

DType source_dtype(const NpyArray& array, DType dtype, const std::string& path) {
  if (array.type == NpyType::u16) {
    if (dtype == DType::bf16) return DType::bf16;
    usage_error(path + ": '<u2' arrays are read as bfloat16 bits, which needs --dtype bf16");
  }
  if (const std::optional<DType> t = float_dtype(array.type)) return *t;
  usage_error(path + ": dtype " + npy_descr(array.type) + " is not a floating-point activation type");
}

std::int64_t heads_of(const NpyArray& array, std::int64_t head_dim, const std::string& path) {
  const auto& s = array.shape;
  std::int64_t heads = -1;
  if (s.size() == 3 && s[2] == head_dim) heads = s[1];
  if (s.size() == 2 && s[1] % head_dim == 0) heads = s[1] / head_dim;
  if (heads < 0) {
    usage_error(path + ": shape " + shape_text(s) + " is neither [tokens, heads, " +
                std::to_string(head_dim) + "] nor [tokens, heads * " + std::to_string(head_dim) +
                "] (head_dim " + std::to_string(head_dim) + " from the config)");
  }
  if (heads == 0) usage_error(path + ": shape " + shape_text(s) + " has no heads");
  if (heads > max_heads) {
    usage_error(path + ": shape " + shape_text(s) + " has " + std::to_string(heads) +
                " heads, over the limit of " + std::to_string(max_heads) + " (max_heads)");
  }
  return heads;
}

void convert_into(const NpyArray& array, DType from, DType dtype, std::vector<std::byte>& out) {
  const std::int64_t n = array.count();
  if (n == 0) return;  // an empty vector's data() may be null, which memcpy must not see
  if (from == dtype) {
    std::memcpy(out.data(), array.data.data(), static_cast<std::size_t>(n * size_of(dtype)));
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    store_element(dtype, out.data(), i, load_element(from, array.data.data(), i));
  }
}

NpyType output_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return NpyType::f32;
    case DType::f16: return NpyType::f16;
    case DType::bf16: return NpyType::bf16;
  }
  usage_error("dtype " + std::to_string(static_cast<int>(dtype)) + " has no .npy type");
}

namespace {

/// Checks that `positions` holds `streams` ids per token, stream-major; usage error otherwise.
void check_positions_shape(const NpyArray& positions, const std::string& path, std::int64_t tokens,
                           std::int32_t streams, const std::string& q_path) {
  if (streams == 1) {
    if (positions.count() != tokens) {
      usage_error(path + ": " + std::to_string(positions.count()) + " positions (shape " +
                  shape_text(positions.shape) + "), but " + q_path + " has " +
                  std::to_string(tokens) + " tokens (one position per token)");
    }
    return;
  }
  // Several streams must come first: [S, T] or HF's [S, 1, T], never a flat [S*T] whose order
  // (token-major or stream-major) could not be told.
  const bool stream_major = positions.shape.size() >= 2 && positions.shape.front() == streams;
  if (!stream_major || positions.count() != streams * tokens) {
    usage_error(path + ": shape " + shape_text(positions.shape) + ", but the config's RoPE takes " +
                std::to_string(streams) + " position streams per token and " + q_path + " has " +
                std::to_string(tokens) + " tokens: expected [" + std::to_string(streams) + ", " +
                std::to_string(tokens) + "] (or HF's [" + std::to_string(streams) + ", 1, " +
                std::to_string(tokens) + "])");
  }
}

}  // namespace

LoadedInputs load_inputs(const InputPaths& paths, std::int64_t head_dim, std::int32_t position_streams) {
  const NpyArray q = read_input(paths.q);
  std::optional<NpyArray> k;
  if (!paths.k.empty()) k = read_input(paths.k);
  const NpyArray positions = read_input(paths.positions);

  DType dtype;
  if (!paths.dtype.empty()) {
    dtype = parse_dtype_option(paths.dtype);
  } else if (const std::optional<DType> t = float_dtype(q.type)) {
    dtype = *t;
  } else {
    usage_error(paths.q + ": dtype " + npy_descr(q.type) +
                " does not say the activation dtype; pass --dtype (bf16 for bfloat16 bits in '<u2')");
  }
  const DType q_from = source_dtype(q, dtype, paths.q);
  const DType k_from = k ? source_dtype(*k, dtype, paths.k) : dtype;

  LoadedInputs loaded;
  HostBatch& batch = loaded.batch;
  batch.dtype = dtype;
  batch.head_dim = head_dim;
  if (q.shape.empty()) usage_error(paths.q + ": a 0-d array has no tokens");
  batch.tokens = q.shape[0];
  if (batch.tokens == 0) usage_error(paths.q + ": shape " + shape_text(q.shape) + " has no tokens");
  batch.q_heads = heads_of(q, head_dim, paths.q);
  if (k) {
    batch.k_heads = heads_of(*k, head_dim, paths.k);
    if (k->shape[0] != batch.tokens) {
      usage_error(paths.k + ": " + std::to_string(k->shape[0]) + " tokens, but " + paths.q + " has " +
                  std::to_string(batch.tokens));
    }
  }
  if (positions.type != NpyType::i32 && positions.type != NpyType::i64) {
    usage_error(paths.positions + ": positions must be <i4 or <i8, not " + npy_descr(positions.type));
  }
  check_positions_shape(positions, paths.positions, batch.tokens, position_streams, paths.q);
  batch.position_type = positions.type == NpyType::i32 ? IndexType::i32 : IndexType::i64;
  batch.position_streams = position_streams;
  batch.allocate();
  convert_into(q, q_from, dtype, batch.q);
  if (k) convert_into(*k, k_from, dtype, batch.k);
  batch.positions = positions.data;
  loaded.q_shape = q.shape;
  if (k) loaded.k_shape = k->shape;
  return loaded;
}

namespace {

/// `value`'s place in the total order of `dtype`'s values: consecutive values differ by 1, and
/// -0 sits just below +0.
std::int64_t ordered_bits(DType dtype, float value) {
  std::uint32_t bits = 0;  // the element's bits in the low size_of(dtype) bytes (little-endian)
  store_element(dtype, &bits, 0, value);
  const std::uint32_t sign = std::uint32_t{1} << (8 * size_of(dtype) - 1);
  const std::int64_t magnitude = bits & (sign - 1);
  return (bits & sign) ? -magnitude - 1 : magnitude;
}

}  // namespace

std::int64_t dtype_ulps(DType dtype, float a, float b) {
  if (std::isnan(a) || std::isnan(b)) {
    return std::isnan(a) && std::isnan(b) ? 0 : std::numeric_limits<std::int64_t>::max();
  }
  const std::int64_t d = ordered_bits(dtype, a) - ordered_bits(dtype, b);
  return d < 0 ? -d : d;
}

void compare_tensor(const std::string& tensor, DType dtype, std::int64_t tokens, std::int64_t heads,
                    std::int64_t head_dim, const std::byte* got, const std::byte* want,
                    const std::byte* input, const Tolerance& tolerance, CompareStats& stats) {
  for (std::int64_t th = 0; th < tokens * heads; ++th) {
    const std::int64_t base = th * head_dim;
    double allowed_abs = 0.0;
    if (tolerance.head_relative_exponent) {
      float max_in = 0.0f;
      for (std::int64_t d = 0; d < head_dim; ++d) {
        max_in = std::max(max_in, std::fabs(load_element(dtype, input, base + d)));
      }
      allowed_abs = std::ldexp(static_cast<double>(max_in), *tolerance.head_relative_exponent);
    }
    for (std::int64_t d = 0; d < head_dim; ++d) {
      const float g = load_element(dtype, got, base + d);
      const float w = load_element(dtype, want, base + d);
      const std::int64_t ulps = dtype_ulps(dtype, g, w);
      const double abs_error = std::fabs(static_cast<double>(g) - static_cast<double>(w));
      ++stats.values;
      stats.max_ulps = std::max(stats.max_ulps, ulps);
      if (!std::isnan(abs_error)) stats.max_abs_error = std::max(stats.max_abs_error, abs_error);
      // NaN against a number never matches, whatever the tolerance (its distance is INT64_MAX).
      const bool nan_against_number = ulps == std::numeric_limits<std::int64_t>::max();
      const bool ok = tolerance.head_relative_exponent
                          ? ulps == 0 || abs_error <= allowed_abs  // NaN error fails
                          : !nan_against_number && ulps <= tolerance.max_ulps;
      if (ok) continue;
      if (stats.mismatches++ == 0) stats.first = Mismatch{tensor, th / heads, th % heads, d, g, w, ulps};
    }
  }
}

std::string describe(const Mismatch& m, DType dtype) {
  char text[320];
  const std::string ulps = m.ulps == std::numeric_limits<std::int64_t>::max()
                               ? std::string("NaN against a number")
                               : std::to_string(m.ulps) + " ulp" + (m.ulps == 1 ? "" : "s") +
                                     " of " + to_string(dtype);
  std::snprintf(text, sizeof text, "%s token %lld, head %lld, dim %lld: posenc %.9g, expected %.9g (%s)",
                m.tensor == "q" ? "Q" : "K", static_cast<long long>(m.token),
                static_cast<long long>(m.head), static_cast<long long>(m.dim), static_cast<double>(m.got),
                static_cast<double>(m.want), ulps.c_str());
  return text;
}

}  // namespace posenc::cli
