// The argument block the CPU engine's kernels read: one apply call, flattened to pointers and element strides.
#pragma once

#include <cstdint>

#include "cpu/row_cache.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc::cpu_detail {

/// Most pairs a head can have; kernels keep one token's cos/sin and one head's window on the stack.
inline constexpr std::int64_t max_half = max_head_dim / 2;

/// Most position streams a call can have (RopeSpec::validate allows at most 4 M-RoPE sections);
/// kernels keep one position per stream of the current token.
inline constexpr std::int32_t max_streams = 4;

/// One tensor (Q or K) of a call. Strides are in elements, as in TensorView.
struct KernelTensor {
  void* dst = nullptr;
  const void* src = nullptr;  ///< equal to dst when rotating in place
  std::int64_t heads = 0;
  std::int64_t dst_token_stride = 0;
  std::int64_t dst_head_stride = 0;
  std::int64_t src_token_stride = 0;
  std::int64_t src_head_stride = 0;
  bool copy_pass = false;  ///< out of place: copy the elements outside the rotary window
  /// The QK-norm stage's weights (activation dtype, KernelCall::norm_width of them); nullptr: no norm.
  const void* norm_weight = nullptr;
};

/// Everything a kernel needs for one call; it lives in apply's frame while the pool runs.
struct KernelCall {
  KernelTensor q;
  KernelTensor k;
  bool has_k = false;
  PositionsView positions;
  const float* inv_freq = nullptr;  ///< `half` entries, one per pair (PairAxes::inv_freq)
  /// Multi-axis specs: the position stream of each pair (PairAxes::stream); nullptr when every
  /// pair uses stream 0, so single-stream calls keep one position per token.
  const std::uint8_t* pair_stream = nullptr;
  std::int64_t half = 0;            ///< pairs per head (rotary_dim / 2)
  std::int64_t offset = 0;          ///< first element of the rotary window
  std::int64_t head_dim = 0;
  /// The engine's cos/sin rows by position (fixed-table schemes); nullptr: compute every row.
  const RowCache* rows = nullptr;
  /// The caller's cos/sin cache (RopeArgs::cos_sin); when present, rows come from it and
  /// inv_freq, pair_stream, rows and the attention factors are not read.
  CosSinCacheView cos_sin;
  /// hf numerics with HfArithmetic::torch_cpu: a row's cos/sin come from torch's CPU library
  /// (core/hf_arithmetic.hpp, MKL) applied to the row's float32 angles; false: rope_math.hpp's.
  bool torch_cpu_trig = false;
  /// The QK-norm stage (RopeSpec::qk_norm; off when its kind is none): each head's elements
  /// [norm_first, norm_first + norm_width) are normalised (core/qk_norm.hpp) before the rotation,
  /// in torch's CPU arithmetic or the exact one.
  QkNorm norm;
  HfArithmetic norm_arithmetic = HfArithmetic::exact;
  std::int64_t norm_first = 0;
  std::int64_t norm_width = 0;
  float attention_factor_f32 = 1.0f;  ///< hf modes: the factor as a float32 operand
  double attention_factor = 1.0;      ///< accurate: applied in double before the one rounding
};

/// Rotates tokens [begin, end) of the call `context` (a KernelCall). The signature is
/// ThreadPool::Task's, so kernels are handed to the pool directly.
using KernelFn = void (*)(const void* context, std::int64_t begin, std::int64_t end) noexcept;

}  // namespace posenc::cpu_detail
