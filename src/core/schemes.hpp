// The frequency-scheme registry: one row per Scaling with everything about that scheme (names, config keys, validation, tables, description, call dependence); everything else reads it.
//
// Adding a scheme is adding a row to schemes.cpp (plus the Scaling value in rope.hpp and a
// realistic spec in tests/support/specs.hpp): spec validation and describe(), compute_frequencies,
// config ingestion, both engines and `posenc info` go through the row, and tests/test_schemes.cpp
// runs every row through the reference, both engines and the float64 reference.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/hf_arithmetic.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail {

/// How a scheme's table depends on the call (`seq_len` = the call's largest position + 1).
enum class CallTable : std::uint8_t {
  fixed,       ///< one table for every call
  short_long,  ///< one table up to the threshold, a second fixed one above it (longrope)
  grows,       ///< the init table up to the threshold, one per seq_len above it (dynamic NTK)
};

/// One parameter of a scheme as describe() and error messages show it.
struct SchemeParameter {
  std::string name;  ///< the ScalingParams field ("factor", "original_max_position_embeddings")
  std::string text;  ///< its value ("4", "max_pos/original_max", "48 values")
};

struct SchemeRow {
  Scaling scaling;
  std::string_view name;     ///< to_string(scaling)
  std::string_view summary;  ///< one line for describe() / `posenc info`: what the scheme computes

  // ---- config.json (model_config.cpp) -------------------------------------------------------
  std::vector<std::string_view> rope_types = {};     ///< the rope_type names that select it (none: API only)
  std::vector<std::string_view> config_keys = {};    ///< rope-dict keys it accepts besides the common ones
  std::vector<std::string_view> required_keys = {};  ///< the ones a config must give
  bool uses_original_max = false;  ///< reads original_max_position_embeddings (top level, dict, or max_position_embeddings)
  bool derives_factor = false;     ///< an absent factor is max_position_embeddings / original_max_position_embeddings
  bool uses_max_position = false;  ///< needs the config's max_position_embeddings

  // ---- the table ----------------------------------------------------------------------------
  CallTable call_table = CallTable::fixed;
  /// CallTable::short_long / grows: the largest seq_len the init table serves.
  std::int64_t (*threshold)(const ScalingParams&) = nullptr;
  /// inv_freq (frequency_dim()/2 float32 values) and the scheme's attention factor for a call
  /// whose largest position is seq_len - 1 (absent: the table at init), with the powers of one
  /// arithmetic (hf_arithmetic.hpp). No spec override applied.
  FrequencyTable (*table)(const RopeSpec&, std::optional<std::int64_t> seq_len, const TorchPowers& powers) = nullptr;

  // ---- validation and text (spec.cpp) -------------------------------------------------------
  /// The scheme's own checks of a spec whose common fields have passed (throws Error).
  void (*validate)(const RopeSpec&) = nullptr;
  /// Its parameters, for describe() and for messages about the tables it gives.
  std::vector<SchemeParameter> (*parameters)(const ScalingParams&) = nullptr;
};

/// Every row, in Scaling order.
std::span<const SchemeRow> scheme_rows();

/// The row of `scaling`, or nullptr for a value outside the enum.
const SchemeRow* find_scheme_row(Scaling scaling) noexcept;

/// The row of `scaling`; throws Error(invalid_argument) for a value outside the enum.
const SchemeRow& scheme_row(Scaling scaling);

/// The row whose rope_types hold `rope_type`, or nullptr.
const SchemeRow* scheme_for_rope_type(std::string_view rope_type);

/// Whether `scaling`'s table is re-selected per call from the largest position.
inline bool table_depends_on_positions(Scaling scaling) {
  return scheme_row(scaling).call_table != CallTable::fixed;
}

}  // namespace posenc::detail
