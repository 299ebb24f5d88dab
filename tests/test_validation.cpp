// Every bad input to validate_args / apply_reference / CpuEngine gives a posenc::Error of the right kind naming value, index and limit, and leaves the caller's buffers untouched.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/validate.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

constexpr std::int64_t tokens = 6;
constexpr std::int64_t head_dim = 128;
constexpr std::int64_t limit = 65536;

/// A valid out-of-place call (bf16 Q [6, 4, 128], K [6, 2, 128], int64 positions below 65536)
/// that each case breaks in one way.
struct Problem {
  RopeSpec spec = scheme_spec(Scaling::llama3, head_dim, 64, 0, Pairing::interleaved, Numerics::hf_compatible);
  HostTensor q{DType::bf16, tokens, 4, head_dim};
  HostTensor k{DType::bf16, tokens, 2, head_dim};
  HostTensor q_src{DType::bf16, tokens, 4, head_dim};
  HostTensor k_src{DType::bf16, tokens, 2, head_dim};
  FusedQkv fused{DType::bf16, tokens, 4, 2, head_dim};
  HostPositions positions{{0, 1, 2, 3, 4, 5}};
  HostPositions positions32{{0, 1, 2, 3, 4, 5}, IndexType::i32};
  RopeArgs args;

  Problem() {
    spec.position_limit = limit;
    fill_random(q.view, 1);
    fill_random(k.view, 2);
    fill_random(q_src.view, 3);
    fill_random(k_src.view, 4);
    fill_random(fused.q, 5);
    args = RopeArgs{q.view, k.view, q_src.cview(), k_src.cview(), positions.view(), {}};
  }

  /// Every byte the call could write or read.
  std::vector<std::vector<std::byte>> snapshot() const {
    std::vector<std::vector<std::byte>> s;
    for (const HostBuffer* b : {&q.buffer, &k.buffer, &q_src.buffer, &k_src.buffer, &fused.buffer})
      s.push_back(b->snapshot());
    const auto* p = reinterpret_cast<const std::byte*>(positions.values.data());
    s.emplace_back(p, p + positions.values.size() * 8);
    return s;
  }
};

struct BadCase {
  const char* what;
  std::function<void(Problem&)> mutate;
  ErrorKind kind;
  std::vector<std::string> message_parts;  // the value, its index where there is one, and the limit
};

std::byte* shifted(void* p, std::int64_t bytes) { return static_cast<std::byte*>(p) + bytes; }

