// The QK-norm stage (RopeSpec::qk_norm): transformers' own attention modules bit for bit, the CPU engine against the reference, a float64 check, config ingestion and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/qk_norm.hpp"
#include "npy.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"
#include "support/host_tensor.hpp"

namespace {

namespace fs = std::filesystem;
using namespace posenc;
using posenc::test::HostBuffer;
using posenc::test::HostPositions;
using posenc::test::HostTensor;

const fs::path golden_dir = fs::path(POSENC_GOLDEN_DIR) / "qk_norm";
const fs::path source_dir{POSENC_SOURCE_DIR};

std::vector<std::uint16_t> npy_u16(const fs::path& path) {
  const cli::NpyArray a = cli::read_npy(path.string());
  std::vector<std::uint16_t> out(a.data.size() / 2);
  std::memcpy(out.data(), a.data.data(), out.size() * 2);
  return out;
}

std::vector<std::int64_t> npy_i64(const fs::path& path) {
  const cli::NpyArray a = cli::read_npy(path.string());
  std::vector<std::int64_t> out(a.data.size() / 8);
  std::memcpy(out.data(), a.data.data(), out.size() * 8);
  return out;
}

std::vector<std::string> golden_cases() {
  std::vector<std::string> out;
  if (!fs::exists(golden_dir)) return out;
  for (const auto& e : fs::directory_iterator(golden_dir))
    if (fs::exists(e.path() / "meta.json")) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// 1. transformers' Qwen3Attention, Gemma3Attention and Glm4MoeAttention (scripts/golden/qk_norm.py)
//    normalised and rotated the recorded projections; posenc's spec from the same config.json, on
//    the CPU engine and the reference, gives the same bits.
TEST(QkNormGolden, MatchesTransformersAttentionModules) {
  const std::vector<std::string> cases = golden_cases();
  ASSERT_GE(cases.size(), 4u) << "fixtures missing under " << golden_dir;
  for (const std::string& name : cases) {
    SCOPED_TRACE(name);
    const fs::path dir = golden_dir / name;
    const nlohmann::json meta = nlohmann::json::parse(std::ifstream(dir / "meta.json"));
    const ModelConfig mc = load_model_config((source_dir / meta["config"].get<std::string>()).string());
    const RopeSpec spec = mc.spec(meta["layer_type"].get<std::string>());
    const std::string norm = meta["norm"];
    EXPECT_EQ(spec.qk_norm.kind, norm == "Gemma3RMSNorm" ? QkNormKind::rms_one_plus : QkNormKind::rms);
    EXPECT_EQ(static_cast<float>(spec.qk_norm.epsilon), static_cast<float>(meta["epsilon"].get<double>()));

    const std::int64_t tokens = meta["tokens"], q_heads = meta["q_heads"], kv_heads = meta["kv_heads"];
    const std::int64_t head_dim = meta["head_dim"];
    ASSERT_EQ(head_dim, spec.head_dim);
    std::vector<std::uint16_t> q = npy_u16(dir / "q.npy"), k = npy_u16(dir / "k.npy");
    const std::vector<std::uint16_t> q_expected = npy_u16(dir / "q_out.npy"), k_expected = npy_u16(dir / "k_out.npy");
    const std::vector<std::uint16_t> q_weight = npy_u16(dir / "q_norm_weight.npy");
    const std::vector<std::uint16_t> k_weight = npy_u16(dir / "k_norm_weight.npy");
    const std::vector<std::int64_t> positions = npy_i64(dir / "positions.npy");
    ASSERT_EQ(q.size(), static_cast<std::size_t>(tokens * q_heads * head_dim));
    ASSERT_EQ(k_weight.size(), static_cast<std::size_t>(head_dim));

    for (const bool engine : {true, false}) {
      SCOPED_TRACE(engine ? "CpuEngine" : "apply_reference");
      std::vector<std::uint16_t> q_out(q.size(), 0x7fc1), k_out(k.size(), 0x7fc1);  // poisoned
      RopeArgs args;
      args.q = TensorView::contiguous(q_out.data(), DType::bf16, tokens, q_heads, head_dim);
      args.k = TensorView::contiguous(k_out.data(), DType::bf16, tokens, kv_heads, head_dim);
      args.q_src = TensorView::contiguous(q.data(), DType::bf16, tokens, q_heads, head_dim);
      args.k_src = TensorView::contiguous(k.data(), DType::bf16, tokens, kv_heads, head_dim);
      args.positions = PositionsView{positions.data(), IndexType::i64, tokens, 1, tokens};
      args.norm = NormWeights{q_weight.data(), k_weight.data()};
      if (engine) CpuEngine(spec).apply(args);
      else apply_reference(spec, args);
      std::int64_t q_diff = 0, k_diff = 0;
      for (std::size_t i = 0; i < q.size(); ++i) q_diff += q_out[i] != q_expected[i];
      for (std::size_t i = 0; i < k.size(); ++i) k_diff += k_out[i] != k_expected[i];
      EXPECT_EQ(q_diff, 0) << "of " << q.size() << " Q values differ from transformers'";
      EXPECT_EQ(k_diff, 0) << "of " << k.size() << " K values differ from transformers'";
    }
  }
}

// 2. The norm's arithmetic against float64: torch's float32 steps stay within a few float32 ulps
//    of exact math, so the normalised values are within one ulp of the dtype of the exact ones.
TEST(QkNormArithmetic, CloseToFloat64) {
  std::uint64_t state = 12345;
  auto uniform = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(state >> 11) / 9007199254740992.0;
  };
  for (const int n : {2, 8, 30, 64, 80, 96, 128, 160, 256, 512, 1024}) {
    std::vector<float> x(n), w(n), sq(n), out(n);
    for (int trial = 0; trial < 50; ++trial) {
      const double scale = std::exp(8.0 * (uniform() - 0.5));
      for (int j = 0; j < n; ++j) {
        x[j] = static_cast<float>(scale * (uniform() * 2 - 1));
        w[j] = static_cast<float>(0.5 + uniform());
      }
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += static_cast<double>(x[j]) * x[j];
      const double r = 1.0 / std::sqrt(sum / n + 1e-6);
      for (const HfArithmetic a : {HfArithmetic::torch_cpu, HfArithmetic::exact}) {
        out = x;  // normalised in place
        detail::norm_row_host<DType::f32>(QkNorm{QkNormKind::rms, 1e-6, false}, a, out.data(), w.data(), n, sq.data());
        for (int j = 0; j < n; ++j) {
          const double exact = static_cast<double>(w[j]) * x[j] * r;
          ASSERT_NEAR(out[j], exact, 8 * std::ldexp(std::abs(exact), -24) + 1e-30)
              << "n " << n << " j " << j << " arithmetic " << to_string(a);
        }
      }
    }
  }
}

// The summation orders: below 8 elements torch's CPU sum is sequential, and an order that ignored
// a term would be caught by the float64 test above; here: the CUDA shape ATen picks.
TEST(QkNormArithmetic, TorchCudaReduceShape) {
  EXPECT_FALSE(detail::torch_cuda_reduce_shape(64, 1000).vectorized);
  EXPECT_EQ(detail::torch_cuda_reduce_shape(64, 1000).lanes, 32);
  EXPECT_EQ(detail::torch_cuda_reduce_shape(64, 4).lanes, 64);
  EXPECT_TRUE(detail::torch_cuda_reduce_shape(128, 1000).vectorized);
  EXPECT_EQ(detail::torch_cuda_reduce_shape(128, 1000).lanes, 32);
  EXPECT_EQ(detail::torch_cuda_reduce_shape(256, 8).lanes, 64);   // Gemma 3 decode: 8 query heads
  EXPECT_EQ(detail::torch_cuda_reduce_shape(256, 16).lanes, 32);
  EXPECT_EQ(detail::torch_cuda_reduce_shape(16, 1000).lanes, 16);
  // Every lane count sums every element once: a row of ones sums to n whatever the shape.
  for (const int n : {8, 16, 64, 80, 96, 128, 160, 256, 512, 1024}) {
    for (const std::int64_t rows : {1, 3, 8, 9, 16, 1000}) {
      const detail::TorchCudaReduceShape shape = detail::torch_cuda_reduce_shape(n, rows);
      std::vector<float> ones(n, 1.0f), partial(shape.lanes);
      EXPECT_EQ(detail::torch_cuda_sum(ones.data(), n, shape, partial.data()), static_cast<float>(n))
          << "n " << n << " rows " << rows;
      EXPECT_EQ(detail::torch_cpu_sum(ones.data(), n), static_cast<float>(n)) << "n " << n;
    }
  }
  EXPECT_EQ(detail::torch_cuda_mean_factor(3, 128), 1.0f / 128);
  EXPECT_EQ(detail::torch_cuda_mean_factor(5, 80), static_cast<float>(1.0 / 80));
}

struct Case {
  DType dtype;
  Pairing pairing;
  Numerics numerics;
  QkNormKind kind;
  bool rotary_only;
  bool in_place;
};

RopeSpec case_spec(const Case& c) {
  RopeSpec spec;
  spec.head_dim = 96;
  spec.rotary_dim = 64;
  spec.rotary_offset = 16;
  spec.pairing = c.pairing;
  spec.numerics = c.numerics;
  spec.theta = 1e6;
  spec.qk_norm = QkNorm{c.kind, 1e-6, c.rotary_only};
  return spec;
}

// 3. The CPU engine equals the reference bit for bit (apply and append), every dtype, pairing,
//    numerics, norm form and width, in place and out of place, poisoned destinations.
TEST(QkNormEngine, EqualsReference) {
  const std::int64_t tokens = 37, q_heads = 5, kv_heads = 2;
  for (const DType dtype : all_dtypes)
    for (const Pairing pairing : {Pairing::half_split, Pairing::interleaved, Pairing::interleaved_to_half})
      for (const Numerics numerics : all_numerics)
        for (const QkNormKind kind : {QkNormKind::rms, QkNormKind::rms_one_plus})
          for (const bool rotary_only : {false, true})
            for (const bool in_place : {false, true}) {
              const Case c{dtype, pairing, numerics, kind, rotary_only, in_place};
              const RopeSpec spec = case_spec(c);
              SCOPED_TRACE(std::string(to_string(dtype)) + " " + to_string(pairing) + " " + to_string(numerics) + " " +
                           to_string(kind) + (rotary_only ? " rotary_only" : " head") + (in_place ? " in place" : ""));
              const std::int64_t width = spec.qk_norm_width();
              HostTensor q_in(dtype, tokens, q_heads, spec.head_dim), k_in(dtype, tokens, kv_heads, spec.head_dim);
              test::fill_random(q_in.view, 11);
              test::fill_random(k_in.view, 12);
              HostTensor weights(dtype, 2, 1, width);
              test::fill_random(weights.view, 13);
              const auto* w = static_cast<const std::byte*>(weights.view.data);
              const NormWeights norm{w, w + width * size_of(dtype)};
              const HostPositions pos(test::random_positions(tokens, 1 << 20, 14));

              std::vector<std::vector<std::byte>> results;
              for (const bool engine : {false, true}) {
                HostTensor q(dtype, tokens, q_heads, spec.head_dim), k(dtype, tokens, kv_heads, spec.head_dim);
                RopeArgs args;
                args.q = q.view;
                args.k = k.view;
                args.positions = pos.view();
                args.norm = norm;
                if (in_place) {
                  std::memcpy(q.view.data, q_in.view.data, static_cast<std::size_t>(q.buffer.size()));
                  std::memcpy(k.view.data, k_in.view.data, static_cast<std::size_t>(k.buffer.size()));
                } else {
                  args.q_src = q_in.cview();
                  args.k_src = k_in.cview();
                }
                if (engine) CpuEngine(spec).apply(args);
                else apply_reference(spec, args);
                results.push_back(q.buffer.snapshot());
                results.push_back(k.buffer.snapshot());
                // Nothing left poisoned: every element of every head was written (out of place;
                // the norm writes the whole head, the rotary_only pass-through is copied).
                if (!in_place && dtype != DType::f32) {
                  for (std::int64_t t = 0; t < tokens; ++t) {
                    for (std::int64_t h = 0; h < q_heads; ++h) {
                      for (std::int64_t d = 0; d < spec.head_dim; ++d) {
                        ASSERT_NE(test::load_bits(q.cview(), t, h, d), test::poison_bits16) << t << " " << h << " " << d;
                      }
                    }
                  }
                }
              }
              EXPECT_EQ(results[0], results[2]) << "Q differs between the CPU engine and the reference";
              EXPECT_EQ(results[1], results[3]) << "K differs between the CPU engine and the reference";
            }
}

// The normalised head against float64: the norm (exact arithmetic) then the rotation, in float32.
TEST(QkNormEngine, CloseToFloat64) {
  RopeSpec spec = case_spec({DType::f32, Pairing::half_split, Numerics::accurate, QkNormKind::rms_one_plus, false, false});
  const std::int64_t tokens = 9, heads = 3, d = spec.head_dim;
  HostTensor q_in(DType::f32, tokens, heads, d), q(DType::f32, tokens, heads, d), weights(DType::f32, 1, 1, d);
  test::fill_random(q_in.view, 21);
  test::fill_random(weights.view, 22);
  const HostPositions pos(test::random_positions(tokens, 1 << 16, 23));
  RopeArgs args;
  args.q = q.view;
  args.q_src = q_in.cview();
  args.positions = pos.view();
  args.norm.q = weights.view.data;
  CpuEngine(spec).apply(args);
  const FrequencyTable table = compute_frequencies(spec);
  const auto* w = static_cast<const float*>(weights.view.data);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t h = 0; h < heads; ++h) {
      double sum = 0;
      for (std::int64_t j = 0; j < d; ++j) sum += std::pow(test::load_value(q_in.cview(), t, h, j), 2);
      const double r = 1.0 / std::sqrt(sum / d + 1e-6);
      auto normed = [&](std::int64_t j) { return test::load_value(q_in.cview(), t, h, j) * r * (1.0 + w[j]); };
      const std::int64_t half = spec.rotary() / 2;
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(table.inv_freq[i]) * static_cast<double>(pos.values[t]);
        const double a = normed(16 + i), b = normed(16 + half + i);
        const double ra = a * std::cos(angle) - b * std::sin(angle), rb = b * std::cos(angle) + a * std::sin(angle);
        EXPECT_NEAR(test::load_value(q.cview(), t, h, 16 + i), ra, 1e-5 * (std::abs(a) + std::abs(b)) + 1e-6);
        EXPECT_NEAR(test::load_value(q.cview(), t, h, 16 + half + i), rb, 1e-5 * (std::abs(a) + std::abs(b)) + 1e-6);
      }
      EXPECT_NEAR(test::load_value(q.cview(), t, h, 0), normed(0), 1e-6 * std::abs(normed(0)) + 1e-7);
      EXPECT_NEAR(test::load_value(q.cview(), t, h, d - 1), normed(d - 1), 1e-6 * std::abs(normed(d - 1)) + 1e-7);
    }
}

