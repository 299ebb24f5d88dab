// Frequency schemes against transformers 5.17 reference vectors, HF's own edge rules, and a long double model.
//
// tests/data/rope_vectors_tf5.17.json is a copy of reference/data/rope_vectors_tf5.17.json
// (transformers 5.17.0, torch 2.11.0+cu130, CPU capability AVX512). With HfArithmetic::torch_cpu
// at that capability posenc reproduces every entry; the exact arithmetic (correctly rounded pow)
// stays within one float32 ulp of them. tests/test_hf_arithmetic.cpp covers the whole grid of
// schemes x thetas x dims.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/frequencies_detail.hpp"
#include "core/hf_arithmetic.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace {

using posenc::FrequencyTable;
using posenc::HfArithmetic;
using posenc::RopeSpec;
using posenc::Scaling;
namespace detail = posenc::detail;

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// Distance in float32 ulps between two finite floats of the same sign.
std::int64_t ulp_distance(float a, float b) {
  return std::llabs(static_cast<std::int64_t>(bits(a)) - static_cast<std::int64_t>(bits(b)));
}

const nlohmann::json& vectors() {
  static const nlohmann::json data = [] {
    const std::string path = std::string(POSENC_TEST_DATA_DIR) + "/rope_vectors_tf5.17.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    return nlohmann::json::parse(in);
  }();
  return data;
}

/// The float32 values the fixture stores as Python float.hex() strings.
std::vector<float> hex_floats(const nlohmann::json& list) {
  std::vector<float> out;
  for (const auto& s : list) out.push_back(static_cast<float>(std::strtod(s.get<std::string>().c_str(), nullptr)));
  return out;
}

/// The spec of one fixture entry, read from its HF rope_parameters (factor lists of the synthetic
/// longrope vectors are the ones the generator used: short 1 + 0.01 i, long 1 + 0.5 i).
RopeSpec spec_of(const nlohmann::json& entry) {
  const nlohmann::json& rp = entry.at("rope_parameters");
  RopeSpec s;
  s.head_dim = entry.at("head_dim").get<std::int64_t>();
  s.theta = rp.at("rope_theta").get<double>();
  s.params.max_position_embeddings = entry.at("max_pos").get<std::int64_t>();
  const std::string type = rp.at("rope_type").get<std::string>();
  if (type == "linear") s.scaling = Scaling::linear;
  else if (type == "dynamic") s.scaling = Scaling::dynamic;
  else if (type == "yarn") s.scaling = Scaling::yarn;
  else if (type == "longrope") s.scaling = Scaling::longrope;
  else if (type == "llama3") s.scaling = Scaling::llama3;
  else throw std::runtime_error("fixture rope_type " + type);
  s.params.factor = rp.value("factor", 0.0);  // absent: derived from max_pos / OMP (HF 5.x)
  s.params.original_max_position_embeddings = rp.value("original_max_position_embeddings", std::int64_t{0});
  s.params.beta_fast = rp.value("beta_fast", 32.0);
  s.params.beta_slow = rp.value("beta_slow", 1.0);
  s.params.mscale = rp.value("mscale", 0.0);
  s.params.mscale_all_dim = rp.value("mscale_all_dim", 0.0);
  s.params.truncate = rp.value("truncate", true);
  s.params.low_freq_factor = rp.value("low_freq_factor", 1.0);
  s.params.high_freq_factor = rp.value("high_freq_factor", 4.0);
  if (s.scaling == Scaling::longrope) {
    for (int i = 0; i < s.head_dim / 2; ++i) {
      s.params.short_factor.push_back(1 + 0.01 * i);
      s.params.long_factor.push_back(1 + 0.5 * i);
    }
  }
  return s;
}

struct ReferenceCase {
  const char* key;
  const char* params_key;  // longrope_long carries no parameters of its own
  std::optional<std::int64_t> seq_len;
};
constexpr ReferenceCase reference_cases[] = {
    {"llama31", "llama31", {}},       {"qwen3_yarn4", "qwen3_yarn4", {}}, {"gptoss_yarn", "gptoss_yarn", {}},
    {"linear4", "linear4", {}},       {"dynamic2", "dynamic2", 8192},     {"longrope", "longrope", {}},
    {"longrope_long", "longrope", 4097}, {"dsv3", "dsv3", {}},
};