const std::vector<BadCase>& bad_cases() {
  constexpr auto invalid = ErrorKind::invalid_argument;
  static const std::vector<BadCase> cases = {
      {"q absent", [](Problem& s) { s.args.q.data = nullptr; }, invalid, {"q is absent"}},
      {"empty input",
       [](Problem& s) {
         s.args.positions.count = 0;
         s.args.q.tokens = s.args.k.tokens = s.args.q_src.tokens = s.args.k_src.tokens = 0;
       },
       invalid,
       {"positions.count 0", "must be > 0"}},
      {"null positions", [](Problem& s) { s.args.positions.data = nullptr; }, invalid, {"positions.data is null"}},
      {"unknown index type",
       [](Problem& s) { s.args.positions.type = static_cast<IndexType>(9); },
       invalid,
       {"positions.type 9"}},
      {"positions count differs from tokens",
       [](Problem& s) { s.args.positions.count = 5; },
       invalid,
       {"q tokens 6 differs from positions.count 5"}},
      {"q head_dim differs from the spec",
       [](Problem& s) { s.args.q.head_dim = s.args.q_src.head_dim = 64; },
       invalid,
       {"q head_dim 64", "spec.head_dim 128"}},
      {"k tokens differ",
       [](Problem& s) { s.args.k.tokens = s.args.k_src.tokens = 5; },
       invalid,
       {"k tokens 5 differs from positions.count 6"}},
      {"q has no heads",
       [](Problem& s) { s.args.q.heads = s.args.q_src.heads = 0; },
       invalid,
       {"q heads 0", "must be > 0"}},
      {"negative token stride",
       [](Problem& s) { s.args.q.token_stride = -512; },
       invalid,
       {"q token_stride -512", "negative"}},
      {"negative head stride",
       [](Problem& s) { s.args.k_src.head_stride = -128; },
       invalid,
       {"k_src head_stride -128", "negative"}},
      {"heads overlap within q",
       [](Problem& s) { s.args.q.head_stride = 64; },
       invalid,
       {"q overlaps itself", "head_dim 128", "head_stride 64"}},
      {"tokens overlap within k",
       [](Problem& s) { s.args.k.token_stride = 200; },
       invalid,
       {"k overlaps itself", "token_stride 200"}},
      {"zero token stride with several tokens",
       [](Problem& s) { s.args.q.token_stride = 0; },
       invalid,
       {"q overlaps itself"}},
      {"K inside Q",
       [](Problem& s) { s.args.k.data = shifted(s.q.view.data, 2 * head_dim * 2); },
       invalid,
       {"q (6144 bytes at 0x", "overlaps k (3072 bytes at 0x", "Q and K destinations must not share memory"}},
      {"fused QKV with K shifted into Q's span",
       [](Problem& s) {
         s.args.q = s.fused.q;
         s.args.k = s.fused.k;
         s.args.k.data = shifted(s.fused.k.data, -2);  // one bf16 element into Q's last head
         s.args.q_src = s.args.k_src = {};
       },
       invalid,
       {"overlaps", "Q and K destinations"}},
      {"q_src overlaps k",
       [](Problem& s) {
         s.args.q_src = ConstTensorView(s.k.view.data, DType::bf16, tokens, 4, head_dim, 4 * head_dim, head_dim);
       },
       invalid,
       {"q_src", "overlaps k", "must not overlap another destination"}},
      {"q_src overlaps q without being q",
       [](Problem& s) {
         s.args.q_src = s.args.q;
         s.args.q_src.data = shifted(s.q.view.data, 2);
       },
       invalid,
       {"q_src", "overlaps q", "exactly or not overlap"}},
      {"k dtype differs from q",
       [](Problem& s) { s.args.k.dtype = s.args.k_src.dtype = DType::f16; },
       invalid,
       {"k dtype float16 differs from q dtype bfloat16"}},
      {"q_src dtype differs from q",
       [](Problem& s) { s.args.q_src.dtype = DType::f32; },
       invalid,
       {"q_src dtype float32 differs from q dtype bfloat16"}},
      {"q_src shape differs",
       [](Problem& s) { s.args.q_src.heads = 3; },
       invalid,
       {"q_src shape [6, 3, 128]", "q shape [6, 4, 128]"}},
      {"unknown dtype", [](Problem& s) { s.args.q.dtype = static_cast<DType>(7); }, invalid, {"q dtype 7"}},
      {"k_src without k", [](Problem& s) { s.args.k.data = nullptr; }, invalid, {"k_src is given but k is absent"}},
      {"misaligned bf16 data",
       [](Problem& s) { s.args.q.data = shifted(s.q.view.data, 1); },
       invalid,
       {"q data address", "not aligned", "2-byte"}},
      {"odd rotary dim", [](Problem& s) { s.spec.rotary_dim = 63; }, invalid, {"RopeSpec.rotary_dim = 63", "even"}},
      {"rotary window outside the head",
       [](Problem& s) { s.spec.rotary_offset = 96; },
       invalid,
       {"rotary_offset + rotary_dim", "96 + 64", "head_dim = 128"}},
      {"negative position",
       [](Problem& s) { s.positions.values[3] = -1; },
       ErrorKind::out_of_range,
       {"position -1 at token index 3 is outside [0, 65536)"}},
      {"position equal to the limit, at the last token",
       [](Problem& s) { s.positions.values[5] = limit; },
       ErrorKind::out_of_range,
       {"position 65536 at token index 5 is outside [0, 65536)"}},
      {"int32 position beyond the limit",
       [](Problem& s) {
         s.positions32.values32[5] = 70000;
         s.args.positions = s.positions32.view();
       },
       ErrorKind::out_of_range,
       {"position 70000 at token index 5 is outside [0, 65536)"}},
      {"token extent overflows",
       [](Problem& s) { s.args.q.token_stride = std::int64_t{1} << 62; },
       ErrorKind::overflow,
       {"q extent (tokens - 1) * token_stride", "5 * 4611686018427387904", "64 bits"}},
      {"head extent overflows",
       [](Problem& s) { s.args.q.head_stride = std::numeric_limits<std::int64_t>::max() / 2; },
       ErrorKind::overflow,
       {"q extent (heads - 1) * head_stride", "3 * 4611686018427387903", "64 bits"}},
      {"byte extent overflows",
       [](Problem& s) { s.args.q.token_stride = std::int64_t{1} << 60; },
       ErrorKind::overflow,
       {"q extent in bytes", "64 bits"}},
  };
  return cases;
}

