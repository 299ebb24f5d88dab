// HfArithmetic: the CPU engine with torch_cpu against transformers' own tables and outputs on a CPU (every scheme x theta x dim), the exact arithmetic, and the combinations an engine refuses.
//
// tests/golden/arithmetic/torch_cpu was written by scripts/golden/arithmetic_fixtures.py with
// transformers 5.17 / torch 2.11 on an x86-64 CPU (its meta.json names the CPU capability). For
// every scheme (none, linear, dynamic, yarn, longrope, llama3) x theta (1e4 .. 1e8) x rotary dim
// (16 .. 256) it holds the inv_freq of each call (dynamic / LongRoPE: below, just above, far
// above and below their threshold again) and the digests of Q and K rotated by
// LlamaRotaryEmbedding + apply_rotary_pos_emb at about 2100 positions reaching 2^20 - 1, in
// bfloat16, float16 and float32. Inputs come from hf_rotary.act_input, recomputed here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/frequencies_detail.hpp"
#include "core/hf_arithmetic.hpp"
#include "npy.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"
#include "support/host_tensor.hpp"
#include "support/trig_fingerprint.hpp"

namespace {

using posenc::CpuEngine;
using posenc::CpuOptions;
using posenc::DType;
using posenc::HfArithmetic;
using posenc::IndexType;
using posenc::RopeArgs;
using posenc::RopeSpec;
using posenc::Scaling;
using posenc::test::HostPositions;
using posenc::test::HostTensor;
namespace detail = posenc::detail;

const std::filesystem::path fixture_dir = std::filesystem::path(POSENC_GOLDEN_DIR) / "arithmetic" / "torch_cpu";

struct Fixture {
  nlohmann::json meta;
  std::vector<float> inv_freq;
  std::vector<std::int64_t> positions;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture x;
    std::ifstream in(fixture_dir / "meta.json");
    if (!in) throw std::runtime_error("cannot open " + (fixture_dir / "meta.json").string());
    x.meta = nlohmann::json::parse(in);
    const posenc::cli::NpyArray inv = posenc::cli::read_npy((fixture_dir / "inv_freq.npy").string());
    x.inv_freq.resize(static_cast<std::size_t>(inv.count()));
    std::memcpy(x.inv_freq.data(), inv.data.data(), x.inv_freq.size() * sizeof(float));
    const posenc::cli::NpyArray pos = posenc::cli::read_npy((fixture_dir / "positions.npy").string());
    std::vector<std::int32_t> p32(static_cast<std::size_t>(pos.count()));
    std::memcpy(p32.data(), pos.data.data(), p32.size() * sizeof(std::int32_t));
    x.positions.assign(p32.begin(), p32.end());
    return x;
  }();
  return f;
}

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// The spec of one fixture case (hf_rotary.rope_parameters): head_dim = the rotary dim, half-split
/// pairs, hf_compatible, the scheme's parameters from meta.json.
RopeSpec spec_of(const nlohmann::json& c) {
  const nlohmann::json& meta = fixture().meta;
  const std::string scheme = c.at("scheme").get<std::string>();
  const nlohmann::json& p = meta.at("params").at(scheme);
  RopeSpec s;
  s.head_dim = c.at("dim").get<std::int64_t>();
  s.theta = c.at("theta").get<double>();
  s.scaling = scheme == "none" ? Scaling::none
              : scheme == "linear" ? Scaling::linear
              : scheme == "dynamic" ? Scaling::dynamic
              : scheme == "yarn" ? Scaling::yarn
              : scheme == "longrope" ? Scaling::longrope
                                     : Scaling::llama3;
  s.params.factor = p.value("factor", 1.0);
  s.params.max_position_embeddings = p.at("max_position_embeddings").get<std::int64_t>();
  s.params.original_max_position_embeddings = p.value("original_max_position_embeddings", std::int64_t{0});
  s.params.low_freq_factor = p.value("low_freq_factor", 1.0);
  s.params.high_freq_factor = p.value("high_freq_factor", 4.0);
  if (s.scaling == Scaling::longrope) {
    const nlohmann::json& f = meta.at("longrope_factors").at(std::to_string(s.head_dim));
    s.params.short_factor = f.at("short").get<std::vector<double>>();
    s.params.long_factor = f.at("long").get<std::vector<double>>();
  }
  s.position_limit = std::int64_t{1} << 21;
  return s;
}