/// Entries of `ours` more than `max_ulps` from the reference fail; returns how many were bit-exact.
int compare_to_reference(const std::string& name, const std::vector<float>& ours, const std::vector<float>& ref,
                         std::int64_t max_ulps) {
  int exact = 0;
  EXPECT_EQ(ours.size(), ref.size()) << name << ": table length";
  for (std::size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    const std::int64_t d = ulp_distance(ours[i], ref[i]);
    EXPECT_LE(d, max_ulps) << name << " inv_freq[" << i << "]: ours " << std::hexfloat << ours[i] << ", HF " << ref[i]
                           << std::defaultfloat << " (" << d << " ulps apart)";
    if (d == 0) ++exact;
  }
  return exact;
}

TEST(FrequenciesReference, TorchCpuReproducesEveryVector) {
  // The vectors come from torch at CPU capability AVX512: its pow kernel runs SLEEF on blocks of 32
  // entries and glibc on the rest, which torch_cpu reproduces at that capability.
  if (detail::torch_cpu_capability() != detail::TorchCpuCapability::avx512)
    GTEST_SKIP() << "the reference vectors were made at torch CPU capability AVX512, which this CPU lacks "
                    "(or ATEN_CPU_CAPABILITY lowers)";
  for (const ReferenceCase& c : reference_cases) {
    RopeSpec spec = spec_of(vectors().at(c.params_key));
    spec.hf_arithmetic = HfArithmetic::torch_cpu;
    const std::vector<float> ref = hex_floats(vectors().at(c.key).at("inv_freq"));
    const int exact = compare_to_reference(c.key, posenc::compute_frequencies(spec, c.seq_len).inv_freq, ref, 0);
    EXPECT_EQ(exact, static_cast<int>(ref.size())) << c.key;
  }
}

TEST(FrequenciesReference, ExactArithmeticWithinOneUlp) {
  int exact = 0;
  int total = 0;
  for (const ReferenceCase& c : reference_cases) {
    RopeSpec spec = spec_of(vectors().at(c.params_key));
    spec.hf_arithmetic = HfArithmetic::exact;
    const std::vector<float> ref = hex_floats(vectors().at(c.key).at("inv_freq"));
    exact += compare_to_reference(c.key, posenc::compute_frequencies(spec, c.seq_len).inv_freq, ref, 1);
    total += static_cast<int>(ref.size());
  }
  std::cout << "[ info     ] exact arithmetic: " << exact << " of " << total << " entries equal torch's CPU tables\n";
  EXPECT_LT(exact, total) << "correctly rounded pow equals SLEEF/glibc everywhere: these vectors no longer "
                             "tell the arithmetics apart";
}

TEST(FrequenciesReference, AttentionFactorsMatch) {
  for (const char* key : {"llama31", "qwen3_yarn4", "gptoss_yarn", "linear4", "dynamic2", "longrope", "dsv3"}) {
    const nlohmann::json& entry = vectors().at(key);
    const double expected = entry.at("attention_factor").get<double>();
    const double got = posenc::compute_frequencies(spec_of(entry)).attention_factor;
    EXPECT_NEAR(got, expected, 1e-15 * expected) << key;
  }
}

// ---- the worked values of docs/NUMERICS.md §5.2 ---------------------------------------------

TEST(FrequenciesYarn, CorrectionRanges) {
  // (a) DeepSeek-V3 rope part: R 64, theta 1e4, OMP 4096, beta 32/1 -> [10, 23].
  auto r = detail::yarn_correction_range(64, 1e4, 4096, 32, 1, true);
  EXPECT_EQ(r.low, 10.0) << "DeepSeek-V3";
  EXPECT_EQ(r.high, 23.0) << "DeepSeek-V3";
  // Qwen3 yarn 4x: R 128, theta 1e6, OMP 32768 -> [23, 40].
  r = detail::yarn_correction_range(128, 1e6, 32768, 32, 1, true);
  EXPECT_EQ(r.low, 23.0) << "Qwen3";
  EXPECT_EQ(r.high, 40.0) << "Qwen3";
  // gpt-oss, untruncated: R 64, theta 1.5e5, OMP 4096 -> [8.0928, 17.3980].
  r = detail::yarn_correction_range(64, 1.5e5, 4096, 32, 1, false);
  EXPECT_NEAR(r.low, 8.0928, 5e-5) << "gpt-oss";
  EXPECT_NEAR(r.high, 17.3980, 5e-5) << "gpt-oss";
  // Clamped to [0, R - 1].
  r = detail::yarn_correction_range(8, 1e4, 1e9, 32, 1, true);
  EXPECT_EQ(r.high, 7.0) << "high clamps to R - 1";
  r = detail::yarn_correction_range(64, 1e4, 16, 32, 1, true);
  EXPECT_EQ(r.low, 0.0) << "low clamps to 0";
}

