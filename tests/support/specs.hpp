// Test support: one realistic RopeSpec per frequency scheme, the scheme list sweeps iterate (the other enums' lists are public: all_dtypes, all_pairings, all_numerics), and error expectations.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/schemes.hpp"
#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc::test {

/// Every scheme of the registry (src/core/schemes.cpp), in Scaling order.
inline const std::vector<Scaling> all_schemes = [] {
  std::vector<Scaling> out;
  for (const detail::SchemeRow& row : detail::scheme_rows()) out.push_back(row.scaling);
  return out;
}();

/// `spec` with HfArithmetic::exact: the GPU tests use it wherever they compare the GPU engine with
/// the CPU engine or apply_reference bit for bit (each engine's own torch arithmetic differs).
inline RopeSpec exact_arithmetic(RopeSpec spec) {
  spec.hf_arithmetic = HfArithmetic::exact;
  return spec;
}

/// A spec of scheme `s` with parameters modelled on real checkpoints (Llama 3.1, Qwen3 YaRN,
/// Phi-3.5 LongRoPE-like synthetic factors, dynamic NTK with a 4096 window).
inline RopeSpec scheme_spec(Scaling s, std::int64_t head_dim = 64, std::int64_t rotary_dim = 0,
                            std::int64_t rotary_offset = 0, Pairing pairing = Pairing::half_split,
                            Numerics numerics = Numerics::accurate) {
  RopeSpec spec;
  spec.head_dim = head_dim;
  spec.rotary_dim = rotary_dim;
  spec.rotary_offset = rotary_offset;
  spec.pairing = pairing;
  spec.numerics = numerics;
  spec.scaling = s;
  const std::int64_t half = spec.frequency_dim() / 2;  // entries of a table or factor list
  ScalingParams& p = spec.params;
  switch (s) {
    case Scaling::none:
      spec.theta = 10000.0;
      break;
    case Scaling::linear:
      spec.theta = 10000.0;
      p.factor = 4.0;
      break;
    case Scaling::dynamic:
      spec.theta = 10000.0;
      p.factor = 2.0;
      p.max_position_embeddings = 4096;
      break;
    case Scaling::yarn:
      spec.theta = 1e6;
      p.factor = 4.0;
      p.original_max_position_embeddings = 32768;
      break;
    case Scaling::longrope:
      spec.theta = 10000.0;
      p.factor = 32.0;
      p.original_max_position_embeddings = 4096;
      p.max_position_embeddings = 131072;
      for (std::int64_t i = 0; i < half; ++i) {
        p.short_factor.push_back(1.0 + 0.01 * static_cast<double>(i));
        p.long_factor.push_back(1.0 + 0.5 * static_cast<double>(i));
      }
      break;
    case Scaling::llama3:
      spec.theta = 500000.0;
      p.factor = 8.0;
      p.low_freq_factor = 1.0;
      p.high_freq_factor = 4.0;
      p.original_max_position_embeddings = 8192;
      break;
    case Scaling::table:
      for (std::int64_t i = 0; i < half; ++i) {
        p.inv_freq.push_back(
            static_cast<float>(std::pow(20000.0, -static_cast<double>(i) / static_cast<double>(half))));
      }
      break;
  }
  return spec;
}

/// The largest position + 1 up to which the scheme's table does not depend on the call (the
/// registry row's threshold: dynamic max_position_embeddings, longrope
/// original_max_position_embeddings), or 0 for a fixed table.
inline std::int64_t scheme_threshold(const RopeSpec& spec) {
  const detail::SchemeRow& row = detail::scheme_row(spec.scaling);
  return row.threshold != nullptr ? row.threshold(spec.params) : 0;
}

/// "yarn/interleaved/accurate/bfloat16" for messages.
inline std::string case_name(const RopeSpec& spec, DType dtype) {
  return std::string(to_string(spec.scaling)) + "/" + to_string(spec.pairing) + "/" + to_string(spec.numerics) + "/" +
         to_string(dtype) + "/head_dim " + std::to_string(spec.head_dim) + "/rotary " + std::to_string(spec.rotary()) +
         "@" + std::to_string(spec.rotary_offset);
}

/// Runs `call`, which must throw posenc::Error of `kind` whose message contains every one of
/// `parts`; says what happened otherwise.
inline ::testing::AssertionResult throws_error(const std::function<void()>& call, ErrorKind kind,
                                               const std::vector<std::string>& parts) {
  try {
    call();
  } catch (const Error& e) {
    if (e.kind() != kind) {
      return ::testing::AssertionFailure() << "threw posenc::Error of kind " << to_string(e.kind()) << " (expected "
                                           << to_string(kind) << "): " << e.what();
    }
    const std::string message = e.what();
    for (const std::string& part : parts) {
      if (message.find(part) == std::string::npos) {
        return ::testing::AssertionFailure() << "message \"" << message << "\" lacks \"" << part << "\"";
      }
    }
    return ::testing::AssertionSuccess() << message;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-posenc exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw (expected " << to_string(kind) << ")";
}

/// EXPECT form of throws_error, for call sites that list the message parts as string literals.
template <typename F>
void expect_error(F&& f, ErrorKind kind, std::initializer_list<const char*> parts) {
  EXPECT_TRUE(throws_error(std::function<void()>(std::forward<F>(f)), kind,
                           std::vector<std::string>(parts.begin(), parts.end())));
}

}  // namespace posenc::test