std::string case_name(const nlohmann::json& c, const nlohmann::json& call) {
  std::ostringstream o;
  o << c.at("scheme").get<std::string>() << " theta " << c.at("theta").get<double>() << " dim "
    << c.at("dim").get<std::int64_t>() << " call " << call.at("name").get<std::string>() << " (seq_len "
    << call.at("seq_len").get<std::int64_t>() << ")";
  return o.str();
}

std::vector<float> call_table(const nlohmann::json& call) {
  const auto offset = call.at("inv_freq").at("offset").get<std::size_t>();
  const auto count = call.at("inv_freq").at("count").get<std::size_t>();
  return {fixture().inv_freq.begin() + static_cast<std::ptrdiff_t>(offset),
          fixture().inv_freq.begin() + static_cast<std::ptrdiff_t>(offset + count)};
}

std::vector<std::int64_t> call_positions(const nlohmann::json& call) {
  const nlohmann::json& set = fixture().meta.at("positions").at(call.at("positions").get<std::string>());
  const auto offset = set.at("offset").get<std::ptrdiff_t>();
  const auto count = set.at("count").get<std::ptrdiff_t>();
  return {fixture().positions.begin() + offset, fixture().positions.begin() + offset + count};
}

detail::TorchCpuCapability fixture_capability() {
  const std::string c = fixture().meta.at("cpu_capability").get<std::string>();
  if (c == "AVX512") return detail::TorchCpuCapability::avx512;
  if (c == "AVX2") return detail::TorchCpuCapability::avx2;
  return detail::TorchCpuCapability::baseline;
}

const std::map<std::string, DType> fixture_dtypes = {
    {"bfloat16", DType::bf16}, {"float16", DType::f16}, {"float32", DType::f32}};

/// hf_rotary.act_input: element i of [tokens, heads, dim] is (u - 2^23) / 2^23, u the top 24 bits of
/// a 64-bit mix of i + salt; exact in float32, then rounded to the dtype (torch's .to()).
const HostTensor& act_input(DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t dim, std::uint64_t salt) {
  static std::map<std::tuple<DType, std::int64_t, std::int64_t, std::int64_t, std::uint64_t>, HostTensor> made;
  const auto key = std::make_tuple(dtype, tokens, heads, dim, salt);
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  HostTensor t(dtype, tokens, heads, dim);
  std::uint64_t i = 0;
  for (std::int64_t a = 0; a < tokens; ++a) {
    for (std::int64_t h = 0; h < heads; ++h) {
      for (std::int64_t d = 0; d < dim; ++d, ++i) {
        std::uint64_t x = (i + salt) * 0x9E3779B97F4A7C15ull;
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 32;
        const auto u = static_cast<float>(x >> 40);
        const float v = (u - 8388608.0f) / 8388608.0f;
        posenc::test::store_bits(t.view, a, h, d, posenc::test::encode_value(dtype, v));
      }
    }
  }
  return made.emplace(key, std::move(t)).first->second;
}

/// hf_rotary.digest: sum_i bits_i * (2i + 1) * 0x9E3779B97F4A7C15 mod 2^64 over [T, H, D] in order.
std::uint64_t digest(const HostTensor& t) {
  std::uint64_t sum = 0;
  std::uint64_t i = 0;
  const posenc::ConstTensorView v = t.cview();
  for (std::int64_t a = 0; a < v.tokens; ++a)
    for (std::int64_t h = 0; h < v.heads; ++h)
      for (std::int64_t d = 0; d < v.head_dim; ++d, ++i)
        sum += static_cast<std::uint64_t>(posenc::test::load_bits(v, a, h, d)) * ((2 * i + 1) * 0x9E3779B97F4A7C15ull);
  return sum;
}

std::string hex(std::uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(v));
  return text;
}