TEST(FrequenciesYarn, DeepSeekSoftmaxMultiplier) {
  // (b) qk_head_dim^-0.5 is multiplied by get_mscale(factor, mscale_all_dim)^2.
  posenc::ScalingParams v3;
  v3.factor = 40;
  v3.mscale = 1.0;
  v3.mscale_all_dim = 1.0;
  EXPECT_NEAR(detail::deepseek_softmax_scale_multiplier(v3), 1.8738542, 5e-8) << "DeepSeek-V3";
  posenc::ScalingParams v2 = v3;
  v2.mscale = 0.707;
  v2.mscale_all_dim = 0.707;
  EXPECT_NEAR(detail::deepseek_softmax_scale_multiplier(v2), 1.5896262, 5e-8) << "DeepSeek-V2";
  v2.mscale_all_dim = 0.0;
  EXPECT_EQ(detail::deepseek_softmax_scale_multiplier(v2), 1.0) << "no mscale_all_dim: no multiplier";
}

TEST(FrequenciesLlama3, BandBoundaries) {
  // (c) Llama 3.1 (R 128, theta 5e5, factor 8, OMP 8192): 0..28 unchanged, 29..34 smoothed, 35.. /8.
  RopeSpec spec;
  spec.head_dim = 128;
  spec.theta = 5e5;
  spec.scaling = Scaling::llama3;
  spec.params.factor = 8;
  spec.params.original_max_position_embeddings = 8192;
  const std::vector<float> scaled = posenc::compute_frequencies(spec).inv_freq;
  const std::vector<float> plain = detail::default_inv_freq(5e5, 128, detail::host_powers(HfArithmetic::torch_cpu));
  ASSERT_EQ(scaled.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    const float divided = plain[static_cast<std::size_t>(i)] / 8.0f;
    if (i <= 28) {
      EXPECT_EQ(bits(scaled[static_cast<std::size_t>(i)]), bits(plain[static_cast<std::size_t>(i)]))
          << "index " << i << " should be unchanged";
    } else if (i <= 34) {
      EXPECT_GT(scaled[static_cast<std::size_t>(i)], divided) << "index " << i << " should be smoothed";
      EXPECT_LT(scaled[static_cast<std::size_t>(i)], plain[static_cast<std::size_t>(i)])
          << "index " << i << " should be smoothed";
    } else {
      EXPECT_EQ(bits(scaled[static_cast<std::size_t>(i)]), bits(divided)) << "index " << i << " should be / 8";
    }
  }
}

TEST(FrequenciesDynamic, GrowsOnlyPastMaxPositions) {
  // (d) HF recomputes theta' from the forward pass's tensor seq_len (float32 ops); its reference
  // script passed a Python int (double ops). For the fixture both give the same theta'.
  RopeSpec spec = spec_of(vectors().at("dynamic2"));
  const detail::TorchPowers& powers = detail::host_powers(HfArithmetic::torch_cpu);  // compute_frequencies' on the host
  const float tensor_theta = detail::dynamic_theta(1e4, 2, 8192, 4096, 128, powers);
  const double python_theta = detail::dynamic_theta_python(1e4, 2, 8192, 4096, 128);
  EXPECT_EQ(bits(tensor_theta), bits(static_cast<float>(python_theta)))
      << "theta': float32 path " << std::hexfloat << tensor_theta << ", Python path " << python_theta;
  EXPECT_NEAR(python_theta, 1e4 * std::pow(3.0, 128.0 / 126.0), 1e-9 * python_theta);
  const std::vector<float> at_8192 = posenc::compute_frequencies(spec, 8192).inv_freq;
  const std::vector<float> expected = detail::inv_freq_for_base(tensor_theta, 128, powers);
  for (std::size_t i = 0; i < at_8192.size(); ++i)
    EXPECT_EQ(bits(at_8192[i]), bits(expected[i])) << "dynamic table at seq_len 8192, index " << i;

  // seq_len <= max_position_embeddings keeps the init (default) table; one beyond changes it.
  const std::vector<float> plain = detail::default_inv_freq(1e4, 128, powers);
  for (const std::int64_t seq_len : {std::int64_t{1}, std::int64_t{4096}}) {
    const std::vector<float> t = posenc::compute_frequencies(spec, seq_len).inv_freq;
    for (std::size_t i = 0; i < t.size(); ++i)
      ASSERT_EQ(bits(t[i]), bits(plain[i])) << "seq_len " << seq_len << " index " << i;
  }
  const std::vector<float> init = posenc::compute_frequencies(spec).inv_freq;
  EXPECT_EQ(bits(init[1]), bits(plain[1])) << "no seq_len: the init table";
  const std::vector<float> grown = posenc::compute_frequencies(spec, 4097).inv_freq;
  EXPECT_LT(grown[63], plain[63]) << "seq_len 4097 must lower the frequencies";
  EXPECT_EQ(bits(grown[0]), bits(1.0f)) << "inv_freq[0] is always 1";
}

