// The checks RopeSpec::validate and the scheme rows (schemes.cpp) apply to single fields: each throws Error(invalid_argument) "RopeSpec.<field> = <value>: <limit>".
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "posenc/rope.hpp"

namespace posenc::detail {

[[noreturn]] void reject(const std::string& field, const std::string& value, const std::string& limit);

/// Finite and > 0.
void require_positive(const std::string& field, double v);
/// > 0.
void require_positive(const std::string& field, std::int64_t v);
/// Finite and >= 0.
void require_non_negative(const std::string& field, double v);

inline constexpr double float32_min = std::numeric_limits<float>::min();  ///< smallest normal float32
inline constexpr double float32_max = std::numeric_limits<float>::max();

/// A value the schemes round to float32 (theta, factors) must be a normal float32: below the
/// smallest normal it rounds to 0 or a subnormal and a division by it is inf; above the largest it
/// rounds to inf.
void require_float32(const std::string& field, double v);

/// Context lengths the schemes divide and take logarithms of in double: exact there up to 2^53,
/// which also keeps `length + 1` (the first seq_len past it) from overflowing.
inline constexpr std::int64_t max_context = std::int64_t{1} << 53;
void require_context(const std::string& field, std::int64_t v);

/// yarn and longrope accept factor 0 as "derive it as max_position_embeddings / original_max"
/// (what HF does when the config has no factor), so that path needs max_position_embeddings.
/// `in_float32`: the scheme rounds the factor to float32 (yarn), not only uses it in double (longrope).
void require_factor_or_derivable(const ScalingParams& p, bool in_float32);

/// A per-frequency list (longrope factors, a table's inv_freq): `expected` finite entries > 0;
/// factors (double) must also be normal float32 values.
void require_list(const std::string& field, const std::vector<double>& values, std::int64_t expected, Pairing pairing);
void require_list(const std::string& field, const std::vector<float>& values, std::int64_t expected, Pairing pairing);

}  // namespace posenc::detail
