// The GPU GLM-4 attention example (examples/glm4_attention_gpu_layer) against transformers' GlmAttention and the CPU example, every step, float32 and bfloat16.
//
// Fixtures: tests/golden/glm_attention (scripts/golden/glm_attention.py, float32 transformers):
// prefill of three sequences, 32 decode steps, a fourth sequence joining at step 10. Every test
// skips with the reason where no GPU is usable (GpuTest).
//
// Tolerances on the attention output, max|err| per token <= tol * max|HF output| of the step:
// - float32: tol = 1e-5, as the CPU example. The GEMMs (cuBLAS, pedantic float32: no TF32), the
//   scores, softmax and PV sums accumulate in float32 in another order than PyTorch; float32 eps
//   is 1.2e-7, and a host simulation of this arithmetic (float32 accumulation at the same points)
//   stays below 7e-7.
// - bfloat16: tol = 3e-2. Weights, biases and the hidden input are rounded to bf16 (2^-9 = 0.2%
//   relative each), Q/K/V are rounded to bf16 after the QKV GEMM, Q and K are rotated in bf16
//   (HF's bf16 arithmetic: products and sums rounded to bf16), the attention output is rounded
//   to bf16 before o_proj, and the output is rounded once more: about six roundings of 2^-9 on
//   the path, amplified by the two 64-wide GEMMs where terms cancel. A host simulation of exactly
//   these rounding points against the same fixtures gives at most 1.25e-2 relative (steps 0..32),
//   so 3e-2 leaves a 2.4x margin while a wrong position or a wrong page (errors of order 1)
//   still fails by far.
//
// The cache is checked three ways:
// - Bit-exact, per step: the GPU layer's own pre-RoPE K (still in its fused QKV buffer: the
//   append reads K, it does not write it) rotated by CpuEngine::apply with the same positions
//   equals the K rows the GPU append wrote, and the V rows equal the projected V, in both dtypes
//   (GpuEngine::append is bit-identical to the CPU engine; a bf16 cache of bf16 activations
//   stores their bits).
// - Against the CPU example's K cache (float32, same schedule): not bit-exact, because the two
//   K projections sum their 64 products + bias in different orders (CPU in float64, cuBLAS in
//   float32), so the rotation starts from inputs a few ulp apart. The bound is the worst case of
//   that difference, per element: with A_e = sum_k |x_k w_ek| + |b_e| (from the fixture's
//   inputs and weights), the pre-RoPE K values differ by at most
//     d_e = c * A_e,   c = (hidden + 3) * 2^-24                  (float32 summation, any order)
//                      c = 1.01 * (2^-8 + 2^-9) + (hidden + 3) * 2^-24  (bf16: x, w rounded,
//                                                                  K rounded to bf16)
//   and a rotated element (x_i, x_j an interleaved pair) by d_i + d_j + r * 2 (A_i + A_j), where
//   r covers the two sides' own roundings of the products and the sum (float32: 2^-21;
//   bf16: 2^-7, cos/sin and both products and the sum rounded to bf16). A pass-through element
//   differs by d_e. The observed maximum is printed. A host simulation of the GPU arithmetic
//   (float32 accumulation, bf16 rounding at the same points) stays 20x (float32: about 2^-21 of
//   the head's max|K|) and 2.8x (bf16) below this bound; a wrong position or page is of order |K|.
// - A slot outside the cache (engine level, the example's paged layout): Error(out_of_range)
//   from GpuEngine::check, and not a byte written outside the valid rows (guard pages around
//   the cache in the same allocation).
//
// The suite is named glm_attention_gpu_example so `ctest -R glm_attention` selects it with the CPU one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "glm4_attention_gpu_layer.hpp"
#include "glm4_attention_layer.hpp"
#include "schedule_run.hpp"
#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"

namespace ex = posenc::examples;
using posenc::DType;