TEST(FrequenciesYarn, ExplicitFactorWinsAndMissingFactorIsDerived) {
  // (e) transformers >= 4.56 / 5.x: an explicit factor is used even when max_pos / OMP differs.
  RopeSpec spec = spec_of(vectors().at("qwen3_yarn4"));
  const std::vector<float> at_131072 = posenc::compute_frequencies(spec).inv_freq;
  spec.params.max_position_embeddings = 40960;  // Qwen3-8B's config value
  const FrequencyTable at_40960 = posenc::compute_frequencies(spec);
  for (std::size_t i = 0; i < at_131072.size(); ++i)
    EXPECT_EQ(bits(at_40960.inv_freq[i]), bits(at_131072[i])) << "index " << i;
  // factor 0 means "not given": max_pos / OMP = 131072 / 32768 = 4, the same table.
  spec.params.factor = 0;
  spec.params.max_position_embeddings = 131072;
  const FrequencyTable derived = posenc::compute_frequencies(spec);
  for (std::size_t i = 0; i < at_131072.size(); ++i)
    EXPECT_EQ(bits(derived.inv_freq[i]), bits(at_131072[i])) << "derived factor, index " << i;
  EXPECT_EQ(derived.attention_factor, at_40960.attention_factor);
}

TEST(FrequenciesYarn, FactorAtMostOneGivesUnitAttention) {
  // (f) get_mscale(s) = 1 for s <= 1.
  for (const double factor : {1.0, 0.5}) {
    RopeSpec spec = spec_of(vectors().at("qwen3_yarn4"));
    spec.params.factor = factor;
    EXPECT_EQ(posenc::compute_frequencies(spec).attention_factor, 1.0) << "factor " << factor;
  }
}

// ---- other scheme rules ------------------------------------------------------------------------

TEST(FrequenciesLongrope, SwitchesToLongFactorsPastOriginalMax) {
  const RopeSpec spec = spec_of(vectors().at("longrope"));
  const std::vector<float> short_ref = hex_floats(vectors().at("longrope").at("inv_freq"));
  const std::vector<float> long_ref = hex_floats(vectors().at("longrope_long").at("inv_freq"));
  EXPECT_EQ(bits(posenc::compute_frequencies(spec, 4096).inv_freq[47]), bits(short_ref[47]))
      << "seq_len == OMP still uses short factors";
  EXPECT_EQ(bits(posenc::compute_frequencies(spec, 4097).inv_freq[47]), bits(long_ref[47]))
      << "seq_len == OMP + 1 uses long factors";
  EXPECT_EQ(bits(posenc::compute_frequencies(spec).inv_freq[47]), bits(short_ref[47])) << "init uses short factors";
}

TEST(FrequenciesOverrides, TableIsVerbatimAndAttentionFactorOverrides) {
  RopeSpec spec;
  spec.head_dim = 8;
  spec.scaling = Scaling::table;
  spec.params.inv_freq = {1.0f, 0.3f, 1e-7f, 0.123456789f};
  spec.attention_factor = 0.75;
  const FrequencyTable t = posenc::compute_frequencies(spec);
  ASSERT_EQ(t.inv_freq.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i)
    EXPECT_EQ(bits(t.inv_freq[i]), bits(spec.params.inv_freq[i])) << "table entry " << i;
  EXPECT_EQ(t.attention_factor, 0.75);

  RopeSpec yarn = spec_of(vectors().at("dsv3"));
  yarn.attention_factor = 1.25;
  EXPECT_EQ(posenc::compute_frequencies(yarn).attention_factor, 1.25) << "explicit factor beats mscale";
}

TEST(FrequenciesErrors, InvalidSpecAndSeqLenThrow) {
  RopeSpec spec;
  spec.head_dim = 7;
  EXPECT_THROW(posenc::compute_frequencies(spec), posenc::Error);
  spec.head_dim = 64;
  try {
    posenc::compute_frequencies(spec, 0);
    FAIL() << "seq_len 0 accepted";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("seq_len = 0"), std::string::npos) << e.what();
  }
}

// ---- independent model of the default scheme ---------------------------------------------------