/// Rotates the fixture's inputs for `call` with `rotate` (an engine's apply or apply_reference) and
/// compares the digests of Q and K in every dtype; returns the number of differing digests, each
/// reported as a test failure when `expect_equal`.
template <typename Rotate>
int compare_outputs(const nlohmann::json& c, const nlohmann::json& call, const Rotate& rotate, const std::string& who,
                    bool expect_equal = true) {
  const std::int64_t dim = c.at("dim").get<std::int64_t>();
  const auto q_heads = fixture().meta.at("q_heads").get<std::int64_t>();
  const auto k_heads = fixture().meta.at("k_heads").get<std::int64_t>();
  const HostPositions pos(call_positions(call), IndexType::i64);
  const auto tokens = static_cast<std::int64_t>(pos.values.size());
  int differ = 0;
  for (const auto& [name, dtype] : fixture_dtypes) {
    const HostTensor& q = act_input(dtype, tokens, q_heads, dim, 1);
    const HostTensor& k = act_input(dtype, tokens, k_heads, dim, 2);
    HostTensor q_out(dtype, tokens, q_heads, dim);
    HostTensor k_out(dtype, tokens, k_heads, dim);
    rotate(RopeArgs{q_out.view, k_out.view, q.cview(), k.cview(), pos.view(), {}});
    const nlohmann::json& want = call.at("digests").at(name);
    const bool q_ok = hex(digest(q_out)) == want.at(0).get<std::string>();
    const bool k_ok = hex(digest(k_out)) == want.at(1).get<std::string>();
    if (expect_equal) {
      EXPECT_TRUE(q_ok && k_ok) << who << ": " << case_name(c, call) << " " << name << ": " << (q_ok ? "" : "Q ")
                                << (k_ok ? "" : "K ") << "differs from transformers";
    }
    differ += (q_ok ? 0 : 1) + (k_ok ? 0 : 1);
  }
  return differ;
}

/// Whether this host's torch_cpu cos/sin are the fixture host's: MKL is linked, and its kernel
/// for this CPU gives the fixture's fingerprint (tests/support/trig_fingerprint.hpp). Else `why`.
bool same_trig(std::string& why) {
  if (!detail::torch_cpu_trig_available()) {
    why = "this build has no Intel MKL (POSENC_MKL=OFF): torch_cpu's cos/sin are unavailable";
    return false;
  }
  const std::string here = posenc::test::torch_cpu_trig_fingerprint();
  const std::string there = fixture().meta.at("cpu_trig_fingerprint").get<std::string>();
  if (here == there) return true;
  why = "MKL's cos/sin kernel on this CPU rounds differently from the fixture host's (fingerprint " + here +
        ", fixture " + there + "): torch on this CPU gives other outputs too; regenerate the fixtures here "
        "(scripts/golden/arithmetic_fixtures.py) to compare";
  return false;
}

TEST(HfArithmeticTorchCpu, FixtureCoversTheGrid) {
  const nlohmann::json& meta = fixture().meta;
  EXPECT_EQ(meta.at("cases").size(), 6u * 7u * 8u) << "schemes x thetas x dims";
  std::int64_t tokens = 0;
  for (const auto& c : meta.at("cases"))
    for (const auto& call : c.at("calls")) tokens += static_cast<std::int64_t>(call_positions(call).size());
  EXPECT_GT(tokens, 1'000'000) << "positions over all calls";
  std::cout << "[ info     ] fixture: transformers " << meta.at("transformers").get<std::string>() << ", torch "
            << meta.at("torch").get<std::string>() << ", CPU capability " << meta.at("cpu_capability").get<std::string>()
            << "; this CPU's torch capability index " << static_cast<int>(detail::torch_cpu_capability()) << '\n';
}

TEST(HfArithmeticTorchCpu, TablesOfEveryCallAtTheFixturesCapability) {
  // torch_cpu's tables as torch computes them at the fixture's CPU capability (this host's may
  // differ: the capability only moves entries between SLEEF and glibc).
  const detail::TorchCpuCapability capability = fixture_capability();
  if (capability != detail::TorchCpuCapability::baseline &&
      detail::torch_cpu_capability() == detail::TorchCpuCapability::baseline)
    GTEST_SKIP() << "this CPU has no FMA, which SLEEF's powf (torch's vectorized pow) needs";
  const detail::TorchPowers powers{
      [capability](float base, std::int64_t d) { return detail::torch_cpu_powers(base, d, capability); },
      detail::host_powers(HfArithmetic::torch_cpu).scalar};
  int bad = 0;
  int total = 0;
  for (const auto& c : fixture().meta.at("cases")) {
    const RopeSpec spec = spec_of(c);
    for (const auto& call : c.at("calls")) {
      const posenc::FrequencyTable t = detail::frequencies_unchecked(spec, call.at("seq_len").get<std::int64_t>(), powers);
      const std::vector<float> want = call_table(call);
      ASSERT_EQ(t.inv_freq.size(), want.size()) << case_name(c, call);
      for (std::size_t i = 0; i < want.size(); ++i, ++total) {
        if (bits(t.inv_freq[i]) == bits(want[i])) continue;
        if (++bad <= 10)
          ADD_FAILURE() << case_name(c, call) << " inv_freq[" << i << "]: posenc " << std::hexfloat << t.inv_freq[i]
                        << ", transformers " << want[i];
      }
      EXPECT_EQ(static_cast<float>(t.attention_factor), static_cast<float>(call.at("attention_factor").get<double>()))
          << case_name(c, call);
    }
  }
  EXPECT_EQ(bad, 0) << bad << " of " << total << " inv_freq entries differ";
  std::cout << "[ info     ] " << total << " inv_freq entries, " << bad << " differ\n";
}