namespace {

double output_tolerance(DType dtype) { return dtype == DType::f32 ? 1e-5 : 3e-2; }

ex::GlmAttentionFixture load_fixture(const ex::GlmAttentionConfig& config) {
  return ex::GlmAttentionFixture::load(POSENC_GLM_ATTENTION_DIR, config);
}

/// Rotates `rows` ([tokens, heads, head_dim] values of `dtype`, held as float) with the CPU
/// engine in that dtype: what GpuEngine::append must have written for K.
std::vector<float> cpu_rotate(const posenc::RopeSpec& spec, std::vector<float> rows, std::int64_t tokens,
                              std::int64_t heads, std::int64_t head_dim, const std::vector<std::int64_t>& positions,
                              DType dtype) {
  posenc::RopeArgs args;
  args.positions = posenc::PositionsView{positions.data(), posenc::IndexType::i64, tokens, 1, 0};
  posenc::CpuEngine engine(spec);
  if (dtype == DType::f32) {
    args.q = posenc::TensorView::contiguous(rows.data(), DType::f32, tokens, heads, head_dim);
    engine.apply(args);
    return rows;
  }
  std::vector<std::uint16_t> bits(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) bits[i] = posenc::float_to_bf16_bits(rows[i]);  // exact: bf16 values
  args.q = posenc::TensorView::contiguous(bits.data(), DType::bf16, tokens, heads, head_dim);
  engine.apply(args);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = posenc::bf16_bits_to_float(bits[i]);
  return rows;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

class glm_attention_gpu_example : public posenc::test::GpuTest {
 protected:
  /// Runs the fixture schedule on the GPU layer (and the CPU layer alongside) and checks
  /// everything the header comment lists.
  void run_schedule(DType dtype);
};

void glm_attention_gpu_example::run_schedule(DType dtype) {
  const ex::GlmAttentionConfig config;
  const auto fixture = load_fixture(config);
  const auto schedule = ex::schedule_from_tokens(fixture.steps, fixture.seq_ids);
  ASSERT_EQ(schedule.size(), 33u);  // prefill + 32 decode steps
  ex::GlmGpuOptions options;
  options.dtype = dtype;
  // The cache is compared with the CPU engine bit for bit: both in correctly rounded cos/sin.
  options.hf_arithmetic = posenc::HfArithmetic::exact;
  ex::GlmAttentionGpuLayer layer(config, fixture.weights, options);
  ex::GlmAttentionLayer cpu(config, fixture.weights);
  auto spec = ex::glm_rope_spec(config);
  spec.hf_arithmetic = posenc::HfArithmetic::exact;
  const double tolerance = output_tolerance(dtype);

  const auto width = static_cast<std::size_t>(config.hidden_size);
  const std::int64_t kv = config.kv_heads * config.head_dim;
  const std::int64_t q_width = config.q_heads * config.head_dim;
  const std::int64_t qkv_width = q_width + 2 * kv;
  std::int64_t checked_tokens = 0;
  double worst = 0.0;
  for (std::size_t s = 0; s < schedule.size(); ++s) {
    const auto& step = schedule[s];
    std::map<std::int64_t, std::int64_t> length_before;
    for (const auto& e : step.entries) {
      if (!layer.contains(e.seq_id)) layer.add_sequence(e.seq_id);
      if (!cpu.tracker().contains(e.seq_id)) cpu.add_sequence(e.seq_id);
      length_before[e.seq_id] = layer.length(e.seq_id);
    }
    const auto first = static_cast<std::size_t>(step.first) * width;
    const auto rows = static_cast<std::size_t>(step.count) * width;
    const std::vector<float> hidden(fixture.hidden.begin() + static_cast<std::ptrdiff_t>(first),
                                    fixture.hidden.begin() + static_cast<std::ptrdiff_t>(first + rows));
    std::vector<float> out(rows);
    std::vector<float> cpu_out(rows);
    const auto positions = layer.step(step.entries, hidden, out);
    cpu.step(step.entries, hidden, cpu_out);

    // The device tracker's positions must be exactly the ones HF's rotary module was given.
    ASSERT_EQ(positions.tokens(), step.count) << "step " << s;
    std::vector<std::int64_t> step_positions(static_cast<std::size_t>(step.count));
    for (std::int64_t t = 0; t < step.count; ++t) {
      ASSERT_EQ(positions.at(0, t), fixture.positions[static_cast<std::size_t>(step.first + t)])
          << "step " << s << " token " << t;
      step_positions[static_cast<std::size_t>(t)] = positions.at(0, t);
    }

    // Output per token, relative to the step's scale.
    const double scale = ex::step_scale(fixture, step, width);
    ASSERT_GT(scale, 0.0);
    const std::vector<double> errors = ex::token_errors(out, fixture, step, width);
    for (std::int64_t t = 0; t < step.count; ++t) {
      const double err = errors[static_cast<std::size_t>(t)];
      EXPECT_LE(err, tolerance * scale)
          << to_string(dtype) << " step " << s << " token " << t << " (sequence "
          << fixture.seq_ids[static_cast<std::size_t>(step.first + t)] << ", position " << positions.at(0, t) << ")";
      worst = std::max(worst, err / scale);
      ++checked_tokens;
    }

    // The append, bit-exact: the layer's own pre-RoPE K rotated on the CPU == the K rows in the
    // paged cache; V rows == the projected V. Rows are found by sequence and cache index.
    const std::vector<float> qkv = layer.last_qkv();
    ASSERT_EQ(static_cast<std::int64_t>(qkv.size()), step.count * qkv_width);
    std::vector<float> k_pre(static_cast<std::size_t>(step.count * kv));
    for (std::int64_t t = 0; t < step.count; ++t) {
      std::copy_n(qkv.begin() + t * qkv_width + q_width, kv, k_pre.begin() + t * kv);
    }
    const std::vector<float> k_want =
        cpu_rotate(spec, k_pre, step.count, config.kv_heads, config.head_dim, step_positions, dtype);
    std::map<std::int64_t, std::vector<float>> k_rows;
    std::map<std::int64_t, std::vector<float>> v_rows;
    std::map<std::int64_t, std::int64_t> seen;
    std::int64_t mismatches = 0;
    for (std::int64_t t = 0; t < step.count; ++t) {
      const std::int64_t seq = fixture.seq_ids[static_cast<std::size_t>(step.first + t)];
      if (!k_rows.count(seq)) {
        k_rows[seq] = layer.k_cache(seq);
        v_rows[seq] = layer.v_cache(seq);
      }
      const std::int64_t index = length_before[seq] + seen[seq]++;
      for (std::int64_t e = 0; e < kv; ++e) {
        const float k_got = k_rows[seq][static_cast<std::size_t>(index * kv + e)];
        const float v_got = v_rows[seq][static_cast<std::size_t>(index * kv + e)];
        const float v_want = qkv[static_cast<std::size_t>(t * qkv_width + q_width + kv + e)];
        if ((!same_bits(k_got, k_want[static_cast<std::size_t>(t * kv + e)]) || !same_bits(v_got, v_want)) &&
            mismatches++ < 10) {
          ADD_FAILURE() << to_string(dtype) << " step " << s << " token " << t << " element " << e << ": K cache "
                        << k_got << " vs CPU rotation " << k_want[static_cast<std::size_t>(t * kv + e)] << ", V cache "
                        << v_got << " vs projected " << v_want;
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << "step " << s;
  }
  EXPECT_EQ(checked_tokens, fixture.tokens);
  std::cout << "[ NOTE     ] " << to_string(dtype) << ": worst relative output error " << worst << " (tolerance "
            << tolerance << ")\n";

  // Paging really happened: every sequence spans several pages, and the pages are scattered.
  bool scattered = false;
  for (std::int64_t seq = 0; seq < 4; ++seq) {
    const auto pages = layer.pages(seq);
    EXPECT_GE(pages.size(), 2u) << "sequence " << seq;
    for (std::size_t p = 1; p < pages.size(); ++p) scattered |= pages[p] != pages[p - 1] + 1;
  }
  EXPECT_TRUE(scattered) << "every sequence got consecutive pages: the block table is not exercised";

  // Against the CPU example's K cache (same slot content), within the bound derived at the top.
  const double u = std::ldexp(1.0, -24);
  const double h = static_cast<double>(config.hidden_size);
  const double c_proj = dtype == DType::f32 ? (h + 3) * u : 1.01 * (std::ldexp(1.0, -8) + std::ldexp(1.0, -9)) + (h + 3) * u;
  const double r_rot = dtype == DType::f32 ? std::ldexp(1.0, -21) : std::ldexp(1.0, -7);
  const std::int64_t rotary = spec.rotary();
  const auto head_dim = config.head_dim;
  std::map<std::int64_t, std::vector<float>> gpu_k;
  std::map<std::int64_t, std::int64_t> seen;
  double max_rel_to_head = 0.0;
  std::int64_t failures = 0;
  for (std::int64_t i = 0; i < fixture.tokens; ++i) {
    const std::int64_t seq = fixture.seq_ids[static_cast<std::size_t>(i)];
    if (!gpu_k.count(seq)) gpu_k[seq] = layer.k_cache(seq);
    const std::int64_t index = seen[seq]++;
    const float* x = fixture.hidden.data() + i * config.hidden_size;
    std::vector<double> a(static_cast<std::size_t>(kv));
    for (std::int64_t e = 0; e < kv; ++e) {
      const float* w = fixture.weights.k_weight.data() + e * config.hidden_size;
      double sum = std::abs(static_cast<double>(fixture.weights.k_bias[static_cast<std::size_t>(e)]));
      for (std::int64_t k = 0; k < config.hidden_size; ++k) sum += std::abs(static_cast<double>(x[k]) * w[k]);
      a[static_cast<std::size_t>(e)] = sum;
    }
    const auto cpu_row = (cpu.cache_block(seq) * config.max_len + index) * kv;
    for (std::int64_t hd = 0; hd < config.kv_heads; ++hd) {
      double head_max = 0.0;
      for (std::int64_t d = 0; d < head_dim; ++d) {
        head_max = std::max(head_max, std::abs(static_cast<double>(cpu.k_cache()[static_cast<std::size_t>(cpu_row + hd * head_dim + d)])));
      }
      for (std::int64_t d = 0; d < head_dim; ++d) {
        const std::int64_t e = hd * head_dim + d;
        const double a_e = a[static_cast<std::size_t>(e)];
        double bound = c_proj * a_e;
        if (d < rotary) {
          const double a_j = a[static_cast<std::size_t>(hd * head_dim + (d ^ 1))];  // interleaved pair partner
          bound = c_proj * (a_e + a_j) + r_rot * 2.0 * (a_e + a_j);
        }
        const double got = gpu_k[seq][static_cast<std::size_t>(index * kv + e)];
        const double want = cpu.k_cache()[static_cast<std::size_t>(cpu_row + e)];
        const double diff = std::abs(got - want);
        if (head_max > 0) max_rel_to_head = std::max(max_rel_to_head, diff / head_max);
        if (diff > bound && failures++ < 10) {
          ADD_FAILURE() << to_string(dtype) << " token " << i << " (sequence " << seq << ", index " << index
                        << ") K element " << e << ": GPU " << got << " vs CPU example " << want << " (bound " << bound
                        << ")";
        }
      }
    }
  }
  EXPECT_EQ(failures, 0);
  std::cout << "[ NOTE     ] " << to_string(dtype) << ": K cache vs the CPU example: max |diff| = 2^"
            << (max_rel_to_head > 0 ? std::log2(max_rel_to_head) : -999.0) << " of the head's max|K|\n";

  // Counters: one append per step, every token once, device time collected for every call (the
  // step synchronizes, so no timing is pending when they are read).
  const posenc::OperationCounters counters = layer.counters();
  EXPECT_EQ(counters.calls, static_cast<std::int64_t>(schedule.size()));
  EXPECT_EQ(counters.tokens, fixture.tokens);
  EXPECT_GT(counters.bytes, 0);
  EXPECT_EQ(counters.timed_calls, counters.calls);
  EXPECT_GT(counters.device_ms, 0.0);
  std::cout << "[ NOTE     ] " << to_string(dtype) << ": counters calls " << counters.calls << " tokens " << counters.tokens
            << " bytes " << counters.bytes << " device_ms " << counters.device_ms << "\n";
}

TEST_F(glm_attention_gpu_example, Float32MatchesTransformersAtEveryStep) { run_schedule(DType::f32); }

TEST_F(glm_attention_gpu_example, Bfloat16MatchesTransformersAtEveryStep) { run_schedule(DType::bf16); }

TEST_F(glm_attention_gpu_example, StepPastMaxLenThrowsAndCommitsNothing) {
  const ex::GlmAttentionConfig config;
  ex::GlmAttentionGpuLayer layer(config, ex::GlmAttentionWeights::random(config, 3));
  layer.add_sequence(7);
  const std::int64_t too_many = config.max_len + 1;
  std::vector<float> hidden(static_cast<std::size_t>(too_many * config.hidden_size), 0.5f);
  std::vector<float> out(hidden.size());
  const std::vector<posenc::glm::StepEntry> entries{{7, too_many}};
  try {
    layer.step(entries, hidden, out);
    FAIL() << "a step past max_len must throw";
  } catch (const posenc::Error& e) {
    EXPECT_EQ(e.kind(), posenc::ErrorKind::out_of_range) << e.what();
  }
  EXPECT_EQ(layer.length(7), 0);
  EXPECT_TRUE(layer.pages(7).empty());
  // The layer still works, from position 0.
  hidden.resize(static_cast<std::size_t>(3 * config.hidden_size));
  out.resize(hidden.size());
  const std::vector<posenc::glm::StepEntry> ok{{7, 3}};
  const auto positions = layer.step(ok, hidden, out);
  ASSERT_EQ(positions.tokens(), 3);
  for (std::int64_t t = 0; t < 3; ++t) EXPECT_EQ(positions.at(0, t), t);
}

// A slot outside the paged cache, given straight to GpuEngine::append in the example's layout:
// reported by check() as out_of_range naming the slot, nothing written outside the valid rows,
// Q still rotated for every token, and the record cleared afterwards.
TEST_F(glm_attention_gpu_example, SlotOutsideTheCacheIsReportedAndWritesNothing) {
  const ex::GlmAttentionConfig config;
  auto spec = ex::glm_rope_spec(config);
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  posenc::gpu::GpuEngine engine(spec, device);
  posenc::CpuEngine cpu_engine(spec);
  constexpr std::int64_t tokens = 4;
  constexpr std::int64_t page_size = 8;
  constexpr std::int64_t pages = 2;  // cache slots [0, 16)
  const std::int64_t row = config.kv_heads * config.head_dim;
  const std::int64_t page_elems = page_size * row;
  const std::vector<std::int64_t> positions{0, 5, 9, 47};
  // Token 1: far past the end; token 2: below -1; token 3: -1 (padding, legal); token 0: valid.
  const std::vector<std::int64_t> slots{3, 23, -2, -1};

  for (const DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(to_string(dtype));
    const std::int64_t e = posenc::size_of(dtype);
    const auto cache_dtype = posenc::cache_dtype_of(dtype);
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
    const auto random_bytes = [&](std::int64_t count) {
      std::vector<unsigned char> bytes(static_cast<std::size_t>(count * e));
      for (std::int64_t i = 0; i < count; ++i) {
        const float f = dist(rng);
        if (dtype == DType::f32) {
          std::memcpy(bytes.data() + i * 4, &f, 4);
        } else {
          const std::uint16_t b = posenc::float_to_bf16_bits(f);
          std::memcpy(bytes.data() + i * 2, &b, 2);
        }
      }
      return bytes;
    };
    std::vector<unsigned char> q = random_bytes(tokens * config.q_heads * config.head_dim);
    const std::vector<unsigned char> k = random_bytes(tokens * row);
    const std::vector<unsigned char> v = random_bytes(tokens * row);
    // K and V caches each with a guard page before and after, all poisoned.
    const std::int64_t cache_bytes = (pages + 2) * page_elems * e;
    std::vector<unsigned char> k_cache(static_cast<std::size_t>(cache_bytes), 0x5a);
    std::vector<unsigned char> v_cache(static_cast<std::size_t>(cache_bytes), 0xa5);

    const auto to_device = [&](const void* host, std::int64_t bytes) {
      posenc::gpu::DeviceBuffer buffer(device, bytes);
      buffer.upload(host, bytes, ref());
      return buffer;
    };
    auto d_q = to_device(q.data(), static_cast<std::int64_t>(q.size()));
    auto d_k = to_device(k.data(), static_cast<std::int64_t>(k.size()));
    auto d_v = to_device(v.data(), static_cast<std::int64_t>(v.size()));
    auto d_positions = to_device(positions.data(), tokens * 8);
    auto d_slots = to_device(slots.data(), tokens * 8);
    auto d_k_cache = to_device(k_cache.data(), cache_bytes);
    auto d_v_cache = to_device(v_cache.data(), cache_bytes);

    const auto make_args = [&](void* q_data, const void* k_data, const void* v_data, const void* pos,
                               const std::int64_t* slot_data, void* kc, void* vc) {
      posenc::AppendArgs args;
      args.q = posenc::TensorView::contiguous(q_data, dtype, tokens, config.q_heads, config.head_dim);
      args.k = posenc::ConstTensorView(k_data, dtype, tokens, config.kv_heads, config.head_dim, row, config.head_dim);
      args.v = posenc::ConstTensorView(v_data, dtype, tokens, config.kv_heads, config.head_dim, row, config.head_dim);
      args.positions = posenc::PositionsView{pos, posenc::IndexType::i64, tokens, 1, 0};
      args.slots = slot_data;
      // The cache starts one guard page into each allocation.
      args.cache = posenc::KvCacheView{static_cast<unsigned char*>(kc) + page_elems * e,
                                       static_cast<unsigned char*>(vc) + page_elems * e,
                                       cache_dtype,
                                       posenc::CacheLayout::paged_nhd,
                                       config.kv_heads,
                                       config.head_dim,
                                       pages,
                                       page_size};
      return args;
    };
    engine.append(make_args(d_q.data(), d_k.data(), d_v.data(), d_positions.data(),
                            static_cast<const std::int64_t*>(d_slots.data()), d_k_cache.data(), d_v_cache.data()),
                  ref());
    try {
      engine.check(ref());
      ADD_FAILURE() << "check() must report the slot outside the cache";
    } catch (const posenc::Error& error) {
      EXPECT_EQ(error.kind(), posenc::ErrorKind::out_of_range) << error.what();
      EXPECT_NE(std::string(error.what()).find("23"), std::string::npos) << "the message should name the slot: " << error.what();
    }
    EXPECT_NO_THROW(engine.check(ref())) << "the fault record must be cleared by the check that reported it";

    // What must be there: the CPU engine's append with the bad slots skipped (-1), on host copies.
    std::vector<unsigned char> q_want = q;
    std::vector<unsigned char> k_cache_want = k_cache;
    std::vector<unsigned char> v_cache_want = v_cache;
    const std::vector<std::int64_t> valid_slots{3, -1, -1, -1};
    cpu_engine.append(make_args(q_want.data(), k.data(), v.data(), positions.data(), valid_slots.data(),
                                k_cache_want.data(), v_cache_want.data()));

    std::vector<unsigned char> q_got(q.size());
    std::vector<unsigned char> k_cache_got(k_cache.size());
    std::vector<unsigned char> v_cache_got(v_cache.size());
    d_q.download(q_got.data(), static_cast<std::int64_t>(q_got.size()), ref());
    d_k_cache.download(k_cache_got.data(), cache_bytes, ref());
    d_v_cache.download(v_cache_got.data(), cache_bytes, ref());
    stream->synchronize();
    EXPECT_TRUE(q_got == q_want) << "Q must be rotated for every token, bad slots included";
    EXPECT_TRUE(k_cache_got == k_cache_want) << "K cache (guard pages included) differs from the CPU append without the bad slots";
    EXPECT_TRUE(v_cache_got == v_cache_want) << "V cache (guard pages included) differs from the CPU append without the bad slots";
    EXPECT_TRUE(k_cache_got != k_cache) << "the valid slot 3 must have been written";
  }
}

}  // namespace
