// Model parity: posenc against fixtures written by Hugging Face transformers' own RoPE code (tests/golden).
//
// Each family directory holds what scripts/golden/generate.py recorded on a CPU: random Q/K in
// bf16, fp16 and fp32, positions, the inv_freq and attention factor transformers' rotary module
// used for the call, and transformers' outputs. For every case this test checks:
//   1. inv_freq: posenc's own table (from the family's config.json; hf_arithmetic engine is
//      torch_cpu on the host) equals the fixture's bit for bit where this CPU has the fixture's
//      torch CPU capability, else within 1 float32 ulp (the capability moves entries between
//      SLEEF's and glibc's powf; docs/NUMERICS.md §3.4). It prints how many entries were exact.
//   2. Outputs in the config's numerics with the fixture's inv_freq fed in, on the CPU engine
//      (torch_cpu: MKL's cos/sin as torch's): bit for bit in every dtype where this CPU's MKL
//      kernel is the fixtures' host's (tests/support/trig_fingerprint.hpp). Elsewhere, and in a
//      build without MKL (which runs the exact arithmetic), bf16 and fp16 bit for bit, fp32 within
//      2^-21 * max|x| of the head (an Intel CPU's MKL kernels round some float32 cos/sin
//      differently; torch on that CPU differs from the fixtures the same way).
//   3. When posenc's own table was bit-exact, the same bit-for-bit outputs with posenc's table
//      (the full path a user gets from the config alone).
//   4. The GPU engine gives the same bits as the CPU engine in the exact arithmetic, where a GPU
//      is present.
// M-RoPE fixtures (qwen2-vl, glm4v) store positions as [3, tokens] (t, h, w), passed as three
// position streams; their "grid" cases have distinct t/h/w positions, so the sections are checked.
// MLA (tests/golden/deepseek_v3_mla, scripts/golden/mla.py): DeepSeek-V3's rope slices rotated by
// transformers' DeepseekV3RotaryEmbedding and apply_rotary_pos_emb_interleave, bf16. posenc's
// append with the mla layout, Q's slice in place inside [T, H, 128 + 64] and k_pe/c_kv slices of
// one compressed-KV row [512 | 64], must give transformers' bits in Q's slice and in each slotted
// cache row's k_pe, with the nope part and the latent passed through unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/hf_arithmetic.hpp"
#include "support/trig_fingerprint.hpp"
#include "posenc/cpu.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"
#include "npy.hpp"

