// Loading Q/K/positions .npy files into a HostBatch and comparing rotated tensors, shared by `apply` and `check`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "device.hpp"
#include "npy.hpp"
#include "posenc/dtype.hpp"

namespace posenc::cli {

/// Reads a .npy input; any failure is a usage error (exit 2) whose message starts with the path.
NpyArray read_input(const std::string& path);

/// "[2, 3, 128]".
std::string shape_text(const std::vector<std::int64_t>& shape);

/// The activation dtype a float array holds, or nothing for '<u2' (bfloat16 bits only when the
/// user says so) and integer arrays.
std::optional<DType> float_dtype(NpyType type);

/// The element type of `array` read as activations of `dtype`; usage error when it is no float
/// type ('<u2' counts as bfloat16 bits only under `dtype` bf16).
DType source_dtype(const NpyArray& array, DType dtype, const std::string& path);

/// Heads of a [T, H, D] or [T, H*D] array with D = head_dim; usage error otherwise.
std::int64_t heads_of(const NpyArray& array, std::int64_t head_dim, const std::string& path);

/// Copies `array` (elements of `from`) into `out` as `dtype`, rounding to nearest even when the
/// file holds a wider type. `out` must hold array.count() elements of `dtype`.
void convert_into(const NpyArray& array, DType from, DType dtype, std::vector<std::byte>& out);

/// Where an output of `dtype` goes in a .npy file: bfloat16 as '<u2' bits (npy.hpp).
NpyType output_type(DType dtype);

/// The .npy files of one apply call, as the user named them.
struct InputPaths {
  std::string q;
  std::string k;  ///< empty: no K
  std::string positions;
  std::string dtype;  ///< --dtype as typed; empty: the dtype of the Q file
};

/// A HostBatch filled from .npy files, with the shapes the files had (outputs keep them).
struct LoadedInputs {
  HostBatch batch;
  std::vector<std::int64_t> q_shape;
  std::vector<std::int64_t> k_shape;  ///< empty when there is no K
};

/// Reads Q, optional K and positions into a HostBatch of the requested dtype. Positions hold
/// `position_streams` ids per token, stream-major: [T] (or HF's [1, T]) for one stream, [S, T]
/// (or HF's [S, 1, T]) for S streams (M-RoPE t/h/w, ChatGLM-6B 2-D). Usage error (exit 2) naming
/// the file for every dtype or shape problem.
LoadedInputs load_inputs(const InputPaths& paths, std::int64_t head_dim, std::int32_t position_streams);

/// Distance between two values of `dtype` in units in the last place of that dtype: how many
/// representable values lie between them (0 = same bits, +0 and -0 count as 1 apart). Both NaN
/// counts as 0; one NaN as INT64_MAX.
std::int64_t dtype_ulps(DType dtype, float a, float b);

/// Where and how an output element differs from the expected one.
struct Mismatch {
  std::string tensor;  ///< "q" or "k"
  std::int64_t token = 0;
  std::int64_t head = 0;
  std::int64_t dim = 0;
  float got = 0.0f;
  float want = 0.0f;
  std::int64_t ulps = 0;  ///< in ulps of the dtype
};

/// Result of comparing output tensors with expected ones, element by element.
struct CompareStats {
  std::int64_t values = 0;      ///< elements compared
  std::int64_t mismatches = 0;  ///< elements outside the tolerance
  double max_abs_error = 0.0;
  std::int64_t max_ulps = 0;  ///< in ulps of the dtype (NaN against a number: INT64_MAX)
  std::optional<Mismatch> first;  ///< the first mismatch in (tensor, token, head, dim) order
};

/// What counts as a match: at most `max_ulps` ulps of the dtype apart or, when
/// `head_relative_exponent` is set, |got - want| <= 2^exponent * max|input| over the element's
/// head (the fixture bound for float32, where transformers' cos/sin are not correctly rounded).
struct Tolerance {
  std::int64_t max_ulps = 0;  ///< a NaN against a number is a mismatch at any value
  std::optional<int> head_relative_exponent;
};

/// Compares a dense [tokens, heads, head_dim] tensor `got` with `want` (both of `dtype`) and
/// accumulates into `stats`; `input` (the tensor before rotation) is needed only for a
/// head-relative tolerance.
void compare_tensor(const std::string& tensor, DType dtype, std::int64_t tokens, std::int64_t heads,
                    std::int64_t head_dim, const std::byte* got, const std::byte* want,
                    const std::byte* input, const Tolerance& tolerance, CompareStats& stats);

/// "K token 3, head 0, dim 17: posenc 0.123 expected 0.125 (2 ulps of bfloat16)".
std::string describe(const Mismatch& m, DType dtype);

}  // namespace posenc::cli