TEST(HfArithmeticTorchCpu, EngineWithItsOwnTablesMatchesTransformers) {
  // The default spec (hf_arithmetic engine = torch_cpu) end to end: tables, per-call selection
  // across the thresholds, MKL cos/sin, the 3-round rotation. The tables depend on the CPU
  // capability, so this needs the fixture's (TablesOfEveryCall... covers the tables elsewhere).
  std::string why;
  if (!same_trig(why)) GTEST_SKIP() << why;
  if (detail::torch_cpu_capability() != fixture_capability())
    GTEST_SKIP() << "the fixture was made at torch CPU capability " << fixture().meta.at("cpu_capability").get<std::string>()
                 << ", this CPU's torch would use another (see TablesOfEveryCallAtTheFixturesCapability and "
                    "CosSinAndRotationWithTheFixturesTables)";
  int differ = 0;
  int calls = 0;
  for (const auto& c : fixture().meta.at("cases")) {
    const CpuEngine engine(spec_of(c), CpuOptions{1});  // one engine through all calls, in order
    for (const auto& call : c.at("calls")) {
      ++calls;
      differ += compare_outputs(c, call, [&](const RopeArgs& a) { engine.apply(a); }, "CpuEngine");
    }
  }
  EXPECT_EQ(differ, 0);
  std::cout << "[ info     ] " << calls << " calls x 3 dtypes x (Q, K): " << differ << " digests differ\n";
}

TEST(HfArithmeticTorchCpu, CosSinAndRotationWithTheFixturesTables) {
  // Host-independent part: the engine given transformers' own table and attention factor for each
  // call (Scaling::table) reproduces its outputs, so MKL's cos/sin and the rotation match.
  std::string why;
  if (!same_trig(why)) GTEST_SKIP() << why;
  int differ = 0;
  for (const auto& c : fixture().meta.at("cases")) {
    for (const auto& call : c.at("calls")) {
      RopeSpec spec = spec_of(c);
      spec.scaling = Scaling::table;
      spec.params.inv_freq = call_table(call);
      spec.attention_factor = call.at("attention_factor").get<double>();
      spec.hf_arithmetic = HfArithmetic::torch_cpu;
      const CpuEngine engine(spec, CpuOptions{2});
      differ += compare_outputs(c, call, [&](const RopeArgs& a) { engine.apply(a); }, "CpuEngine (table)");
    }
  }
  EXPECT_EQ(differ, 0);
}

TEST(HfArithmeticTorchCpu, ReferenceMatchesTransformers) {
  // apply_reference (plain loops) follows the same arithmetic: every scheme and theta at dim 80
  // (AVX-512's pow tail) with the fixture's tables.
  std::string why;
  if (!same_trig(why)) GTEST_SKIP() << why;
  int differ = 0;
  for (const auto& c : fixture().meta.at("cases")) {
    if (c.at("dim").get<std::int64_t>() != 80) continue;
    for (const auto& call : c.at("calls")) {
      RopeSpec spec = spec_of(c);
      spec.scaling = Scaling::table;
      spec.params.inv_freq = call_table(call);
      spec.attention_factor = call.at("attention_factor").get<double>();
      differ += compare_outputs(c, call, [&](const RopeArgs& a) { posenc::apply_reference(spec, a); }, "apply_reference");
    }
  }
  EXPECT_EQ(differ, 0);
}

TEST(HfArithmeticExact, DiffersFromTorchCpuWhereTheLibrariesDo) {
  // The exact arithmetic (correctly rounded pow, cos, sin) is not torch's: on the same tables its
  // outputs differ from transformers' somewhere in every dtype, which is why torch_cpu exists.
  int differ = 0;
  int compared = 0;
  for (const auto& c : fixture().meta.at("cases")) {
    if (c.at("scheme").get<std::string>() != "none" || c.at("dim").get<std::int64_t>() != 128) continue;
    const nlohmann::json& call = c.at("calls").at(0);
    RopeSpec spec = spec_of(c);
    spec.scaling = Scaling::table;
    spec.params.inv_freq = call_table(call);
    spec.hf_arithmetic = HfArithmetic::exact;
    const CpuEngine engine(spec, CpuOptions{2});
    differ += compare_outputs(c, call, [&](const RopeArgs& a) { engine.apply(a); }, "exact", /*expect_equal=*/false);
    compared += 6;
  }
  EXPECT_GT(differ, compared / 2) << "exact matched transformers' CPU outputs: the fixture cannot tell arithmetics apart";
}