// The fused append normalises K exactly as apply does: the cache rows hold the normalised,
// rotated K, and CpuEngine::append equals append_reference.
TEST(QkNormEngine, AppendEqualsApply) {
  RopeSpec spec = case_spec({DType::bf16, Pairing::half_split, Numerics::hf_compatible, QkNormKind::rms, false, false});
  spec.rotary_offset = 0;
  spec.rotary_dim = 0;
  const std::int64_t tokens = 6, q_heads = 4, kv_heads = 2, d = spec.head_dim;
  HostTensor q_in(DType::bf16, tokens, q_heads, d), k_in(DType::bf16, tokens, kv_heads, d),
      v_in(DType::bf16, tokens, kv_heads, d), weights(DType::bf16, 2, 1, d);
  test::fill_random(q_in.view, 31);
  test::fill_random(k_in.view, 32);
  test::fill_random(v_in.view, 33);
  test::fill_random(weights.view, 34);
  const auto* w = static_cast<const std::byte*>(weights.view.data);
  const NormWeights norm{w, w + d * 2};
  const HostPositions pos(test::random_positions(tokens, 4096, 35));
  const std::vector<std::int64_t> slots = {3, -1, 0, 5, 7, 1};

  // Expected: apply out of place, then the rotated K rows at their slots.
  HostTensor q_applied(DType::bf16, tokens, q_heads, d), k_applied(DType::bf16, tokens, kv_heads, d);
  RopeArgs rope;
  rope.q = q_applied.view;
  rope.k = k_applied.view;
  rope.q_src = q_in.cview();
  rope.k_src = k_in.cview();
  rope.positions = pos.view();
  rope.norm = norm;
  CpuEngine(spec).apply(rope);

  for (const bool engine : {false, true}) {
    SCOPED_TRACE(engine ? "CpuEngine::append" : "append_reference");
    HostTensor q(DType::bf16, tokens, q_heads, d);
    std::vector<std::uint16_t> cache_k(8 * kv_heads * d, 0x7fc1), cache_v(8 * kv_heads * d, 0x7fc1);
    AppendArgs a;
    a.q = q.view;
    a.q_src = q_in.cview();
    a.k = k_in.cview();
    a.v = v_in.cview();
    a.positions = pos.view();
    a.slots = slots.data();
    a.cache = KvCacheView{cache_k.data(), cache_v.data(), CacheDType::bf16, CacheLayout::paged_nhd, kv_heads, d, 2, 4};
    a.norm = norm;
    if (engine) CpuEngine(spec).append(a);
    else append_reference(spec, a);
    EXPECT_EQ(q.buffer.snapshot(), q_applied.buffer.snapshot());
    for (std::int64_t t = 0; t < tokens; ++t) {
      if (slots[t] < 0) continue;
      for (std::int64_t h = 0; h < kv_heads; ++h)
        for (std::int64_t j = 0; j < d; ++j)
          ASSERT_EQ(cache_k[(slots[t] * kv_heads + h) * d + j], test::load_bits(k_applied.cview(), t, h, j))
              << "token " << t << " head " << h << " dim " << j;
    }
  }
}

