// RopeSpec::validate: every bad field is rejected with a message naming the field, its value and the limit.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace {

using posenc::Pairing;
using posenc::RopeSpec;
using posenc::Scaling;

constexpr double nan = std::numeric_limits<double>::quiet_NaN();
constexpr double inf = std::numeric_limits<double>::infinity();

RopeSpec scheme(Scaling s) {
  RopeSpec spec;
  spec.head_dim = 8;
  spec.scaling = s;
  spec.params.factor = 2;
  spec.params.max_position_embeddings = 4096;
  spec.params.original_max_position_embeddings = 1024;
  spec.params.short_factor = {1, 1, 1, 1};
  spec.params.long_factor = {2, 2, 2, 2};
  spec.params.inv_freq = {1.0f, 0.5f, 0.25f, 0.125f};
  return spec;
}

struct BadCase {
  const char* what;
  std::function<void(RopeSpec&)> mutate;
  std::vector<std::string> message_parts;  // field = value, and the limit
};

TEST(SpecValidate, AcceptsEveryWellFormedScheme) {
  for (const Scaling s : {Scaling::none, Scaling::linear, Scaling::dynamic, Scaling::yarn, Scaling::longrope,
                          Scaling::llama3, Scaling::table}) {
    EXPECT_NO_THROW(scheme(s).validate()) << posenc::to_string(s);
  }
  RopeSpec partial;
  partial.head_dim = 128;
  partial.rotary_dim = 64;
  partial.rotary_offset = 64;  // window at the end of the head
  EXPECT_NO_THROW(partial.validate());
  RopeSpec derived = scheme(Scaling::yarn);
  derived.params.factor = 0;  // derived from max_position_embeddings / original_max
  EXPECT_NO_THROW(derived.validate());
}