namespace {

namespace fs = std::filesystem;
using posenc::cli::NpyArray;
using posenc::cli::read_npy;

const fs::path golden_dir{POSENC_GOLDEN_DIR};
const fs::path source_dir{POSENC_SOURCE_DIR};

std::vector<std::string> families() {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(golden_dir)) {
    if (entry.is_directory() && fs::exists(entry.path() / "meta.json")) {
      out.push_back(entry.path().filename().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

posenc::DType dtype_of(const std::string& name) { return posenc::parse_dtype(name.c_str()); }

template <typename T>
std::vector<T> as_vector(const NpyArray& a) {
  std::vector<T> v(static_cast<std::size_t>(a.count()));
  std::memcpy(v.data(), a.data.data(), v.size() * sizeof(T));
  return v;
}

/// Element i of a fixture tensor as float (bf16 arrays hold raw bits as uint16).
float element(const NpyArray& a, posenc::DType t, std::int64_t i) {
  if (t == posenc::DType::f32) {
    float f;
    std::memcpy(&f, a.data.data() + i * 4, 4);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, a.data.data() + i * 2, 2);
  return t == posenc::DType::bf16 ? posenc::bf16_bits_to_float(h) : posenc::f16_bits_to_float(h);
}

std::int64_t float_ulps(float a, float b) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = std::numeric_limits<std::int32_t>::min() - ia;
  if (ib < 0) ib = std::numeric_limits<std::int32_t>::min() - ib;
  return std::llabs(static_cast<std::int64_t>(ia) - ib);
}

struct Outputs {
  std::vector<std::byte> q;
  std::vector<std::byte> k;
};

/// Rotates the fixture's inputs with `engine_apply` out of place into fresh buffers. `positions`
/// holds `streams` streams of equal length back to back (M-RoPE fixtures: t, h, w).
template <typename Apply>
Outputs rotate(const NpyArray& q_in, const NpyArray& k_in, posenc::DType t,
               const std::vector<std::int64_t>& positions, std::int32_t streams, Apply&& engine_apply) {
  const auto& qs = q_in.shape;
  const auto& ks = k_in.shape;
  Outputs out{std::vector<std::byte>(q_in.data.size()), std::vector<std::byte>(k_in.data.size())};
  posenc::RopeArgs args;
  args.q = posenc::TensorView::contiguous(out.q.data(), t, qs[0], qs[1], qs[2]);
  args.k = posenc::TensorView::contiguous(out.k.data(), t, ks[0], ks[1], ks[2]);
  args.q_src = posenc::TensorView::contiguous(const_cast<std::byte*>(q_in.data.data()), t, qs[0], qs[1], qs[2]);
  args.k_src = posenc::TensorView::contiguous(const_cast<std::byte*>(k_in.data.data()), t, ks[0], ks[1], ks[2]);
  const std::int64_t count = static_cast<std::int64_t>(positions.size()) / streams;
  args.positions = {positions.data(), posenc::IndexType::i64, count, streams, count};
  engine_apply(args);
  return out;
}

/// Compares posenc's output bytes with the fixture: bit-exact, or (fp32) within 2^-21 max|x_head|.
::testing::AssertionResult matches(const std::vector<std::byte>& got, const NpyArray& want,
                                   const NpyArray& input, posenc::DType t, bool exact,
                                   const std::string& what) {
  const std::int64_t tokens = want.shape[0], heads = want.shape[1], dim = want.shape[2];
  NpyArray got_arr{want.type, want.shape, got};
  std::int64_t mismatches = 0;
  for (std::int64_t th = 0; th < tokens * heads; ++th) {
    float max_in = 0.0f;
    for (std::int64_t d = 0; d < dim; ++d) max_in = std::max(max_in, std::fabs(element(input, t, th * dim + d)));
    for (std::int64_t d = 0; d < dim; ++d) {
      const std::int64_t i = th * dim + d;
      const float g = element(got_arr, t, i), w = element(want, t, i);
      const bool ok = exact ? std::memcmp(&g, &w, 4) == 0 || (std::isnan(g) && std::isnan(w))
                            : std::fabs(g - w) <= std::ldexp(max_in, -21);
      if (!ok && mismatches++ == 0) {
        return ::testing::AssertionFailure()
               << what << ": first mismatch at token " << th / heads << ", head " << th % heads
               << ", dim " << d << ": posenc " << g << " vs transformers " << w << " ("
               << float_ulps(g, w) << " float32 ulps apart)";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, MatchesTransformers) {
  const fs::path dir = golden_dir / GetParam();
  const nlohmann::json meta = read_json(dir / "meta.json");
  const posenc::ModelConfig model = posenc::load_model_config((source_dir / meta["config"].get<std::string>()).string());
  const std::string layer_type = meta["layer_type"].get<std::string>();
  // The CPU engine's own arithmetic (torch_cpu) where this build links MKL, else exact.
  const bool torch_cpu = posenc::detail::torch_cpu_trig_available();
  // The golden fixtures come from the host of tests/golden/arithmetic/torch_cpu (its fingerprint).
  const bool same_trig =
      torch_cpu && posenc::test::torch_cpu_trig_fingerprint() ==
                       read_json(golden_dir / "arithmetic" / "torch_cpu" / "meta.json")["cpu_trig_fingerprint"].get<std::string>();
  posenc::RopeSpec own_spec = model.spec(layer_type == "default" ? "default" : layer_type);
  own_spec.qk_norm = {};  // these fixtures record the rotation alone; tests/golden/qk_norm has the norm stage
  if (!torch_cpu) own_spec.hf_arithmetic = posenc::HfArithmetic::exact;
  const std::string capability = meta["cpu_capability"].get<std::string>();
  const bool same_capability =
      (capability == "AVX512" && posenc::detail::torch_cpu_capability() == posenc::detail::TorchCpuCapability::avx512) ||
      (capability == "AVX2" && posenc::detail::torch_cpu_capability() == posenc::detail::TorchCpuCapability::avx2) ||
      (capability == "DEFAULT" && posenc::detail::torch_cpu_capability() == posenc::detail::TorchCpuCapability::baseline);
  const bool gpu = posenc::gpu::available();
  if (!gpu) {
    std::cout << "[ NOTE     ] " << GetParam() << ": GPU half not run (" << posenc::gpu::unavailable_reason()
              << "); the CPU engine is checked\n";
  }

  for (const auto& c : meta["cases"]) {
    const std::string case_name = c["name"].get<std::string>();
    SCOPED_TRACE(GetParam() + "/" + case_name);
    const NpyArray pos_arr = read_npy((dir / c["positions"].get<std::string>()).string());
    const std::vector<std::int64_t> positions = as_vector<std::int64_t>(pos_arr);
    // M-RoPE fixtures hold [streams, tokens] (t, h, w), stream-major as PositionsView reads them.
    const auto streams = static_cast<std::int32_t>(pos_arr.shape.size() == 2 ? pos_arr.shape[0] : 1);
    ASSERT_EQ(streams, own_spec.position_streams()) << "positions fixture streams vs the config's spec";
    std::int64_t max_pos = 0;
    for (auto p : positions) max_pos = std::max(max_pos, p);

    // 1. inv_freq and attention factor.
    const std::vector<float> want_inv = as_vector<float>(read_npy((dir / c["inv_freq"].get<std::string>()).string()));
    const posenc::FrequencyTable own = posenc::compute_frequencies(own_spec, max_pos + 1);
    ASSERT_EQ(own.inv_freq.size(), want_inv.size()) << "rotary dim differs from transformers'";
    std::int64_t exact = 0, worst = 0;
    for (std::size_t i = 0; i < want_inv.size(); ++i) {
      const std::int64_t u = float_ulps(own.inv_freq[i], want_inv[i]);
      exact += u == 0;
      worst = std::max(worst, u);
      EXPECT_LE(u, 1) << "inv_freq[" << i << "]: posenc " << own.inv_freq[i] << " vs " << want_inv[i];
    }
    const bool own_table_exact = exact == static_cast<std::int64_t>(want_inv.size());
    if (torch_cpu && same_capability) {
      EXPECT_TRUE(own_table_exact) << "torch_cpu at the fixture's CPU capability";
    }
    std::cout << "[ NOTE     ] " << GetParam() << "/" << case_name << ": inv_freq " << exact << "/"
              << want_inv.size() << " bit-exact (worst " << worst << " ulp; fixture cpu capability "
              << meta["cpu_capability"].get<std::string>() << ")"
              << (own_table_exact ? "" : "; outputs checked with the fixture's inv_freq fed in") << "\n";
    const double want_af = c["attention_factor"].get<double>();
    EXPECT_NEAR(own.attention_factor, want_af, 1e-12 * std::max(1.0, want_af));

    posenc::RopeSpec fed = own_spec;
    fed.scaling = posenc::Scaling::table;
    fed.params.inv_freq = want_inv;
    fed.attention_factor = want_af;

    for (const auto& [dname, files] : c["dtypes"].items()) {
      SCOPED_TRACE(dname);
      const posenc::DType t = dtype_of(dname);
      const bool exact_dtype = same_trig || t != posenc::DType::f32;
      const NpyArray q_in = read_npy((dir / files["q"].get<std::string>()).string());
      const NpyArray k_in = read_npy((dir / files["k"].get<std::string>()).string());
      const NpyArray q_want = read_npy((dir / files["q_out"].get<std::string>()).string());
      const NpyArray k_want = read_npy((dir / files["k_out"].get<std::string>()).string());

      // 2. fixture table fed in.
      const posenc::CpuEngine fed_engine(fed);
      const Outputs cpu =
          rotate(q_in, k_in, t, positions, streams, [&](const posenc::RopeArgs& a) { fed_engine.apply(a); });
      EXPECT_TRUE(matches(cpu.q, q_want, q_in, t, exact_dtype, "Q (CPU, fixture inv_freq)"));
      EXPECT_TRUE(matches(cpu.k, k_want, k_in, t, exact_dtype, "K (CPU, fixture inv_freq)"));

      // 3. posenc's own table from the config alone.
      if (own_table_exact) {
        const posenc::CpuEngine own_engine(own_spec);
        const Outputs mine =
            rotate(q_in, k_in, t, positions, streams, [&](const posenc::RopeArgs& a) { own_engine.apply(a); });
        EXPECT_TRUE(matches(mine.q, q_want, q_in, t, exact_dtype, "Q (CPU, posenc inv_freq)"));
        EXPECT_TRUE(matches(mine.k, k_want, k_in, t, exact_dtype, "K (CPU, posenc inv_freq)"));
      }

      // 4. GPU: the same bits as the CPU engine, both in the exact arithmetic.
      if (gpu) {
        posenc::RopeSpec fed_exact = fed;
        fed_exact.hf_arithmetic = posenc::HfArithmetic::exact;
        const posenc::CpuEngine cpu_exact_engine(fed_exact);
        const Outputs cpu_exact = rotate(q_in, k_in, t, positions, streams,
                                         [&](const posenc::RopeArgs& a) { cpu_exact_engine.apply(a); });
        const auto device = posenc::gpu::Device::open(0);
        const posenc::gpu::Stream stream(device);
        const posenc::gpu::GpuEngine engine(fed_exact, device);
        auto run_gpu = [&](const posenc::RopeArgs& host) {
          const std::int64_t qb = static_cast<std::int64_t>(q_in.data.size()), kb = static_cast<std::int64_t>(k_in.data.size());
          const std::int64_t pb = static_cast<std::int64_t>(positions.size() * 8);
          posenc::gpu::DeviceBuffer dq(device, qb), dk(device, kb), dqi(device, qb), dki(device, kb), dp(device, pb);
          dqi.upload(host.q_src.data, qb, stream.ref());
          dki.upload(host.k_src.data, kb, stream.ref());
          dp.upload(positions.data(), pb, stream.ref());
          dq.fill_bytes(0xff, stream.ref());
          dk.fill_bytes(0xff, stream.ref());
          posenc::RopeArgs d = host;
          d.q.data = dq.data();
          d.k.data = dk.data();
          d.q_src.data = dqi.data();
          d.k_src.data = dki.data();
          d.positions.data = dp.data();
          engine.apply(d, stream.ref());
          dq.download(host.q.data, qb, stream.ref());
          dk.download(host.k.data, kb, stream.ref());
          engine.check(stream.ref());
        };
        const Outputs g = rotate(q_in, k_in, t, positions, streams, run_gpu);
        EXPECT_TRUE(g.q == cpu_exact.q) << "GPU Q differs from the CPU engine (exact arithmetic)";
        EXPECT_TRUE(g.k == cpu_exact.k) << "GPU K differs from the CPU engine (exact arithmetic)";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, Golden, ::testing::ValuesIn(families()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string name = param_info.param;
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST(GoldenMla, DeepSeekV3AppendMatchesTransformers) {
  const fs::path dir = golden_dir / "deepseek_v3_mla";
  const nlohmann::json meta = read_json(dir / "mla.meta.json");
  posenc::RopeSpec spec =
      posenc::load_model_config((source_dir / meta["config"].get<std::string>()).string()).spec();
  if (!posenc::detail::torch_cpu_trig_available()) spec.hf_arithmetic = posenc::HfArithmetic::exact;
  const std::vector<std::int64_t> positions = as_vector<std::int64_t>(read_npy((dir / "positions.npy").string()));
  const std::vector<float> want_inv = as_vector<float>(read_npy((dir / "inv_freq.npy").string()));
  const auto tokens = static_cast<std::int64_t>(positions.size());
  const std::int64_t heads = meta["q_heads"].get<std::int64_t>();
  const std::int64_t nope = meta["qk_nope_head_dim"].get<std::int64_t>();
  const std::int64_t rope = meta["qk_rope_head_dim"].get<std::int64_t>();
  const std::int64_t latent = meta["kv_lora_rank"].get<std::int64_t>();
  ASSERT_EQ(rope, spec.head_dim);
  ASSERT_EQ(spec.pairing, posenc::Pairing::interleaved_to_half);

  // posenc's table from the config alone; where it is not transformers' (another CPU capability,
  // docs/NUMERICS.md §3.4), the fixture's table is fed in, as for the RoPE families.
  const posenc::FrequencyTable own = posenc::compute_frequencies(spec);
  ASSERT_EQ(own.inv_freq.size(), want_inv.size());
  EXPECT_EQ(own.attention_factor, meta["attention_factor"].get<double>());
  if (std::memcmp(own.inv_freq.data(), want_inv.data(), want_inv.size() * sizeof(float)) != 0) {
    std::cout << "[ NOTE     ] deepseek_v3_mla: posenc's inv_freq differs from the fixture's; fed in\n";
    spec.scaling = posenc::Scaling::table;
    spec.params.inv_freq = want_inv;
    spec.attention_factor = meta["attention_factor"].get<double>();
  }

  const NpyArray q_pe = read_npy((dir / "q_pe.npy").string());
  const NpyArray q_out = read_npy((dir / "q_out.npy").string());
  const NpyArray k_pe = read_npy((dir / "k_pe.npy").string());
  const NpyArray k_out = read_npy((dir / "k_out.npy").string());
  ASSERT_EQ(q_pe.shape, (std::vector<std::int64_t>{tokens, heads, rope}));
  ASSERT_EQ(k_pe.shape, (std::vector<std::int64_t>{tokens, 1, rope}));

  // Random pass-through parts around the fixture's rope slices (bf16 bits, never NaN).
  std::mt19937 rng(7);
  auto random_bits = [&](std::size_t n) {
    std::vector<std::uint16_t> v(n);
    for (auto& x : v) x = static_cast<std::uint16_t>((rng() & 0x3fff) | 0x3000 | (rng() & 1) << 15);
    return v;
  };
  const std::int64_t qd = nope + rope;
  const std::int64_t row = latent + rope;
  std::vector<std::uint16_t> q_full = random_bits(static_cast<std::size_t>(tokens * heads * qd));
  std::vector<std::uint16_t> ckv = random_bits(static_cast<std::size_t>(tokens * row));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t h = 0; h < heads; ++h) {
      std::memcpy(&q_full[static_cast<std::size_t>((t * heads + h) * qd + nope)],
                  q_pe.data.data() + (t * heads + h) * rope * 2, static_cast<std::size_t>(rope * 2));
    }
    std::memcpy(&ckv[static_cast<std::size_t>(t * row + latent)], k_pe.data.data() + t * rope * 2,
                static_cast<std::size_t>(rope * 2));
  }
  const std::vector<std::uint16_t> q_in = q_full;
  const std::vector<std::uint16_t> ckv_in = ckv;

  // Slots: a shuffled cache of 2 * tokens slots, every 9th token padding.
  const std::int64_t blocks = 2 * tokens / 16;
  std::vector<std::int64_t> order(static_cast<std::size_t>(blocks * 16));
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>(i);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::int64_t> slots(order.begin(), order.begin() + tokens);
  for (std::int64_t t = 8; t < tokens; t += 9) slots[static_cast<std::size_t>(t)] = -1;

  for (bool use_engine : {true, false}) {
    SCOPED_TRACE(use_engine ? "CpuEngine::append" : "append_reference");
    std::vector<std::uint16_t> q = q_in;
    std::vector<std::uint16_t> cache(static_cast<std::size_t>(blocks * 16 * row), 0x7fc1);  // poison
    posenc::AppendArgs a;
    a.q = {q.data() + nope, posenc::DType::bf16, tokens, heads, rope, heads * qd, qd};
    a.k = {ckv.data() + latent, posenc::DType::bf16, tokens, 1, rope, row, rope};
    a.v = {ckv.data(), posenc::DType::bf16, tokens, 1, latent, row, latent};
    posenc::PositionsView pos;
    pos.data = positions.data();
    pos.count = tokens;
    a.positions = pos;
    a.slots = slots.data();
    a.cache.k = cache.data();
    a.cache.v = nullptr;
    a.cache.dtype = posenc::CacheDType::bf16;
    a.cache.layout = posenc::CacheLayout::mla;
    a.cache.kv_heads = 1;
    a.cache.head_dim = rope;
    a.cache.latent_dim = latent;
    a.cache.blocks = blocks;
    a.cache.block_len = 16;
    if (use_engine) {
      posenc::CpuEngine(spec).append(a);
    } else {
      posenc::append_reference(spec, a);
    }
    std::int64_t q_bad = 0, k_bad = 0, pass_bad = 0;
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::size_t at = static_cast<std::size_t>((t * heads + h) * qd);
        q_bad += std::memcmp(&q[at + static_cast<std::size_t>(nope)], q_out.data.data() + (t * heads + h) * rope * 2,
                             static_cast<std::size_t>(rope * 2)) != 0;
        pass_bad += std::memcmp(&q[at], &q_in[at], static_cast<std::size_t>(nope * 2)) != 0;
      }
      const std::int64_t slot = slots[static_cast<std::size_t>(t)];
      if (slot < 0) continue;
      const std::uint16_t* cached = &cache[static_cast<std::size_t>(slot * row)];
      k_bad += std::memcmp(cached + latent, k_out.data.data() + t * rope * 2, static_cast<std::size_t>(rope * 2)) != 0;
      pass_bad += std::memcmp(cached, &ckv_in[static_cast<std::size_t>(t * row)], static_cast<std::size_t>(latent * 2)) != 0;
    }
    EXPECT_EQ(q_bad, 0) << "Q rope rows differing from transformers' (of " << tokens * heads << ")";
    EXPECT_EQ(k_bad, 0) << "cached k_pe rows differing from transformers' apply_rotary_pos_emb_interleave";
    EXPECT_EQ(pass_bad, 0) << "nope rows or cached latents not passed through unchanged";
    EXPECT_EQ(ckv, ckv_in) << "the compressed KV input was written";
    std::vector<bool> used(static_cast<std::size_t>(blocks * 16), false);
    for (std::int64_t s : slots) {
      if (s >= 0) used[static_cast<std::size_t>(s)] = true;
    }
    std::int64_t stray = 0;
    for (std::size_t i = 0; i < cache.size(); ++i) stray += !used[i / static_cast<std::size_t>(row)] && cache[i] != 0x7fc1;
    EXPECT_EQ(stray, 0) << "cache elements written outside the slotted rows";
  }
}

}  // namespace
