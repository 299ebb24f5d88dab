// The frequency-scheme registry (src/core/schemes.cpp): every row is consistent, and every scheme runs through the reference (against float64) and the CPU engine (bit for bit), below and above a call-dependent threshold. A new row is covered here with no new test code; test_gpu_engine runs every row on the GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/schemes.hpp"
#include "posenc/cpu.hpp"
#include "posenc/model_config.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/reference64.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)
using detail::CallTable;
using detail::SchemeRow;

// One row per Scaling value, in enum order, each complete; the names, the public SchemeInfo and the
// config names all come from the row.
TEST(SchemeRegistry, OneCompleteRowPerScheme) {
  const auto rows = detail::scheme_rows();
  ASSERT_FALSE(rows.empty());
  std::vector<std::string_view> rope_types;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const SchemeRow& row = rows[i];
    SCOPED_TRACE(std::string(row.name));
    EXPECT_EQ(static_cast<std::size_t>(row.scaling), i) << "rows are in Scaling order, one per value";
    EXPECT_EQ(&detail::scheme_row(row.scaling), &row);
    EXPECT_STREQ(to_string(row.scaling), std::string(row.name).c_str());
    EXPECT_FALSE(row.summary.empty());
    EXPECT_NE(row.table, nullptr);
    EXPECT_NE(row.validate, nullptr);
    EXPECT_NE(row.parameters, nullptr);
    EXPECT_EQ(row.call_table != CallTable::fixed, row.threshold != nullptr)
        << "a call-dependent table needs the threshold up to which the init table holds";
    for (std::string_view key : row.required_keys) {
      EXPECT_NE(std::find(row.config_keys.begin(), row.config_keys.end(), key), row.config_keys.end())
          << "required key " << key << " is not among the accepted ones";
    }
    for (std::string_view name : row.rope_types) {
      EXPECT_EQ(detail::scheme_for_rope_type(name), &row) << name;
      EXPECT_EQ(std::count(rope_types.begin(), rope_types.end(), name), 0) << name << " names two schemes";
      rope_types.push_back(name);
    }
    const SchemeInfo info = scheme_info(row.scaling);
    EXPECT_EQ(info.name, row.name);
    EXPECT_EQ(info.summary, row.summary);
    EXPECT_EQ(info.depends_on_call, row.call_table != CallTable::fixed);
    EXPECT_EQ(info.rope_types.size(), row.rope_types.size());
  }
  EXPECT_EQ(all_schemes.size(), rows.size());
  EXPECT_EQ(detail::scheme_for_rope_type("proportional"), nullptr);
  EXPECT_THROW((void)detail::scheme_row(static_cast<Scaling>(rows.size())), Error);
  EXPECT_STREQ(to_string(static_cast<Scaling>(rows.size())), "unknown");
}

// Every rope_type of every row selects that row's scheme from a config.json, with its required
// keys given (values from the scheme's realistic spec where it has them).
TEST(SchemeRegistry, EveryRopeTypeLoadsFromAConfig) {
  for (const SchemeRow& row : detail::scheme_rows()) {
    const RopeSpec fixture = scheme_spec(row.scaling, 128);
    for (std::string_view name : row.rope_types) {
      SCOPED_TRACE(std::string(name));
      std::string dict = R"("rope_type": ")" + std::string(name) + "\"";
      for (std::string_view key : row.required_keys) {
        std::string value;
        if (key == "factor") value = std::to_string(fixture.params.factor);
        if (key == "low_freq_factor") value = std::to_string(fixture.params.low_freq_factor);
        if (key == "high_freq_factor") value = std::to_string(fixture.params.high_freq_factor);
        if (key == "short_factor" || key == "long_factor") {
          const std::vector<double>& list = key == "short_factor" ? fixture.params.short_factor : fixture.params.long_factor;
          value = "[";
          for (std::size_t i = 0; i < list.size(); ++i) value += (i ? ", " : "") + std::to_string(list[i]);
          value += "]";
        }
        ASSERT_FALSE(value.empty()) << "no value for required key " << key << ": extend this test";
        dict += ", \"" + std::string(key) + "\": " + value;
      }
      const std::string config = R"({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
          "num_key_value_heads": 8, "max_position_embeddings": 131072, "rope_theta": 10000, "rope_scaling": {)" +
                                 dict + "}}";
      const ModelConfig loaded = parse_model_config(config, "registry row");
      EXPECT_EQ(loaded.spec().scaling, row.scaling);
    }
  }
}

/// Positions for one call: 0, the top of [lo, hi] and random ones between.
std::vector<std::int64_t> call_positions(std::int64_t lo, std::int64_t hi, std::int64_t count, std::uint64_t seed) {
  std::vector<std::int64_t> p = random_positions(count, hi - lo + 1, seed);
  for (std::int64_t& v : p) v += lo;
  p[1] = hi;
  return p;
}

// Every scheme x pairing x numerics x dtype through apply_reference (within the float64 bound) and
// the CPU engine (its bits), with a call below the threshold and one above for call-dependent
// tables (one engine serves both, as in serving).
TEST(SchemeRegistry, EverySchemeThroughReferenceAndCpuEngine) {
  std::uint64_t seed = 31;
  for (const SchemeRow& row : detail::scheme_rows()) {
    for (const Pairing pairing : all_pairings) {
      for (const Numerics numerics : all_numerics) {
        const RopeSpec spec = scheme_spec(row.scaling, 96, 64, 16, pairing, numerics);
        const CpuEngine engine(spec, CpuOptions{2});
        std::vector<std::vector<std::int64_t>> calls;
        const std::int64_t threshold = row.threshold != nullptr ? row.threshold(spec.params) : 0;
        if (threshold > 0) calls.push_back(call_positions(0, threshold - 1, 9, ++seed));
        calls.push_back(call_positions(0, std::max<std::int64_t>(threshold, 1 << 20), 9, ++seed));
        for (const DType dtype : all_dtypes) {
          for (const std::vector<std::int64_t>& positions : calls) {
            SCOPED_TRACE(case_name(spec, dtype) + " largest position " + std::to_string(positions[1]));
            const auto tokens = static_cast<std::int64_t>(positions.size());
            const HostPositions pos(spec, positions);
            HostTensor src(dtype, tokens, 3, spec.head_dim);
            fill_random(src.view, ++seed);
            HostTensor ref(dtype, tokens, 3, spec.head_dim);
            HostTensor eng(dtype, tokens, 3, spec.head_dim);
            apply_reference(spec, RopeArgs{ref.view, {}, src.cview(), {}, pos.view(), {}});
            engine.apply(RopeArgs{eng.view, {}, src.cview(), {}, pos.view(), {}});
            EXPECT_TRUE(bits_equal(ref.cview(), eng.cview())) << "CPU engine differs from the reference";

            const FrequencyTable table = compute_frequencies(spec, positions[1] + 1);
            const double af = spec.attention_factor.value_or(table.attention_factor);
            const Expected64 expected =
                rotate64(spec, pair_axes(spec, table), af, angle_model_for(numerics), src.cview(), pos.view());
            EXPECT_TRUE(near64(expected, ref.cview(), dtype, tolerance_ulps(dtype, numerics, af)));
          }
        }
      }
    }
  }
}

}  // namespace