// Each bad input, through each entry point: the error has the expected kind and names what was
// wrong, and not one byte of any buffer (destinations, sources, fused buffer, positions) changed.
TEST(Validation, EveryBadInputThrowsAndWritesNothing) {
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.what);
    Problem s;
    c.mutate(s);
    const auto before = s.snapshot();
    EXPECT_TRUE(throws_error([&] { validate_args(s.spec, s.args); }, c.kind, c.message_parts)) << "validate_args";
    EXPECT_TRUE(throws_error([&] { apply_reference(s.spec, s.args); }, c.kind, c.message_parts)) << "apply_reference";
    bool spec_valid = true;
    try {
      s.spec.validate();
    } catch (const Error&) {
      spec_valid = false;
    }
    if (spec_valid) {
      const CpuEngine engine(s.spec, CpuOptions{2});
      EXPECT_TRUE(throws_error([&] { engine.apply(s.args); }, c.kind, c.message_parts)) << "CpuEngine::apply";
    } else {
      EXPECT_TRUE(throws_error([&] { CpuEngine engine(s.spec); }, c.kind, c.message_parts)) << "CpuEngine constructor";
    }
    const auto after = s.snapshot();
    ASSERT_EQ(before.size(), after.size());
    for (std::size_t i = 0; i < before.size(); ++i) {
      EXPECT_TRUE(bytes_equal(before[i], after[i].data(), static_cast<std::int64_t>(after[i].size())))
          << "buffer " << i;
    }
  }
}

// The unmodified setup is valid, so each case above fails for its own reason.
TEST(Validation, BaseSetupIsValid) {
  Problem s;
  EXPECT_NO_THROW(validate_args(s.spec, s.args));
  EXPECT_NO_THROW(apply_reference(s.spec, s.args));
  EXPECT_TRUE(all_written(ConstTensorView(s.args.q)));
}

// The GPU engine validates with check_positions = false (its positions live in device memory):
// shapes are still checked, positions are not read.
TEST(Validation, PositionsSkippedWhenNotChecked) {
  Problem s;
  s.positions.values[2] = -5;
  EXPECT_NO_THROW(validate_args(s.spec, s.args, /*check_positions=*/false));
  EXPECT_TRUE(throws_error([&] { validate_args(s.spec, s.args, true); }, ErrorKind::out_of_range,
                           {"position -5 at token index 2"}));
  s.args.q.head_stride = 1;
  EXPECT_TRUE(
      throws_error([&] { validate_args(s.spec, s.args, false); }, ErrorKind::invalid_argument, {"q overlaps itself"}));
}

// The helpers GPU code reuses: the largest position comes out of the same single pass.
TEST(Validation, ScanPositionsReturnsTheLargest) {
  const HostPositions p({7, 3, 65535, 0, 12});
  EXPECT_EQ(detail::scan_positions(p.view(), limit), 65535);
  const HostPositions p32({7, 3, 9, 0, 12}, IndexType::i32);
  EXPECT_EQ(detail::scan_positions(p32.view(), limit), 12);
  Problem s;
  const detail::CallInfo info = detail::validate_call(s.spec, s.args, true);
  EXPECT_EQ(info.max_position, 5);
  EXPECT_EQ(info.tokens, 6);
  EXPECT_FALSE(info.q_in_place);
  s.args.q_src = s.args.q;  // a source that is exactly its destination is in place
  EXPECT_TRUE(detail::validate_call(s.spec, s.args, false).q_in_place);
  EXPECT_EQ(detail::validate_call(s.spec, s.args, false).max_position, -1);
}

// Q and K as neighbours in a fused QKV buffer share a token stride; their per-token spans
// interleave but never meet, which the exact check accepts (a whole-range test would not).
TEST(Validation, FusedQkvNeighboursAreNotAnOverlap) {
  Problem s;
  s.args = RopeArgs{s.fused.q, s.fused.k, {}, {}, s.positions.view(), {}};
  EXPECT_NO_THROW(validate_args(s.spec, s.args));
  // K right after V's first head instead (still disjoint per token).
  s.args.k = s.fused.v;
  EXPECT_NO_THROW(validate_args(s.spec, s.args));
}

}  // namespace