TEST(FrequenciesDefault, WithinTwoUlpsOfLongDouble) {
  // inv_freq[i] = 1 / theta^e_i. HF rounds e_i = 2i/R to float32 first; for R a power of two that is
  // exact, otherwise (Phi-3's 96) the rounded exponent alone moves the value by several ulps, so
  // the model uses the same float32 exponent. powf (<= 1 ulp) and the reciprocal (0.5 ulp) leave
  // at most 2 ulps, in both host arithmetics.
  for (const HfArithmetic arithmetic : {HfArithmetic::exact, HfArithmetic::torch_cpu})
  for (const double theta : {1e4, 1.5e5, 5e5, 1e6, 5e6, 1e8}) {
    for (const std::int64_t r : {std::int64_t{2}, std::int64_t{32}, std::int64_t{64}, std::int64_t{96},
                                 std::int64_t{128}, std::int64_t{256}}) {
      const std::vector<float> inv = detail::default_inv_freq(theta, r, detail::host_powers(arithmetic));
      ASSERT_EQ(inv.size(), static_cast<std::size_t>(r / 2));
      for (std::int64_t i = 0; i < r / 2; ++i) {
        const float e = static_cast<float>(2 * i) / static_cast<float>(r);
        if ((r & (r - 1)) == 0) {
          ASSERT_EQ(static_cast<long double>(e), 2.0L * i / r) << "exact exponent";
        }
        const long double model = 1.0L / std::pow(static_cast<long double>(theta), static_cast<long double>(e));
        const float rounded = static_cast<float>(model);
        EXPECT_LE(ulp_distance(inv[static_cast<std::size_t>(i)], rounded), 2)
            << "theta " << theta << " R " << r << " i " << i << ": " << std::hexfloat
            << inv[static_cast<std::size_t>(i)] << " vs " << rounded;
      }
    }
  }
}

TEST(FrequenciesExact, PowersAreCorrectlyRounded) {
  // exact's powers are the double pow rounded once; against long double, every entry of the grid
  // of thetas x even dims to 1024 must be the correctly rounded float32 value.
  for (const double theta : {1e4, 1e5, 1.5e5, 5e5, 1e6, 5e6, 1e7, 1e8}) {
    const auto base = static_cast<float>(theta);
    for (std::int64_t d = 2; d <= 1024; d += 2) {
      const std::vector<float> p = detail::exact_powers(base, d);
      for (std::int64_t i = 0; i < d / 2; ++i) {
        const long double e = detail::rope_exponent(i, d);
        const auto want = static_cast<float>(std::pow(static_cast<long double>(base), e));
        ASSERT_EQ(bits(p[static_cast<std::size_t>(i)]), bits(want)) << "theta " << theta << " d " << d << " i " << i;
      }
    }
  }
}

TEST(FrequenciesTorchCpu, TailRuleOfEachCapability) {
  // torch's CPU pow: SLEEF on whole blocks of 2 vectors (32 entries at AVX-512, 16 at AVX2), glibc
  // powf on the rest, glibc everywhere at the baseline. For theta 1e8 and d 96 (48 entries) SLEEF
  // and glibc differ at entries 10 and 33: 10 lies in a SLEEF block at both widths, 33 in
  // AVX-512's glibc tail but in AVX2's third block.
  const float base = 1e8f;
  const std::vector<float> glibc = detail::torch_cpu_powers(base, 96, detail::TorchCpuCapability::baseline);
  for (std::int64_t i = 0; i < 48; ++i)
    ASSERT_EQ(bits(glibc[static_cast<std::size_t>(i)]), bits(std::pow(base, detail::rope_exponent(i, 96)))) << i;
  if (detail::torch_cpu_capability() == detail::TorchCpuCapability::baseline)
    GTEST_SKIP() << "this CPU has no FMA: SLEEF's FMA powf cannot run (torch uses glibc's everywhere here)";
  const std::vector<float> avx512 = detail::torch_cpu_powers(base, 96, detail::TorchCpuCapability::avx512);
  const std::vector<float> avx2 = detail::torch_cpu_powers(base, 96, detail::TorchCpuCapability::avx2);
  EXPECT_NE(bits(avx512[10]), bits(glibc[10]));
  EXPECT_EQ(bits(avx512[10]), bits(avx2[10])) << "SLEEF gives the same bits at both widths";
  EXPECT_EQ(bits(avx512[33]), bits(glibc[33])) << "AVX-512's tail is glibc's";
  EXPECT_NE(bits(avx2[33]), bits(glibc[33])) << "AVX2's third block is SLEEF's";
  for (std::int64_t i = 32; i < 48; ++i)
    EXPECT_EQ(bits(avx512[static_cast<std::size_t>(i)]), bits(glibc[static_cast<std::size_t>(i)])) << "tail " << i;
}

}  // namespace