// 4. Bad input: a clear error naming what is wrong, and the caller's data untouched.
TEST(QkNormValidation, RejectsAndLeavesDataUntouched) {
  const RopeSpec spec = case_spec({DType::bf16, Pairing::half_split, Numerics::hf_compatible, QkNormKind::rms, false, true});
  HostTensor q(DType::bf16, 4, 2, spec.head_dim), k(DType::bf16, 4, 1, spec.head_dim), w(DType::bf16, 2, 1, spec.head_dim);
  test::fill_random(q.view, 41);
  test::fill_random(k.view, 42);
  test::fill_random(w.view, 43);
  const HostPositions pos(test::random_positions(4, 100, 44));
  const auto* wp = static_cast<const std::byte*>(w.view.data);
  auto expect_error = [&](const RopeSpec& s, NormWeights norm, const std::string& needle) {
    const auto q_before = q.buffer.snapshot(), k_before = k.buffer.snapshot();
    RopeArgs args;
    args.q = q.view;
    args.k = k.view;
    args.positions = pos.view();
    args.norm = norm;
    for (const bool engine : {false, true}) {
      try {
        if (engine) CpuEngine(s).apply(args);
        else apply_reference(s, args);
        ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
      EXPECT_EQ(q.buffer.snapshot(), q_before);
      EXPECT_EQ(k.buffer.snapshot(), k_before);
    }
  };
  expect_error(spec, NormWeights{nullptr, wp}, "norm.q is absent");
  expect_error(spec, NormWeights{wp, nullptr}, "norm.k is absent");
  expect_error(spec, NormWeights{q.view.data, wp}, "must not share memory with a destination");
  expect_error(spec, NormWeights{wp + 1, wp}, "not aligned");
  RopeSpec plain = spec;
  plain.qk_norm = QkNorm{};
  expect_error(plain, NormWeights{wp, wp}, "the spec has no QK norm");
  RopeSpec bad_eps = spec;
  bad_eps.qk_norm.epsilon = std::nan("");
  expect_error(bad_eps, NormWeights{wp, wp}, "qk_norm.epsilon");
  bad_eps.qk_norm.epsilon = -1;
  expect_error(bad_eps, NormWeights{wp, wp}, "qk_norm.epsilon");
}

// 6. fp8 e4m3 outputs: every bfloat16 value (NaNs and infinities included) written through the
//    fused append into an fp8 cache equals torch's `(x / scale).clamp(-448, 448).to(float8_e4m3fn)`
//    (scripts/golden/fp8_cast.py), for three scales: V rows carry the values unchanged to the cast.
TEST(Fp8Cast, EveryBfloat16MatchesTorch) {
  const fs::path path = fs::path(POSENC_GOLDEN_DIR) / "arithmetic" / "fp8" / "bf16_to_e4m3.bin";
  std::ifstream file(path, std::ios::binary);
  const std::vector<char> expected{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  const nlohmann::json meta = nlohmann::json::parse(std::ifstream(path.parent_path() / "meta.json"));
  const std::vector<double> scales = meta["scales"];
  ASSERT_EQ(expected.size(), scales.size() * 65536) << path;
  RopeSpec spec;
  spec.head_dim = 128;
  const std::int64_t tokens = 512;  // 512 x 128 = 65536 values, V row (t, 0) holds bf16 bits t*128 .. t*128+127
  std::vector<std::uint16_t> q(tokens * spec.head_dim), k(tokens * spec.head_dim), v(tokens * spec.head_dim);
  for (std::size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<std::uint16_t>(i);
    q[i] = k[i] = 0x3f80;  // 1.0
  }
  const std::vector<std::int64_t> positions(tokens, 3);
  std::vector<std::int64_t> slots(tokens);
  for (std::int64_t t = 0; t < tokens; ++t) slots[t] = t;
  for (std::size_t s = 0; s < scales.size(); ++s) {
    SCOPED_TRACE("scale " + std::to_string(scales[s]));
    for (const bool engine : {true, false}) {
      std::vector<std::uint8_t> cache_k(v.size(), 0xaa), cache_v(v.size(), 0xaa);
      AppendArgs a;
      a.q = TensorView::contiguous(q.data(), DType::bf16, tokens, 1, spec.head_dim);
      a.k = TensorView::contiguous(k.data(), DType::bf16, tokens, 1, spec.head_dim);
      a.v = TensorView::contiguous(v.data(), DType::bf16, tokens, 1, spec.head_dim);
      a.positions = PositionsView{positions.data(), IndexType::i64, tokens, 1, tokens};
      a.slots = slots.data();
      a.cache = KvCacheView{cache_k.data(), cache_v.data(), CacheDType::fp8_e4m3, CacheLayout::paged_nhd, 1,
                            spec.head_dim, tokens, 1};
      a.cache.k_scale = a.cache.v_scale = static_cast<float>(scales[s]);
      if (engine) CpuEngine(spec).append(a);
      else append_reference(spec, a);
      std::int64_t differ = 0;
      std::string first;
      for (std::size_t i = 0; i < cache_v.size(); ++i) {
        const auto want = static_cast<std::uint8_t>(expected[s * 65536 + i]);
        if (cache_v[i] == want) continue;
        if (differ++ == 0) first = "bf16 bits " + std::to_string(i) + ": got " + std::to_string(cache_v[i]) + ", torch " + std::to_string(want);
      }
      EXPECT_EQ(differ, 0) << (engine ? "CpuEngine" : "append_reference") << "; first: " << first;
    }
  }
}

// 5. Config ingestion: which model types normalise, with which form and epsilon.
TEST(QkNormConfig, FromModelType) {
  const auto spec_of = [](const std::string& json) { return parse_model_config(json).spec(); };
  const std::string geometry = R"("num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128, "hidden_size": 1024)";
  RopeSpec s = spec_of(R"({"model_type": "qwen3", "rms_norm_eps": 1e-06, )" + geometry + "}");
  EXPECT_EQ(s.qk_norm.kind, QkNormKind::rms);
  EXPECT_EQ(s.qk_norm.epsilon, 1e-6);
  s = spec_of(R"({"model_type": "qwen3_moe", )" + geometry + "}");
  EXPECT_EQ(s.qk_norm.kind, QkNormKind::rms);
  s = spec_of(R"({"model_type": "glm4_moe", "use_qk_norm": true, "rms_norm_eps": 1e-05, )" + geometry + "}");
  EXPECT_EQ(s.qk_norm.kind, QkNormKind::rms);
  EXPECT_EQ(s.qk_norm.epsilon, 1e-5);
  s = spec_of(R"({"model_type": "glm4_moe", )" + geometry + "}");
  EXPECT_EQ(s.qk_norm.kind, QkNormKind::none);  // use_qk_norm defaults to false
  s = spec_of(R"({"model_type": "llama", )" + geometry + "}");
  EXPECT_EQ(s.qk_norm.kind, QkNormKind::none);
  const ModelConfig gemma = load_model_config((source_dir / "configs/gemma-3-4b.json").string());
  for (const auto& [layer, spec] : gemma.rope) EXPECT_EQ(spec.qk_norm.kind, QkNormKind::rms_one_plus) << layer;
  EXPECT_NE(gemma.spec("full_attention").describe().find("qk norm           rms_one_plus"), std::string::npos);
  EXPECT_THROW(spec_of(R"({"model_type": "qwen3", "rms_norm_eps": -1, )" + geometry + "}"), Error);
}

}  // namespace