TEST(SpecValidate, RejectsEachBadFieldNamingValueAndLimit) {
  const std::vector<BadCase> cases = {
      {"head_dim too small", [](RopeSpec& s) { s.head_dim = 0; }, {"RopeSpec.head_dim = 0", "[2, 1024]"}},
      {"head_dim too large", [](RopeSpec& s) { s.head_dim = 2048; }, {"RopeSpec.head_dim = 2048", "[2, 1024]"}},
      {"head_dim odd", [](RopeSpec& s) { s.head_dim = 7; }, {"RopeSpec.head_dim = 7", "even"}},
      {"rotary_dim negative", [](RopeSpec& s) { s.rotary_dim = -2; }, {"RopeSpec.rotary_dim = -2", "positive even"}},
      {"rotary_dim odd", [](RopeSpec& s) { s.rotary_dim = 5; }, {"RopeSpec.rotary_dim = 5", "even"}},
      {"rotary_offset negative", [](RopeSpec& s) { s.rotary_offset = -1; }, {"RopeSpec.rotary_offset = -1", ">= 0"}},
      {"window past the head",
       [](RopeSpec& s) {
         s.rotary_dim = 6;
         s.rotary_offset = 4;
       },
       {"RopeSpec.rotary_offset + rotary_dim = 4 + 6", "<= head_dim = 8"}},
      {"theta zero", [](RopeSpec& s) { s.theta = 0; }, {"RopeSpec.theta = 0", "finite and > 0"}},
      {"theta negative", [](RopeSpec& s) { s.theta = -10000; }, {"RopeSpec.theta = -10000", "> 0"}},
      {"theta nan", [](RopeSpec& s) { s.theta = nan; }, {"RopeSpec.theta = nan", "finite"}},
      {"theta inf", [](RopeSpec& s) { s.theta = inf; }, {"RopeSpec.theta = inf", "finite"}},
      {"position_limit", [](RopeSpec& s) { s.position_limit = 0; }, {"RopeSpec.position_limit = 0", "> 0"}},
      {"attention_factor", [](RopeSpec& s) { s.attention_factor = 0.0; }, {"RopeSpec.attention_factor = 0", "> 0"}},
      {"pairing out of range", [](RopeSpec& s) { s.pairing = static_cast<Pairing>(7); },
       {"RopeSpec.pairing = 7", "not a Pairing"}},
      {"scaling out of range", [](RopeSpec& s) { s.scaling = static_cast<Scaling>(9); },
       {"RopeSpec.scaling = 9", "not a Scaling"}},
      {"numerics out of range", [](RopeSpec& s) { s.numerics = static_cast<posenc::Numerics>(5); },
       {"RopeSpec.numerics = 5", "not a Numerics"}},
  };
  for (const BadCase& c : cases) {
    RopeSpec spec = scheme(Scaling::none);
    c.mutate(spec);
    try {
      spec.validate();
      ADD_FAILURE() << c.what << ": accepted";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), posenc::ErrorKind::invalid_argument) << c.what;
      for (const std::string& part : c.message_parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
            << c.what << ": message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
}

TEST(SpecValidate, RejectsBadSchemeParameters) {
  struct SchemeCase {
    Scaling scaling;
    BadCase bad;
  };
  const std::vector<SchemeCase> cases = {
      {Scaling::linear, {"linear factor", [](RopeSpec& s) { s.params.factor = 0; }, {"params.factor = 0", "> 0"}}},
      {Scaling::dynamic, {"dynamic factor", [](RopeSpec& s) { s.params.factor = -1; }, {"params.factor = -1"}}},
      {Scaling::dynamic,
       {"dynamic max_pos", [](RopeSpec& s) { s.params.max_position_embeddings = 0; },
        {"params.max_position_embeddings = 0", "> 0"}}},
      {Scaling::dynamic,
       {"dynamic R = 2", [](RopeSpec& s) { s.rotary_dim = 2; }, {"RopeSpec.rotary_dim = 2", ">= 4"}}},
      {Scaling::yarn,
       {"yarn original max", [](RopeSpec& s) { s.params.original_max_position_embeddings = 0; },
        {"params.original_max_position_embeddings = 0", "> 0"}}},
      {Scaling::yarn,
       {"yarn underivable factor",
        [](RopeSpec& s) {
          s.params.factor = 0;
          s.params.max_position_embeddings = 0;
        },
        {"params.max_position_embeddings = 0", "params.factor = 0"}}},
      {Scaling::yarn, {"yarn factor", [](RopeSpec& s) { s.params.factor = nan; }, {"params.factor = nan"}}},
      {Scaling::yarn,
       {"yarn beta_fast", [](RopeSpec& s) { s.params.beta_fast = -1; }, {"params.beta_fast = -1", ">= 0"}}},
      {Scaling::yarn,
       {"yarn beta_slow", [](RopeSpec& s) { s.params.beta_slow = inf; }, {"params.beta_slow = inf", "finite"}}},
      {Scaling::yarn, {"yarn mscale", [](RopeSpec& s) { s.params.mscale = -0.5; }, {"params.mscale = -0.5"}}},
      {Scaling::yarn,
       {"yarn mscale_all_dim", [](RopeSpec& s) { s.params.mscale_all_dim = nan; }, {"params.mscale_all_dim = nan"}}},
      {Scaling::longrope,
       {"longrope short length", [](RopeSpec& s) { s.params.short_factor = {1, 1, 1}; },
        {"params.short_factor.size() = 3", "rotary_dim / 2 = 4"}}},
      {Scaling::longrope,
       {"longrope long entry", [](RopeSpec& s) { s.params.long_factor[2] = 0; },
        {"params.long_factor[2] = 0", "> 0"}}},
      {Scaling::longrope,
       {"longrope original max", [](RopeSpec& s) { s.params.original_max_position_embeddings = -4; },
        {"params.original_max_position_embeddings = -4"}}},
      {Scaling::llama3,
       {"llama3 bands", [](RopeSpec& s) { s.params.high_freq_factor = 1; },
        {"params.high_freq_factor = 1", "> params.low_freq_factor = 1"}}},
      {Scaling::llama3,
       {"llama3 low", [](RopeSpec& s) { s.params.low_freq_factor = 0; }, {"params.low_freq_factor = 0", "> 0"}}},
      {Scaling::llama3,
       {"llama3 original max", [](RopeSpec& s) { s.params.original_max_position_embeddings = 0; },
        {"params.original_max_position_embeddings = 0"}}},
      {Scaling::table,
       {"table length", [](RopeSpec& s) { s.params.inv_freq = {1.0f}; },
        {"params.inv_freq.size() = 1", "rotary_dim / 2 = 4"}}},
      {Scaling::table,
       {"table entry", [](RopeSpec& s) { s.params.inv_freq[1] = std::numeric_limits<float>::infinity(); },
        {"params.inv_freq[1] = inf", "finite and > 0"}}},
      {Scaling::table,
       {"table entry zero", [](RopeSpec& s) { s.params.inv_freq[3] = 0.0f; }, {"params.inv_freq[3] = 0"}}},
  };
  for (const SchemeCase& c : cases) {
    RopeSpec spec = scheme(c.scaling);
    c.bad.mutate(spec);
    try {
      spec.validate();
      ADD_FAILURE() << c.bad.what << ": accepted";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), posenc::ErrorKind::invalid_argument) << c.bad.what;
      for (const std::string& part : c.bad.message_parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
            << c.bad.what << ": message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
}

// Regression (issue 17, items 4 and 6): parameters that make inv_freq, an angle or the attention
// factor non-finite were accepted (the engines then wrote inf/NaN with no error), and context
// lengths near INT64_MAX overflowed `threshold + 1` in the CPU engine's constructor.
TEST(SpecValidate, RejectsParametersGivingNonFiniteResults) {
  struct SchemeCase {
    Scaling scaling;
    BadCase bad;
  };
  const std::vector<SchemeCase> cases = {
      {Scaling::none, {"tiny theta", [](RopeSpec& s) { s.theta = 1e-300; }, {"RopeSpec.theta = 1e-300", "float32"}}},
      {Scaling::none, {"huge theta", [](RopeSpec& s) { s.theta = 1e39; }, {"RopeSpec.theta = 1e+39", "float32"}}},
      {Scaling::none,
       {"angles overflow float32",
        [](RopeSpec& s) {
          s.theta = 2e-38;  // inv_freq[0] = 1, the last ones ~1e37
          s.position_limit = std::int64_t{1} << 40;
        },
        {"inv_freq[", "angle at position 1099511627775 overflows float32"}}},
      {Scaling::none,
       {"huge attention factor", [](RopeSpec& s) { s.attention_factor = 1e308; },
        {"RopeSpec.attention_factor = 1e+308", "65504"}}},
      {Scaling::none,
       {"tiny attention factor", [](RopeSpec& s) { s.attention_factor = 1e-300; },
        {"RopeSpec.attention_factor = 1e-300"}}},
      {Scaling::linear,
       {"tiny linear factor", [](RopeSpec& s) { s.params.factor = 1e-300; }, {"params.factor = 1e-300", "float32"}}},
      {Scaling::linear,
       {"huge linear factor", [](RopeSpec& s) { s.params.factor = 1e300; }, {"params.factor = 1e+300", "float32"}}},
      {Scaling::dynamic,
       {"dynamic theta' overflows", [](RopeSpec& s) { s.params.factor = 1e30; },
        {"scaling dynamic", "params.factor = 1e+30", "seq_len 2147483648", "inv_freq["}}},
      {Scaling::dynamic,
       {"dynamic L near INT64_MAX",
        [](RopeSpec& s) { s.params.max_position_embeddings = std::numeric_limits<std::int64_t>::max(); },
        {"params.max_position_embeddings = 9223372036854775807", "2^53"}}},
      {Scaling::yarn,
       {"yarn betas swapped",
        [](RopeSpec& s) {
          s.params.beta_fast = 1;
          s.params.beta_slow = 32;
        },
        {"params.beta_fast = 1", "> params.beta_slow = 32"}}},
      {Scaling::yarn,
       {"yarn beta_fast defaulted below beta_slow", [](RopeSpec& s) { s.params.beta_slow = 40; },
        {"params.beta_fast = 32", "> params.beta_slow = 40"}}},
      {Scaling::yarn, {"yarn theta 1", [](RopeSpec& s) { s.theta = 1; }, {"RopeSpec.theta = 1", "> 1 for yarn"}}},
      {Scaling::yarn,
       {"yarn tiny factor", [](RopeSpec& s) { s.params.factor = 1e-300; }, {"params.factor = 1e-300", "float32"}}},
      {Scaling::yarn,
       {"yarn derived attention factor overflows",
        [](RopeSpec& s) {
          s.params.mscale = 1e308;  // DeepSeek's ratio get_mscale(f, mscale) / get_mscale(f, mscale_all_dim)
          s.params.mscale_all_dim = 1;
        },
        {"scaling yarn", "params.mscale = 1e+308", "attention factor"}}},
      {Scaling::yarn,
       {"yarn original max near INT64_MAX",
        [](RopeSpec& s) { s.params.original_max_position_embeddings = std::numeric_limits<std::int64_t>::max(); },
        {"params.original_max_position_embeddings = 9223372036854775807", "2^53"}}},
      {Scaling::longrope,
       {"longrope tiny entry", [](RopeSpec& s) { s.params.short_factor[1] = 1e-300; },
        {"params.short_factor[1] = 1e-300", "float32"}}},
      {Scaling::longrope,
       {"longrope attention factor divides by ln 1",
        [](RopeSpec& s) { s.params.original_max_position_embeddings = 1; },
        {"scaling longrope", "params.original_max_position_embeddings = 1", "attention factor inf"}}},
      {Scaling::longrope,
       {"longrope original max near INT64_MAX",
        [](RopeSpec& s) { s.params.original_max_position_embeddings = std::numeric_limits<std::int64_t>::max(); },
        {"params.original_max_position_embeddings = 9223372036854775807", "2^53"}}},
      {Scaling::llama3,
       {"llama3 tiny factor", [](RopeSpec& s) { s.params.factor = 1e-300; }, {"params.factor = 1e-300"}}},
      {Scaling::llama3,
       {"llama3 huge high band", [](RopeSpec& s) { s.params.high_freq_factor = 1e300; },
        {"params.high_freq_factor = 1e+300", "float32"}}},
  };
  for (const SchemeCase& c : cases) {
    RopeSpec spec = scheme(c.scaling);
    c.bad.mutate(spec);
    try {
      spec.validate();
      ADD_FAILURE() << c.bad.what << ": accepted";
    } catch (const posenc::Error& e) {
      EXPECT_EQ(e.kind(), posenc::ErrorKind::invalid_argument) << c.bad.what;
      for (const std::string& part : c.bad.message_parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
            << c.bad.what << ": message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
  // The engines validate at construction: no engine is built on such a spec.
  RopeSpec huge_omp = scheme(Scaling::longrope);
  huge_omp.params.original_max_position_embeddings = std::numeric_limits<std::int64_t>::max();
  EXPECT_THROW(posenc::CpuEngine{huge_omp}, posenc::Error);
  // The boundaries themselves are accepted.
  RopeSpec edge = scheme(Scaling::longrope);
  edge.params.original_max_position_embeddings = std::int64_t{1} << 53;
  edge.params.max_position_embeddings = std::int64_t{1} << 53;
  EXPECT_NO_THROW(edge.validate());
  RopeSpec big_factor = scheme(Scaling::none);
  big_factor.attention_factor = 65504.0;
  EXPECT_NO_THROW(big_factor.validate());
}

TEST(SpecValidate, IgnoresParametersOfOtherSchemes) {
  RopeSpec spec = scheme(Scaling::none);
  spec.params.factor = -3;  // only read by scaled schemes
  spec.params.short_factor.clear();
  EXPECT_NO_THROW(spec.validate());
}

TEST(SpecDescribe, NamesEveryField) {
  RopeSpec spec;
  spec.head_dim = 128;
  spec.rotary_dim = 64;
  spec.pairing = Pairing::interleaved;
  spec.theta = 5e6;
  spec.scaling = Scaling::yarn;
  spec.params.factor = 40;
  spec.params.original_max_position_embeddings = 4096;
  spec.attention_factor = 0.5;
  const std::string text = spec.describe();
  for (const char* part : {"head_dim          128", "dims [0, 64) of 128 (32 frequencies; 64 dims pass through)",
                           "pairing           interleaved", "theta             5e+06", "scaling           yarn",
                           "factor 40", "original_max_position_embeddings 4096", "0.5 (override)",
                           "numerics          hf_compatible", "position limit    2147483648"})
    EXPECT_NE(text.find(part), std::string::npos) << "describe() lacks \"" << part << "\" in:\n" << text;
}

TEST(SpecNames, EnumerationsHaveStableNames) {
  EXPECT_STREQ(posenc::to_string(Pairing::half_split), "half_split");
  EXPECT_STREQ(posenc::to_string(Pairing::interleaved), "interleaved");
  EXPECT_STREQ(posenc::to_string(Pairing::interleaved_to_half), "interleaved_to_half");
  EXPECT_STREQ(posenc::to_string(posenc::Numerics::hf_compatible), "hf_compatible");
  EXPECT_STREQ(posenc::to_string(posenc::Numerics::hf_fp32_apply), "hf_fp32_apply");
  EXPECT_STREQ(posenc::to_string(posenc::Numerics::accurate), "accurate");
  const char* names[] = {"none", "linear", "dynamic", "yarn", "longrope", "llama3", "table"};
  for (int i = 0; i < 7; ++i) EXPECT_STREQ(posenc::to_string(static_cast<Scaling>(i)), names[i]);
  EXPECT_STREQ(posenc::to_string(posenc::ErrorKind::config), "config");
  EXPECT_STREQ(posenc::to_string(posenc::ErrorKind::io), "io");
  const posenc::Error e(posenc::ErrorKind::vendor, "cudaErrorX");
  EXPECT_EQ(e.kind(), posenc::ErrorKind::vendor);
  EXPECT_STREQ(e.what(), "cudaErrorX");
}

}  // namespace