// ---- the combinations an engine refuses ---------------------------------------------------------

TEST(HfArithmeticRefusals, CpuEngineRefusesCudasArithmetic) {
  RopeSpec spec;
  spec.head_dim = 64;
  spec.hf_arithmetic = HfArithmetic::torch_cuda;
  try {
    const CpuEngine engine(spec);
    FAIL() << "CpuEngine accepted hf_arithmetic torch_cuda";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::unsupported);
    const std::string what = e.what();
    EXPECT_NE(what.find("CpuEngine"), std::string::npos) << what;
    EXPECT_NE(what.find("torch_cuda"), std::string::npos) << what;
    EXPECT_NE(what.find("NVIDIA GPU"), std::string::npos) << what;
  }
  HostTensor q(DType::f32, 2, 1, 64);
  const HostPositions pos({0, 1});
  EXPECT_THROW(posenc::apply_reference(spec, RopeArgs{q.view, {}, {}, {}, pos.view(), {}}), posenc::Error);
  // accurate numerics never read the arithmetic: the same spec is fine there.
  spec.numerics = posenc::Numerics::accurate;
  EXPECT_NO_THROW(CpuEngine{spec});
}

TEST(HfArithmeticRefusals, TorchCudaInitTableIsTheCpusAndCallTablesAreTheGpus) {
  // transformers builds a model's init table on the CPU, also for a model on a GPU: the host gives
  // torch_cpu's table; a dynamic table grown during a call comes from CUDA's powf, which it refuses.
  RopeSpec spec;
  spec.head_dim = 80;
  spec.theta = 1e7;  // entry 34 of d 80 differs between SLEEF/glibc and correctly rounded
  spec.scaling = Scaling::dynamic;
  spec.params.factor = 2.0;
  spec.params.max_position_embeddings = 4096;
  RopeSpec cpu = spec;
  cpu.hf_arithmetic = HfArithmetic::torch_cpu;
  spec.hf_arithmetic = HfArithmetic::torch_cuda;
  for (const std::optional<std::int64_t> seq_len : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{4096}}) {
    const std::vector<float> got = posenc::compute_frequencies(spec, seq_len).inv_freq;
    const std::vector<float> want = posenc::compute_frequencies(cpu, seq_len).inv_freq;
    for (std::size_t i = 0; i < want.size(); ++i) ASSERT_EQ(bits(got[i]), bits(want[i])) << i;
  }
  try {
    (void)posenc::compute_frequencies(spec, 4097);
    FAIL() << "compute_frequencies computed torch_cuda's grown table on the host";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::unsupported);
    EXPECT_NE(std::string(e.what()).find("GPU engine"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4097"), std::string::npos) << e.what();
  }
}

TEST(HfArithmeticRefusals, WithoutMklTorchCpuIsRefused) {
  if (detail::torch_cpu_trig_available()) GTEST_SKIP() << "this build links MKL (POSENC_MKL=ON)";
  RopeSpec spec;
  spec.head_dim = 64;
  try {
    const CpuEngine engine(spec);  // hf_arithmetic engine: torch_cpu on the CPU
    FAIL() << "CpuEngine without MKL accepted torch_cpu";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::unsupported);
    EXPECT_NE(std::string(e.what()).find("POSENC_MKL=OFF"), std::string::npos) << e.what();
  }
  spec.hf_arithmetic = HfArithmetic::exact;
  EXPECT_NO_THROW(CpuEngine{spec});
}

TEST(HfArithmeticNames, RoundTripAndValidation) {
  for (const HfArithmetic a : posenc::all_hf_arithmetics) EXPECT_EQ(posenc::parse_hf_arithmetic(posenc::to_string(a)), a);
  EXPECT_FALSE(posenc::parse_hf_arithmetic("torch").has_value());
  EXPECT_FALSE(posenc::parse_hf_arithmetic("").has_value());
  RopeSpec spec;
  spec.hf_arithmetic = static_cast<HfArithmetic>(9);
  try {
    spec.validate();
    FAIL() << "hf_arithmetic 9 accepted";
  } catch (const posenc::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hf_arithmetic = 9"), std::string::npos) << e.what();
  }
  spec.hf_arithmetic = HfArithmetic::torch_cpu;
  EXPECT_NE(spec.describe().find("hf arithmetic     torch_cpu"), std::string::npos) << spec.describe();
}

}  // namespace
