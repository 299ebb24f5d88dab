// The CLI's independent float64 RoPE and the comparison that `posenc run` reports (max error, ulps, bound).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "device.hpp"
#include "posenc/rope.hpp"

namespace posenc::cli {

/// Result of comparing rotated tensors with the float64 reference.
struct VerifyStats {
  std::int64_t values = 0;     ///< elements compared
  std::int64_t failures = 0;   ///< elements whose error exceeds their bound
  double max_abs_error = 0.0;  ///< max |out - ref|
  double max_ulps = 0.0;       ///< max |out - ref| / ulp_dtype(pair magnitude)
  double max_bound_ratio = 0.0;  ///< max |out - ref| / bound (> 1 means a failure)
  std::string worst;           ///< where max_bound_ratio was reached, with got/want
};

/// The error bound `verify_sample` allows, in words (printed by `posenc run`).
std::string error_bound_text(const RopeSpec& spec);

/// Rotates the sampled `tokens` of `input` in float64 (inv_freq widened from `table`, angle and
/// cos/sin in double) and compares with `output`, element by element, Q and K, every head.
///
/// Bound per element, with r = attention_factor * |(a, b)| the magnitude of its pair:
///   4 ulp_dtype(r) + 8 * 2^-24 * r   (rounding to the dtype; float32 cos/sin and products)
///   + 2^-23 * r * |angle|            (hf_* numerics only: HF forms the angle in float32)
/// Elements outside the rotary window must be bit-identical to the input.
VerifyStats verify_sample(const RopeSpec& spec, const FrequencyTable& table, const HostBatch& input,
                          const HostBatch& output, std::span<const std::int64_t> tokens);

}  // namespace posenc::cli
