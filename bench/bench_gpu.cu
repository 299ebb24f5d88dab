// GPU benchmark: posenc::gpu::GpuEngine timed against the copy bandwidth measured in the same run; CSV, Markdown, pass/fail.
//
// What it measures (docs/PERFORMANCE.md has the full method):
//   floor   cudaMemcpyAsync device-to-device of 1 GiB, and an in-place vectorized read-modify-write
//           kernel over the same GiB; bytes = read + write; median of 30; the better is the floor.
//   case    one apply (Q and K, in place) per launch, each launch between its own event pair,
//           median of many; inputs rotate among enough sets that the working set is >= 4x L2.
//   graph   N applies captured into a CUDA graph (several graphs for small T, so that replays also
//           rotate through more than L2), replayed; per-call time = replay time / N.
//   verify  once per case, before timing: sampled tokens against posenc::apply_reference (the
//           CPU definition; append_reference for the append rows), bit-exact for hf_compatible,
//           the case's kernels run with correctly rounded cos/sin (checkable(): the timed
//           arithmetic follows torch on the GPU, which no host code reproduces).
//   append  the fused RoPE + KV-cache append (GpuEngine::append: Q in place, K and V into a
//           contiguous or paged cache) against what a user runs without it (apply, then a
//           separate scatter of K and V into the cache, timed as one unit), both counted against
//           the bytes the fused operation must move; verified against posenc::append_reference.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_fp8.h>  // the unfused path's fp8 cast (this program is built for CUDA only)

#include "gpu/vendor.hpp"
#include "posenc/posenc.hpp"

#include "bench_common.hpp"
#include "peer_flashinfer.hpp"

namespace pb = posenc::bench;
using posenc::CacheDType;
using posenc::CacheLayout;
using posenc::DType;
using posenc::Numerics;
using posenc::Pairing;
using posenc::RopeArgs;
using posenc::RopeSpec;

namespace {

#define POSENC_BENCH_CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)

void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " failed (" + file + ":" + std::to_string(line) +
                             "): " + cudaGetErrorString(e));
  }
}

// ---- kernels: random fill and the read-modify-write floor ----------------------------------------

__global__ void fill_elements_kernel(void* data, std::int64_t count, int element_bytes, bool half,
                                     std::uint64_t seed) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step) {
    const std::uint32_t bits =
        pb::random_element_bits(pb::mix64(seed + static_cast<std::uint64_t>(i)), element_bytes, half);
    if (element_bytes == 4) {
      static_cast<std::uint32_t*>(data)[i] = bits;
    } else {
      static_cast<std::uint16_t*>(data)[i] = static_cast<std::uint16_t>(bits);
    }
  }
}

__global__ void fill_positions_kernel(std::int64_t* data, std::int64_t count, std::uint64_t seed,
                                      std::int64_t range) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step) {
    data[i] = pb::random_position(seed, i, range);
  }
}

/// A float32 cos/sin cache in the layout vLLM and FlashInfer keep: row p = [cos of the `half`
/// pairs at position p | their sin], angle p * inv_freq[i] in double, cos and sin times `factor`
/// rounded once to float32 (the cos/sin posenc's `accurate` numerics use).
__global__ void cos_sin_table_kernel(float* out, const float* inv_freq, std::int64_t rows, int half, double factor) {
  const std::int64_t count = rows * half;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count; e += step) {
    const std::int64_t p = e / half;
    const int i = static_cast<int>(e % half);
    double s = 0, c = 0;
    sincos(static_cast<double>(p) * static_cast<double>(inv_freq[i]), &s, &c);
    out[p * 2 * half + i] = static_cast<float>(c * factor);
    out[p * 2 * half + half + i] = static_cast<float>(s * factor);
  }
}

constexpr int rmw_block = 256;
constexpr int rmw_unroll = 4;

// x[i] = x[i] * a + b in place, 16-byte accesses, all of a thread's loads issued before its first
// store so that enough bytes are in flight to saturate HBM: the simplest kernel that moves the
// same bytes as an in-place RoPE (one read, one write per element).
__global__ void rmw_kernel(float4* x, std::int64_t n4, float a, float b) {
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * rmw_block * rmw_unroll + threadIdx.x;
  float4 v[rmw_unroll];
#pragma unroll
  for (int u = 0; u < rmw_unroll; ++u) {
    const std::int64_t i = base + static_cast<std::int64_t>(u) * rmw_block;
    v[u] = i < n4 ? x[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int u = 0; u < rmw_unroll; ++u) {
    const std::int64_t i = base + static_cast<std::int64_t>(u) * rmw_block;
    if (i < n4) {
      x[i] = make_float4(v[u].x * a + b, v[u].y * a + b, v[u].z * a + b, v[u].w * a + b);
    }
  }
}

/// The launch floor: a kernel that does nothing, with an argument block the size of the
/// rotation's (RopeKernelParams, about 300 bytes), so that its event-timed and graph-replayed
/// times show what any one launch costs on this card and host.
struct LaunchArgs {
  unsigned char bytes[320];
};

__global__ void empty_kernel(const LaunchArgs) {}

// ---- kernel: the unfused path's cache copy -------------------------------------------------------

/// Eight bfloat16 values (one 16-byte chunk) -> eight float8_e4m3fn bytes, e4m3(fl32(x / scale))
/// rounded to nearest even and saturated, the cast kv_cache.hpp defines.
__device__ uint2 bf16x8_to_e4m3x8(uint4 in, float scale) {
  const std::uint32_t words[4] = {in.x, in.y, in.z, in.w};
  std::uint32_t out[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const std::uint32_t bits = (words[i / 2] >> (16 * (i % 2))) & 0xffffu;
    const float x = __fdiv_rn(__uint_as_float(bits << 16), scale);
    out[i / 4] |= static_cast<std::uint32_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)) << (8 * (i % 4));
  }
  return make_uint2(out[0], out[1]);
}

/// What the unfused path launches after apply: K (rotated in place) and V, [tokens, kv_heads,
/// head_dim] bfloat16 back to back, copied to the cache rows of each token's slot.
struct ScatterKv {
  const uint4* k = nullptr;
  const uint4* v = nullptr;
  const std::int64_t* slots = nullptr;
  std::int64_t rows = 0;        ///< tokens * kv_heads
  std::int64_t row_chunks = 0;  ///< 16-byte chunks of one input row
  posenc::KvCacheView cache;
};

// One thread per 16-byte chunk of a (token, head) row, K and V loaded before either store, so
// each thread has two 16-byte loads in flight: the plain vectorized copy a user would write
// (vLLM's reshape_and_cache_flash moves the same bytes with narrower accesses).
template <bool to_fp8>
__global__ void scatter_kv_kernel(ScatterKv s) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= s.rows * s.row_chunks) return;
  const std::int64_t row = i / s.row_chunks;
  const std::int64_t chunk = i % s.row_chunks;
  const uint4 k = s.k[i];
  const uint4 v = s.v[i];
  const std::int64_t slot = s.slots[row / s.cache.kv_heads];
  if (slot < 0) return;  // padding token: nothing to write
  const std::int64_t at = pb::cache_row_element(s.cache, slot, row % s.cache.kv_heads);
  if constexpr (to_fp8) {
    reinterpret_cast<uint2*>(static_cast<unsigned char*>(s.cache.k) + at)[chunk] = bf16x8_to_e4m3x8(k, s.cache.k_scale);
    reinterpret_cast<uint2*>(static_cast<unsigned char*>(s.cache.v) + at)[chunk] = bf16x8_to_e4m3x8(v, s.cache.v_scale);
  } else {
    reinterpret_cast<uint4*>(static_cast<std::uint16_t*>(s.cache.k) + at)[chunk] = k;
    reinterpret_cast<uint4*>(static_cast<std::uint16_t*>(s.cache.v) + at)[chunk] = v;
  }
}

// The unfused path's third launch when Q goes out quantized (fp8 serving): the rotated bf16 Q,
// divided by the scale and cast to e4m3, one thread per 16-byte chunk (what a separate
// quantization kernel, e.g. vLLM's scaled_fp8_quant, moves).
__global__ void quantize_q_kernel(const uint4* q, uint2* out, std::int64_t chunks, float scale) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < chunks) out[i] = bf16x8_to_e4m3x8(q[i], scale);
}

// ---- the device, its stream and a pool of timing events ------------------------------------------

struct Gpu {
  posenc::gpu::Device device;
  posenc::gpu::Stream stream;
  cudaStream_t native = nullptr;
  std::vector<cudaEvent_t> starts;
  std::vector<cudaEvent_t> stops;

  explicit Gpu(int ordinal, int event_pairs)
      : device(posenc::gpu::Device::open(ordinal)), stream(device) {
    device.make_current();
    native = static_cast<cudaStream_t>(stream.ref().native());
    starts.resize(static_cast<std::size_t>(event_pairs));
    stops.resize(static_cast<std::size_t>(event_pairs));
    for (int i = 0; i < event_pairs; ++i) {
      POSENC_BENCH_CUDA_CHECK(cudaEventCreate(&starts[static_cast<std::size_t>(i)]));
      POSENC_BENCH_CUDA_CHECK(cudaEventCreate(&stops[static_cast<std::size_t>(i)]));
    }
  }
  ~Gpu() {
    for (cudaEvent_t e : starts) cudaEventDestroy(e);
    for (cudaEvent_t e : stops) cudaEventDestroy(e);
  }
  Gpu(const Gpu&) = delete;
  Gpu& operator=(const Gpu&) = delete;

  int event_pairs() const { return static_cast<int>(starts.size()); }
  void sync() const { POSENC_BENCH_CUDA_CHECK(cudaStreamSynchronize(native)); }

  void fill_elements(void* data, DType dtype, std::int64_t count, std::uint64_t seed) const {
    const int blocks = device.multiprocessor_count() * 8;
    fill_elements_kernel<<<blocks, 256, 0, native>>>(data, count, static_cast<int>(posenc::size_of(dtype)),
                                                     dtype == DType::f16, seed);
    POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  }
  void fill_positions(std::int64_t* data, std::int64_t count, std::uint64_t seed, std::int64_t range) const {
    fill_positions_kernel<<<device.multiprocessor_count() * 8, 256, 0, native>>>(data, count, seed, range);
    POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  }
};

/// Runs `body(i)` for i < n, each between its own event pair; returns the per-call microseconds.
/// The host does not wait between calls, so a call's time is its device time whenever the host
/// keeps ahead, and includes the launch gap when it does not (small calls): that gap is part of
/// what one launch costs.
std::vector<double> time_each(Gpu& g, int n, const std::function<void(int)>& body) {
  n = std::min(n, g.event_pairs());
  for (int i = 0; i < n; ++i) {
    POSENC_BENCH_CUDA_CHECK(cudaEventRecord(g.starts[static_cast<std::size_t>(i)], g.native));
    body(i);
    POSENC_BENCH_CUDA_CHECK(cudaEventRecord(g.stops[static_cast<std::size_t>(i)], g.native));
  }
  g.sync();
  std::vector<double> us(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    float ms = 0;
    POSENC_BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, g.starts[static_cast<std::size_t>(i)],
                                                 g.stops[static_cast<std::size_t>(i)]));
    us[static_cast<std::size_t>(i)] = 1e3 * static_cast<double>(ms);
  }
  return us;
}

/// Mean microseconds of `n` back-to-back calls between one event pair (a quick estimate).
double time_block(Gpu& g, int n, const std::function<void(int)>& body) {
  POSENC_BENCH_CUDA_CHECK(cudaEventRecord(g.starts[0], g.native));
  for (int i = 0; i < n; ++i) body(i);
  POSENC_BENCH_CUDA_CHECK(cudaEventRecord(g.stops[0], g.native));
  g.sync();
  float ms = 0;
  POSENC_BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, g.starts[0], g.stops[0]));
  return 1e3 * static_cast<double>(ms) / n;
}

// ---- the floor ---------------------------------------------------------------------------------

struct Floor {
  double memcpy_gbps = pb::not_measured;
  double rmw_gbps = pb::not_measured;
  std::int64_t buffer_bytes = 0;
  double best() const { return std::max(memcpy_gbps, rmw_gbps); }
  const char* kind() const { return memcpy_gbps >= rmw_gbps ? "memcpy" : "rmw_kernel"; }
};

Floor measure_floor(Gpu& g) {
  constexpr int reps = 30;
  Floor f;
  // 1 GiB each way, far above any L2; smaller only on a card with little free memory.
  std::int64_t bytes = std::int64_t{1} << 30;
  const std::int64_t free_bytes = g.device.memory_info().free_bytes;
  if (3 * bytes > free_bytes) bytes = (free_bytes / 4) & ~std::int64_t{(1 << 20) - 1};
  f.buffer_bytes = bytes;
  posenc::gpu::DeviceBuffer src(g.device, bytes);
  posenc::gpu::DeviceBuffer dst(g.device, bytes);
  g.fill_elements(src.data(), DType::f32, bytes / 4, 11);
  g.fill_elements(dst.data(), DType::f32, bytes / 4, 12);

  auto copy = [&](int) {
    POSENC_BENCH_CUDA_CHECK(
        cudaMemcpyAsync(dst.data(), src.data(), static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice, g.native));
  };
  time_each(g, 3, copy);
  f.memcpy_gbps = pb::gb_per_s(2.0 * static_cast<double>(bytes), pb::median(time_each(g, reps, copy)));

  const std::int64_t n4 = bytes / 16;
  const auto blocks = static_cast<unsigned>((n4 + rmw_block * rmw_unroll - 1) / (rmw_block * rmw_unroll));
  // a and b keep the values bounded (the iteration converges to 1), so no pass meets inf or NaN.
  auto rmw = [&](int) {
    rmw_kernel<<<blocks, rmw_block, 0, g.native>>>(static_cast<float4*>(src.data()), n4, 0.999f, 0.001f);
    POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  };
  time_each(g, 3, rmw);
  f.rmw_gbps = pb::gb_per_s(2.0 * static_cast<double>(bytes), pb::median(time_each(g, reps, rmw)));
  return f;
}

// ---- what is swept -------------------------------------------------------------------------------

struct Variant {
  std::string name;
  RopeSpec spec;
  std::int64_t hq = 32;
  std::int64_t hk = 8;
  DType dtype = DType::bf16;
  bool in_quick = false;
  std::string note;
  std::int64_t position_range = pb::position_range;  ///< positions are uniform in [0, position_range)
  bool peers = false;  ///< FlashInfer's kernels run beside it, on the same input sets
  /// Rotate by a caller's cos/sin cache (RopeArgs::cos_sin, vLLM's rotary_embedding): the float32
  /// [position_range, R] table FlashInfer's cache kernel reads (CosSinTable), not the spec's angles.
  bool cos_sin_cache = false;
  /// Also time posenc's cos/sin-cache path (variant name + "_cache", the same table) on the same
  /// input sets as the spec path and FlashInfer: the decode rows, whose targets both paths share.
  bool cache_row = false;
};

RopeSpec plain_spec(std::int64_t head_dim, Pairing pairing, Numerics numerics) {
  RopeSpec s;
  s.head_dim = head_dim;
  s.pairing = pairing;
  s.numerics = numerics;
  s.theta = 10000.0;
  return s;
}

/// A model's shape as posenc resolves it from its config.json text. Config ingestion is another
/// part of posenc: if it fails, the real shape is still timed, from `fallback` written out by hand
/// (the row's note says so).
Variant model_variant(std::string name, const char* config_json, const char* source, const RopeSpec& fallback,
                      std::int64_t hq, std::int64_t hk) {
  Variant v;
  v.name = std::move(name);
  try {
    const posenc::ModelConfig cfg = posenc::parse_model_config(config_json, source);
    v.spec = cfg.spec();
    // The rows time the rotation against RoPE-only peers: a model's QK norm (Qwen3) is left out
    // here; bench/python_ops.py times the fused norm + RoPE against the unfused ops.
    v.spec.qk_norm = {};
    v.hq = cfg.num_attention_heads;
    v.hk = cfg.num_key_value_heads;
  } catch (const std::exception& e) {
    v.spec = fallback;
    v.hq = hq;
    v.hk = hk;
    v.note = std::string("spec written out by hand: config ingestion failed: ") + e.what();
  }
  return v;
}

/// GLM-4-9B-chat as posenc resolves it from its embedded config.json: 32 query heads, 2 KV heads,
/// head_dim 128, the first 64 dims rotated in interleaved pairs, theta 10000 * rope_ratio 500.
Variant glm4_variant(std::string name = "glm4_9b") {
  RopeSpec s = plain_spec(128, Pairing::interleaved, Numerics::hf_compatible);
  s.rotary_dim = 64;
  s.theta = 10000.0 * 500.0;
  return model_variant(std::move(name), posenc::default_model_config_json(), "<embedded:glm-4-9b-chat>", s, 32, 2);
}

/// Llama-3.1-8B's config.json (the rope fields, as configs/llama-3.1-8b.json has them): 32 x 8
/// heads of 128, half_split, theta 500000, llama3 frequency smoothing.
constexpr const char* llama31_8b_config = R"({"model_type": "llama", "hidden_size": 4096,
  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
  "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 8192, "rope_type": "llama3"}})";

/// Qwen3-30B-A3B's config.json (the rope fields): 32 x 4 heads of 128, half_split, theta 1e6.
constexpr const char* qwen3_30b_a3b_config = R"({"model_type": "qwen3_moe", "hidden_size": 2048, "head_dim": 128,
  "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 40960,
  "rope_theta": 1000000.0, "rope_scaling": null})";

/// The decode rows (issue 18): a batch of T sequences, one token each, positions anywhere in a 128k
/// context, bf16, hf_compatible, for three real models; FlashInfer's kernels run beside each.
std::vector<Variant> decode_variants() {
  std::vector<Variant> vs;
  vs.push_back(glm4_variant("decode_glm4_9b"));
  RopeSpec llama = plain_spec(128, Pairing::half_split, Numerics::hf_compatible);
  llama.theta = 500000.0;
  llama.scaling = posenc::Scaling::llama3;
  llama.params.factor = 8.0;
  llama.params.low_freq_factor = 1.0;
  llama.params.high_freq_factor = 4.0;
  llama.params.original_max_position_embeddings = 8192;
  vs.push_back(model_variant("decode_llama31_8b", llama31_8b_config, "<bench:Llama-3.1-8B>", llama, 32, 8));
  RopeSpec qwen = plain_spec(128, Pairing::half_split, Numerics::hf_compatible);
  qwen.theta = 1e6;
  vs.push_back(model_variant("decode_qwen3_30b_a3b", qwen3_30b_a3b_config, "<bench:Qwen3-30B-A3B>", qwen, 32, 4));
  for (Variant& v : vs) {
    v.position_range = pb::decode_position_range;
    v.peers = true;
    v.cache_row = true;
    v.in_quick = true;
  }
  // Llama-3.1-8B's rows with correctly rounded cos/sin (hf_arithmetic exact): the cost of following
  // torch's CUDA cosf/sinf at decode, where positions reach 131072 and pair 0's angle (inv_freq 1)
  // passes 105615, beyond which CUDA's sinf/cosf take their slow argument reduction.
  Variant exact = vs[1];
  exact.name = "decode_llama31_8b_exact_trig";
  exact.spec.hf_arithmetic = posenc::HfArithmetic::exact;
  exact.peers = false;
  exact.cache_row = false;
  vs.push_back(std::move(exact));
  return vs;
}

/// The decode sweep's token counts (one token per sequence).
constexpr std::int64_t decode_tokens[] = {1, 8, 64, 256};

std::vector<Variant> all_variants() {
  std::vector<Variant> vs;
  auto add = [&](std::string name, RopeSpec spec, std::int64_t hq, std::int64_t hk, DType dtype, bool quick) {
    Variant v;
    v.name = std::move(name);
    v.spec = std::move(spec);
    v.hq = hq;
    v.hk = hk;
    v.dtype = dtype;
    v.in_quick = quick;
    vs.push_back(std::move(v));
  };
  const auto hf = Numerics::hf_compatible;
  add("main_half_split", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::bf16, true);
  vs.back().peers = true;
  add("main_interleaved", plain_spec(128, Pairing::interleaved, hf), 32, 8, DType::bf16, true);
  vs.back().peers = true;
  add("accurate", plain_spec(128, Pairing::half_split, Numerics::accurate), 32, 8, DType::bf16, true);
  // The main shape with correctly rounded cos/sin (hf_arithmetic exact, double-precision sincos):
  // what hf_compatible computed before it followed torch's CUDA cosf/sinf (the default above), so
  // the cost of that change is measured in every run.
  RopeSpec exact_trig = plain_spec(128, Pairing::half_split, hf);
  exact_trig.hf_arithmetic = posenc::HfArithmetic::exact;
  add("main_exact_trig", exact_trig, 32, 8, DType::bf16, true);
  const std::pair<std::int64_t, std::int64_t> head_counts[] = {{32, 32}, {64, 8}, {96, 8}, {128, 8}};
  for (auto [hq, hk] : head_counts)
    add("heads_" + std::to_string(hq) + "x" + std::to_string(hk), plain_spec(128, Pairing::half_split, hf), hq,
        hk, DType::bf16, false);
  for (int d : {64, 80, 96, 256})
    add("hd" + std::to_string(d), plain_spec(d, Pairing::half_split, hf), 32, 8, DType::bf16, false);
  add("f32", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::f32, true);
  add("f16", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::f16, false);
  vs.back().peers = true;
  // The engines' contract (vLLM / sgl-kernel rotary_embedding): the main shapes with cos/sin read
  // from a float32 cache, as vLLM keeps it. Same bytes as main_* (the cache rows, 512 bytes a
  // token against Q and K's 20 KiB, are not counted); FlashInfer's cache kernel is the peer of
  // main_* already, on the same table.
  add("cache_half_split", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::bf16, true);
  vs.back().cos_sin_cache = true;
  add("cache_interleaved", plain_spec(128, Pairing::interleaved, hf), 32, 8, DType::bf16, false);
  vs.back().cos_sin_cache = true;
  vs.push_back(glm4_variant());
  vs.back().peers = true;
  // Qwen3's attention prologue in one launch: the per-head RMSNorm of Q and K (RopeSpec::qk_norm,
  // whole heads, the weights in RopeArgs::norm) then RoPE, on the main shape. Its bytes are the
  // rotation's (the two 256-byte weight vectors are not counted); no peer fuses the two.
  RopeSpec qwen3 = plain_spec(128, Pairing::half_split, hf);
  qwen3.theta = 1e6;
  qwen3.qk_norm = posenc::QkNorm{posenc::QkNormKind::rms, 1e-6, false};
  add("qk_norm", qwen3, 32, 8, DType::bf16, true);
  // Gemma 3's (4B): the (1 + w) norm form, head_dim 256, Q 8 heads and K 4 (a global layer, theta
  // 1e6; its linear factor changes no work of the kernel's).
  RopeSpec gemma3 = plain_spec(256, Pairing::half_split, hf);
  gemma3.theta = 1e6;
  gemma3.qk_norm = posenc::QkNorm{posenc::QkNormKind::rms_one_plus, 1e-6, false};
  add("qk_norm_gemma3", gemma3, 8, 4, DType::bf16, true);
  return vs;
}

// ---- input sets ----------------------------------------------------------------------------------

constexpr std::int64_t align_up(std::int64_t v, std::int64_t a) { return (v + a - 1) / a * a; }

/// Several input sets of one case in one allocation: all Q sets, then all K sets, then all
/// position sets, each set aligned to 256 bytes. Three fill launches cover everything.
struct InputSets {
  posenc::gpu::DeviceBuffer arena;
  std::vector<RopeArgs> args;
  std::int64_t set_bytes = 0;  ///< bytes one call touches (Q + K + positions, and an append's extra)
  std::int64_t next = 0;       ///< rotation counter: every launch takes the next set
  std::size_t take_index() { return static_cast<std::size_t>(next++ % static_cast<std::int64_t>(args.size())); }
  const RopeArgs& take() { return args[take_index()]; }
};

/// `extra_set_bytes`: bytes per set the caller allocates beside these (an append's V, slots and
/// cache rows); they count towards the working set and the memory budget. `l2_resident`: one
/// set, which every call reuses (the --l2-resident analysis mode).
InputSets make_input_sets(Gpu& g, const Variant& v, std::int64_t tokens, std::uint64_t seed,
                          std::int64_t extra_set_bytes = 0, bool l2_resident = false) {
  const std::int64_t es = posenc::size_of(v.dtype);
  const std::int64_t d = v.spec.head_dim;
  const std::int64_t q_bytes = tokens * v.hq * d * es;
  const std::int64_t k_bytes = tokens * v.hk * d * es;
  const std::int64_t p_bytes = tokens * 8;
  const std::int64_t q_stride = align_up(q_bytes, 256);
  const std::int64_t k_stride = align_up(k_bytes, 256);
  const std::int64_t p_stride = align_up(p_bytes, 256);
  const std::int64_t set_bytes = q_bytes + k_bytes + p_bytes + extra_set_bytes;
  const std::int64_t per_set = q_stride + k_stride + p_stride + extra_set_bytes;

  // Enough sets that the launches cycle through >= 4x L2, and never fewer than 2, so no launch
  // finds its inputs left in L2 by the launch before.
  const std::int64_t l2 = std::max<std::int64_t>(g.device.l2_bytes(), 1 << 20);
  std::int64_t n_sets = std::max<std::int64_t>(2, (4 * l2 + set_bytes - 1) / set_bytes);
  n_sets = std::min<std::int64_t>(n_sets, 1 << 16);
  if (l2_resident) n_sets = 1;
  const std::int64_t budget = g.device.memory_info().free_bytes * 6 / 10;
  while (n_sets > 1 && n_sets * per_set > budget) --n_sets;
  if (n_sets * per_set > budget) {
    throw std::runtime_error("one input set (" + std::to_string(per_set) + " bytes) does not fit in free memory");
  }

  // A spec with a QK norm: Q's and K's weights (width elements each), shared by every set.
  const std::int64_t norm_width = v.spec.qk_norm.enabled() ? v.spec.qk_norm_width() : 0;
  const std::int64_t w_stride = align_up(norm_width * es, 256);

  InputSets s;
  s.set_bytes = set_bytes;
  s.arena = posenc::gpu::DeviceBuffer(g.device, n_sets * (per_set - extra_set_bytes) + 2 * w_stride);
  auto* base = static_cast<unsigned char*>(s.arena.data());
  unsigned char* q0 = base;
  unsigned char* k0 = base + n_sets * q_stride;
  unsigned char* p0 = k0 + n_sets * k_stride;
  unsigned char* w0 = p0 + n_sets * p_stride;
  g.fill_elements(q0, v.dtype, n_sets * q_stride / es, seed);
  g.fill_elements(k0, v.dtype, n_sets * k_stride / es, seed ^ 0x6b6b6b6bull);
  g.fill_positions(reinterpret_cast<std::int64_t*>(p0), n_sets * p_stride / 8, seed ^ 0x7070ull, v.position_range);
  if (norm_width > 0) g.fill_elements(w0, v.dtype, 2 * w_stride / es, seed ^ 0x4e4eull);
  s.args.resize(static_cast<std::size_t>(n_sets));
  for (std::int64_t i = 0; i < n_sets; ++i) {
    RopeArgs& a = s.args[static_cast<std::size_t>(i)];
    a.q = posenc::TensorView::contiguous(q0 + i * q_stride, v.dtype, tokens, v.hq, d);
    a.k = posenc::TensorView::contiguous(k0 + i * k_stride, v.dtype, tokens, v.hk, d);
    a.positions = {p0 + i * p_stride, posenc::IndexType::i64, tokens};
    if (norm_width > 0) a.norm = posenc::NormWeights{w0, w0 + w_stride};
  }
  g.sync();
  return s;
}

/// Device-to-host copies enqueued on the benchmark's stream (complete after g.sync()).
pb::CopyOut device_to_host(const Gpu& g) {
  return [&g](void* to, const void* from, std::int64_t bytes) {
    POSENC_BENCH_CUDA_CHECK(cudaMemcpyAsync(to, from, static_cast<std::size_t>(bytes), cudaMemcpyDeviceToHost, g.native));
  };
}

/// Up to 64 tokens of one input set spread over [0, T), copied to the host before and after one
/// operation on the set: `ref` holds the input (the reference rotates it on the host), `got` the output.
struct SampledCase {
  std::int64_t n = 0;
  pb::SampledRows q, k;
  std::vector<std::int64_t> pos;
};

SampledCase run_sampled(Gpu& g, const Variant& v, const RopeArgs& a, const std::function<void()>& op) {
  const std::int64_t es = posenc::size_of(v.dtype);
  const std::int64_t d = v.spec.head_dim;
  const std::int64_t q_row = v.hq * d * es;
  const std::int64_t k_row = v.hk * d * es;
  const std::vector<std::int64_t> tokens = pb::sample_tokens(a.positions.count, 64);
  const auto n = static_cast<std::int64_t>(tokens.size());
  SampledCase s{n, pb::SampledRows(n, q_row), pb::SampledRows(n, k_row), std::vector<std::int64_t>(tokens.size())};
  const pb::CopyOut copy = device_to_host(g);

  pb::gather_rows(copy, s.q.ref.data(), a.q.data, q_row, tokens);
  pb::gather_rows(copy, s.k.ref.data(), a.k.data, k_row, tokens);
  pb::gather_rows(copy, s.pos.data(), a.positions.data, 8, tokens);
  g.sync();
  op();
  pb::gather_rows(copy, s.q.got.data(), a.q.data, q_row, tokens);
  pb::gather_rows(copy, s.k.got.data(), a.k.data, k_row, tokens);
  g.sync();
  return s;
}

/// Rotates the sampled inputs (`s.q.ref`, `s.k.ref`) in place on the host by apply_reference;
/// `cos_sin`: the case's cos/sin cache, in host memory, when it has one.
void reference_rotate(const Variant& v, const RopeSpec& spec, SampledCase& s,
                      const posenc::CosSinCacheView& cos_sin = {}, const posenc::NormWeights& norm = {}) {
  RopeArgs host;
  host.q = posenc::TensorView::contiguous(s.q.ref.data(), v.dtype, s.n, v.hq, v.spec.head_dim);
  host.k = posenc::TensorView::contiguous(s.k.ref.data(), v.dtype, s.n, v.hk, v.spec.head_dim);
  host.positions = {s.pos.data(), posenc::IndexType::i64, s.n};
  host.cos_sin = cos_sin;
  host.norm = norm;
  posenc::apply_reference(spec, host);
}

pb::Comparison compare_sampled(const Variant& v, const SampledCase& s) {
  const std::int64_t d = v.spec.head_dim;
  pb::Comparison c = pb::compare_elements(v.dtype, s.q.got.data(), s.q.ref.data(), s.n * v.hq * d);
  c += pb::compare_elements(v.dtype, s.k.got.data(), s.k.ref.data(), s.n * v.hk * d);
  return c;
}

/// `spec` with correctly rounded cos/sin: the arithmetic the host reference shares with the GPU.
/// The timed engines follow torch on this GPU (hf_arithmetic `engine`: CUDA's cosf/sinf), which
/// no host code reproduces; the verification runs the same kernels with this spec instead (only
/// the cos/sin table's values differ) and demands the reference's bits. Bit-exactness of the
/// timed arithmetic against torch on CUDA is the Python tests' and the CUDA sweep's.
RopeSpec checkable(RopeSpec spec) {
  spec.hf_arithmetic = posenc::HfArithmetic::exact;
  return spec;
}

/// Applies once to `a` on the GPU (with `engine`'s spec in the exact arithmetic) and compares
/// sampled tokens with apply_reference on the host.
std::string verify_case(Gpu& g, const Variant& v, const posenc::gpu::GpuEngine& timed, const RopeArgs& a) {
  const RopeSpec spec = checkable(timed.spec());
  const posenc::gpu::GpuEngine engine(spec, g.device);
  SampledCase s = run_sampled(g, v, a, [&] {
    engine.apply(a, g.stream.ref());
    engine.check(g.stream.ref());
  });
  std::vector<unsigned char> cos_sin;  // a host copy of the call's cos/sin cache, when it has one
  posenc::CosSinCacheView host_cos_sin;
  if (a.cos_sin.present()) {
    const posenc::CosSinCacheView& c = a.cos_sin;
    cos_sin.resize(static_cast<std::size_t>(((c.rows - 1) * c.row_stride + c.rotary_dim) * posenc::size_of(c.dtype)));
    device_to_host(g)(cos_sin.data(), c.data, static_cast<std::int64_t>(cos_sin.size()));
    g.sync();
    host_cos_sin = c;
    host_cos_sin.data = cos_sin.data();
  }
  std::vector<unsigned char> weights;  // host copies of the QK-norm weights, when the spec normalises
  posenc::NormWeights host_norm;
  if (a.norm.q != nullptr) {
    const std::int64_t bytes = spec.qk_norm_width() * posenc::size_of(v.dtype);
    weights.resize(static_cast<std::size_t>(2 * bytes));
    device_to_host(g)(weights.data(), a.norm.q, bytes);
    device_to_host(g)(weights.data() + bytes, a.norm.k, bytes);
    g.sync();
    host_norm = posenc::NormWeights{weights.data(), weights.data() + bytes};
  }
  reference_rotate(v, spec, s, host_cos_sin, host_norm);
  return pb::verdict(compare_sampled(v, s), v.spec.numerics);
}

// ---- timing one case -----------------------------------------------------------------------------

/// What a case times: `call` enqueues one operation on the next input set; `check` surfaces the
/// errors of the calls so far (GpuEngine::check).
struct TimedCall {
  std::function<void()> call;
  std::function<void()> check;
  std::int64_t sets = 0;       ///< input sets the calls rotate through
  std::int64_t set_bytes = 0;  ///< bytes one call touches
  double seconds = 0.2;        ///< event-timed launches to aim for
  bool graph = true;           ///< also time replays from CUDA graphs
};

/// Per-call microseconds of calls replayed from CUDA graphs of `calls` calls each. For small
/// calls one graph's sets would sit in L2 after its first replay, so several graphs over disjoint
/// sets are built and replayed in turn until the replays cover >= 2x L2.
double graph_us_per_call(Gpu& g, const TimedCall& c, int calls) {
  const std::int64_t l2 = std::max<std::int64_t>(g.device.l2_bytes(), 1 << 20);
  const std::int64_t per_graph = static_cast<std::int64_t>(calls) * c.set_bytes;
  std::int64_t n_graphs = std::max<std::int64_t>(1, (2 * l2 + per_graph - 1) / per_graph);
  n_graphs = std::min<std::int64_t>({n_graphs, 128, std::max<std::int64_t>(1, c.sets / calls)});
  std::vector<cudaGraphExec_t> execs;
  auto destroy = [&] {
    for (cudaGraphExec_t e : execs) cudaGraphExecDestroy(e);
    execs.clear();
  };
  try {
    for (std::int64_t gi = 0; gi < n_graphs; ++gi) {
      POSENC_BENCH_CUDA_CHECK(cudaStreamBeginCapture(g.native, cudaStreamCaptureModeGlobal));
      try {
        for (int i = 0; i < calls; ++i) c.call();
      } catch (...) {
        cudaGraph_t broken = nullptr;
        cudaStreamEndCapture(g.native, &broken);
        if (broken != nullptr) cudaGraphDestroy(broken);
        cudaGetLastError();  // an invalidated capture is not a sticky error: clear it
        throw;
      }
      cudaGraph_t graph = nullptr;
      POSENC_BENCH_CUDA_CHECK(cudaStreamEndCapture(g.native, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      POSENC_BENCH_CUDA_CHECK(e);
      execs.push_back(exec);
    }
    auto replay = [&](int i) {
      POSENC_BENCH_CUDA_CHECK(cudaGraphLaunch(execs[static_cast<std::size_t>(i) % execs.size()], g.native));
    };
    time_each(g, static_cast<int>(execs.size()), replay);  // first replays upload the graphs
    const int replays = std::max(20, static_cast<int>(execs.size()));
    const double us = pb::median(time_each(g, replays, replay)) / calls;
    destroy();
    return us;
  } catch (...) {
    destroy();
    throw;
  }
}

/// Times `c` (the method docs/PERFORMANCE.md describes) and fills the row's time, graph time,
/// GB/s (over row.bytes) and share of the floor.
void time_case(Gpu& g, const TimedCall& c, const Floor& floor, pb::Row& row) {
  // The host time of each call (packing, validation, launch) rides along: at small T it is what
  // the event-timed figure mostly is.
  std::vector<double> host_us;
  host_us.reserve(static_cast<std::size_t>(g.event_pairs()) + 20);  // no allocation between timed calls
  auto call = [&](int) {
    const auto t0 = std::chrono::steady_clock::now();
    c.call();
    host_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  };
  for (int i = 0; i < 10; ++i) call(i);
  const double estimate_us = std::max(0.5, time_block(g, 10, call));
  // About c.seconds of timed launches, at least 30 and at most the event pool.
  const int launches = std::clamp(static_cast<int>(c.seconds * 1e6 / estimate_us), 30, g.event_pairs());
  host_us.clear();
  row.median_us = pb::median(time_each(g, launches, call));
  const double host_median = pb::median(host_us);
  c.check();

  const int calls = std::clamp(static_cast<int>(2000.0 / estimate_us), 10, 100);
  if (c.graph) {
    try {
      row.graph_us = graph_us_per_call(g, c, calls);
      c.check();
    } catch (const std::exception& e) {
      row.note += std::string(row.note.empty() ? "" : "; ") + "graph: " + e.what();
    }
  }

  row.gbps = pb::gb_per_s(row.bytes, row.median_us);
  row.floor_gbps = floor.best();
  row.floor_kind = floor.kind();
  row.ratio = row.gbps / row.floor_gbps;
  const std::string info = "sets=" + std::to_string(c.sets) + " launches=" + std::to_string(launches) +
                           (c.graph ? " graph_calls=" + std::to_string(calls) : std::string()) +
                           " host_us=" + pb::format_number(host_median, 2);
  row.note += (row.note.empty() ? "" : "; ") + info;
}

pb::Row base_row(const std::string& card, const Variant& v, std::int64_t tokens) {
  pb::Row r;
  r.card = card;
  r.engine = "posenc_gpu";
  r.variant = v.name;
  r.dtype = posenc::to_string(v.dtype);
  r.pairing = posenc::to_string(v.spec.pairing);
  r.numerics = posenc::to_string(v.spec.numerics);
  r.hq = v.hq;
  r.hk = v.hk;
  r.d = v.spec.head_dim;
  r.r = v.spec.rotary();
  r.t = tokens;
  const double es = static_cast<double>(posenc::size_of(v.dtype));
  r.bytes_whole = 2.0 * static_cast<double>(tokens * (v.hq + v.hk) * v.spec.head_dim) * es;
  // In place only the rotary window must move; the ratio counts those bytes (bytes_whole is
  // reported beside them), so partial rotary is not credited for bytes it need not touch.
  r.bytes = r.bytes_whole * static_cast<double>(r.r) / static_cast<double>(r.d);
  r.note = v.note;
  return r;
}

/// One posenc row on `sets` (which the case's FlashInfer rows then share): verify on set 0, time.
void run_case(Gpu& g, const Variant& v, const posenc::gpu::GpuEngine& engine, InputSets& sets, pb::Row& row,
              const Floor& floor) {
  row.verified = verify_case(g, v, engine, sets.args[0]);
  sets.next = 1;
  const TimedCall c{[&] { engine.apply(sets.take(), g.stream.ref()); }, [&] { engine.check(g.stream.ref()); },
                    static_cast<std::int64_t>(sets.args.size()), sets.set_bytes};
  time_case(g, c, floor, row);
}

// ---- the peer: FlashInfer's RoPE kernels on the same input sets ------------------------------------

namespace fi = posenc::bench::flashinfer_peer;

#if POSENC_BENCH_FLASHINFER
constexpr bool flashinfer_built = true;
constexpr const char* flashinfer_version = POSENC_BENCH_FLASHINFER_VERSION;
constexpr const char* flashinfer_include = POSENC_BENCH_FLASHINFER_INCLUDE;
#else
constexpr bool flashinfer_built = false;
constexpr const char* flashinfer_version = "";
constexpr const char* flashinfer_include = "";
#endif

constexpr fi::Kernel peer_kernels[] = {fi::Kernel::pos_ids, fi::Kernel::cos_sin_cache};

const char* peer_engine(fi::Kernel k) { return k == fi::Kernel::pos_ids ? "flashinfer_pos_ids" : "flashinfer_cos_sin"; }

/// A variant's cos/sin cache (cos_sin_table_kernel) of `position_range` rows: the input of
/// FlashInfer's cache kernel, and what an engine keeps for it. One row of slack follows the last:
/// FlashInfer's interleaved cache kernel loads whole vectors from a row's sin half and uses half of
/// each, so with a partial rotary window its last loads reach up to R/2 elements past the row.
struct CosSinTable {
  posenc::gpu::DeviceBuffer buffer;
  std::int64_t rows = 0;
  std::int64_t rotary = 0;
  const float* data() const { return static_cast<const float*>(buffer.data()); }
};

CosSinTable make_cos_sin_table(Gpu& g, const Variant& v) {
  const posenc::FrequencyTable f = posenc::compute_frequencies(v.spec);
  CosSinTable t;
  t.rows = v.position_range;
  t.rotary = v.spec.rotary();
  const auto half = static_cast<std::int64_t>(f.inv_freq.size());
  if (2 * half != t.rotary) {
    throw std::runtime_error("cos/sin table: " + std::to_string(half) + " frequencies for rotary_dim " +
                             std::to_string(t.rotary));
  }
  posenc::gpu::DeviceBuffer inv_freq(g.device, half * 4);
  inv_freq.upload(f.inv_freq.data(), half * 4, g.stream.ref());
  t.buffer = posenc::gpu::DeviceBuffer(g.device, (t.rows + 1) * t.rotary * 4);
  t.buffer.fill_bytes(0, g.stream.ref());
  cos_sin_table_kernel<<<g.device.multiprocessor_count() * 8, 256, 0, g.native>>>(
      static_cast<float*>(t.buffer.data()), static_cast<const float*>(inv_freq.data()), t.rows, static_cast<int>(half),
      f.attention_factor);
  POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  g.sync();  // the upload's host source and inv_freq must outlive the kernel
  return t;
}

/// FlashInfer's call for variant v on input set `a`, in place; `table` feeds the cache kernel.
fi::Call peer_call(const Variant& v, const RopeArgs& a, const float* table) {
  fi::Call c;
  c.q = a.q.data;
  c.k = a.k.data;
  c.dtype = v.dtype;
  c.tokens = a.positions.count;
  c.q_heads = v.hq;
  c.kv_heads = v.hk;
  c.head_dim = v.spec.head_dim;
  c.rotary_dim = v.spec.rotary();
  c.interleave = v.spec.pairing == Pairing::interleaved;
  c.positions = static_cast<const std::int64_t*>(a.positions.data);
  c.theta = static_cast<float>(v.spec.theta);
  if (v.spec.scaling == posenc::Scaling::llama3) {
    const posenc::ScalingParams& p = v.spec.params;
    c.llama31 = {static_cast<float>(p.factor), static_cast<float>(p.low_freq_factor),
                 static_cast<float>(p.high_freq_factor), static_cast<float>(p.original_max_position_embeddings)};
  }
  c.cos_sin_cache = table;
  return c;
}

/// Why FlashInfer's kernels cannot compute variant v's rotation, or "" when they can.
std::string peer_unsupported(const Variant& v) {
  const RopeSpec& s = v.spec;
  if (s.rotary_offset != 0) return "the rotary window does not start the head";
  if (s.pairing != Pairing::half_split && s.pairing != Pairing::interleaved) return "pairing " + std::string(posenc::to_string(s.pairing));
  if (!s.mrope_section.empty()) return "M-RoPE";
  if (s.scaling != posenc::Scaling::none && s.scaling != posenc::Scaling::llama3) {
    return std::string("scaling ") + posenc::to_string(s.scaling);
  }
  if (s.attention_factor && *s.attention_factor != 1.0) return "an attention factor";
  fi::Call c = peer_call(v, RopeArgs{}, nullptr);
  c.tokens = 1;
  const char* why = nullptr;
  return fi::supported(c, &why) ? std::string() : std::string(why);
}

void launch_peer(const Gpu& g, fi::Kernel k, const fi::Call& c) {
#if POSENC_BENCH_FLASHINFER
  fi::launch(k, c, g.native);
#else
  (void)g;
  (void)c;
  throw std::runtime_error(std::string(fi::kernel_name(k)) + ": posenc_bench_gpu was built without FlashInfer's headers");
#endif
}

/// Runs `op` (one FlashInfer launch on `a`) and compares sampled tokens with posenc's `accurate`
/// rotation of the same input (apply_reference: float32 cos/sin of the exact angle, one rounding),
/// the arithmetic closest to FlashInfer's float32 math, and with the variant's own numerics (what
/// the posenc row computes, bit for bit). Never expected bit-exact: the pos_ids kernel forms the
/// angle in float32 with __powf and __sincosf, which drift as positions grow, and both kernels
/// round their float32 products separately. FAILED only past a relative L2 error of 1e-2 against
/// `accurate`, where the peer would not be computing the same rotation.
std::string verify_peer(Gpu& g, const Variant& v, const RopeArgs& a, const std::function<void()>& op) {
  SampledCase s = run_sampled(g, v, a, [&] {
    op();
    g.sync();
  });
  SampledCase own = s;
  RopeSpec accurate = v.spec;
  accurate.numerics = Numerics::accurate;
  reference_rotate(v, accurate, s);
  const pb::Comparison c = compare_sampled(v, s);
  const std::int64_t d = v.spec.head_dim;
  pb::L2Error e = pb::l2_error(v.dtype, s.q.got.data(), s.q.ref.data(), s.n * v.hq * d);
  e += pb::l2_error(v.dtype, s.k.got.data(), s.k.ref.data(), s.n * v.hk * d);
  char rel[32];
  std::snprintf(rel, sizeof rel, "%.1e", e.relative());
  std::string text = "vs posenc accurate: max " + std::to_string(c.max_ulp) + " ulp, " + std::to_string(c.mismatches) +
                     "/" + std::to_string(c.elements) + " differ, rel_l2 " + rel;
  if (v.spec.numerics != Numerics::accurate) {
    reference_rotate(v, v.spec, own);
    const pb::Comparison o = compare_sampled(v, own);
    text += "; vs posenc " + std::string(posenc::to_string(v.spec.numerics)) + ": max " + std::to_string(o.max_ulp) +
            " ulp, " + std::to_string(o.mismatches) + " differ";
  }
  return e.relative() <= 1e-2 ? text : "FAILED (" + text + ")";
}

pb::Row peer_row(const std::string& card, const Variant& v, std::int64_t tokens, fi::Kernel k) {
  pb::Row r = base_row(card, v, tokens);
  r.engine = peer_engine(k);
  r.numerics = k == fi::Kernel::pos_ids ? "fp32_fast_math" : "fp32_cos_sin_cache";
  const bool llama31 = k == fi::Kernel::pos_ids && v.spec.scaling == posenc::Scaling::llama3;
  r.note += std::string(r.note.empty() ? "" : "; ") + "FlashInfer " + flashinfer_version + " " +
            (llama31 ? "BatchQKApplyLlama31RotaryPosIds" : fi::kernel_name(k)) + ", in place" +
            (k == fi::Kernel::cos_sin_cache ? ", float32 [" + std::to_string(v.position_range) + ", " +
                                                  std::to_string(v.spec.rotary()) + "] cos/sin cache"
                                            : std::string());
  return r;
}

/// One FlashInfer row on the posenc row's input sets: verify on set 0, then time exactly as posenc.
void run_peer_case(Gpu& g, const Variant& v, fi::Kernel k, InputSets& sets, const CosSinTable* table, pb::Row& row,
                   const Floor& floor) {
  const float* cache = k == fi::Kernel::cos_sin_cache ? table->data() : nullptr;
  auto launch = [&](const RopeArgs& a) { launch_peer(g, k, peer_call(v, a, cache)); };
  row.verified = verify_peer(g, v, sets.args[0], [&] { launch(sets.args[0]); });
  sets.next = 1;
  const TimedCall c{[&] { launch(sets.take()); }, [&] { g.sync(); },
                    static_cast<std::int64_t>(sets.args.size()), sets.set_bytes};
  time_case(g, c, floor, row);
}

// ---- the fused append against RoPE followed by a separate cache copy ------------------------------

/// One cache configuration of the append sweep; the activations are the main shape's (bf16,
/// Q [T, 32, 128], K = V [T, 8, 128], hf_compatible).
struct AppendCase {
  std::string name;  ///< layout, and what differs from bf16 half_split
  CacheLayout layout = CacheLayout::paged_nhd;
  CacheDType cache = CacheDType::bf16;
  Pairing pairing = Pairing::half_split;
  bool in_quick = false;
  std::vector<std::int64_t> only_tokens;  ///< when not empty: the T of the sweep it runs at
  bool q_out = false;  ///< Q written quantized (AppendArgs::q_out, the cache's dtype) instead of in place
  bool qk_norm = false;  ///< Qwen3's per-head QK norm first (theta 1e6): the fp8-serving attention prologue
};

std::vector<AppendCase> append_cases() {
  const std::vector<std::int64_t> all;
  return {
      {"contiguous", CacheLayout::contiguous, CacheDType::bf16, Pairing::half_split, false, all},
      {"paged_nhd", CacheLayout::paged_nhd, CacheDType::bf16, Pairing::half_split, true, all},
      {"paged_hnd", CacheLayout::paged_hnd, CacheDType::bf16, Pairing::half_split, false, all},
      {"paged_nhd_interleaved", CacheLayout::paged_nhd, CacheDType::bf16, Pairing::interleaved, false, {64, 4096, 65536}},
      {"paged_nhd_fp8", CacheLayout::paged_nhd, CacheDType::fp8_e4m3, Pairing::half_split, false, {64, 16384}},
      {"paged_nhd_fp8_qout", CacheLayout::paged_nhd, CacheDType::fp8_e4m3, Pairing::half_split, false,
       {1, 64, 4096, 16384, 65536}, true},
      // Qwen3 served in fp8, the whole attention prologue in one launch: QK norm, RoPE, Q to fp8
      // q_out, K and V to the fp8 paged cache. The unfused method is the norm + RoPE call, then the
      // separate scatter and Q's quantization.
      {"qk_norm_paged_nhd_fp8_qout", CacheLayout::paged_nhd, CacheDType::fp8_e4m3, Pairing::half_split, false,
       {1, 64, 4096, 16384, 65536}, true, true},
  };
}

enum class AppendMethod { fused, rope_copy };

std::string append_variant(const AppendCase& c, AppendMethod m) {
  return std::string(m == AppendMethod::fused ? "append_fused_" : "append_ropecopy_") + c.name;
}

/// The activations of an append case as a Variant (for base_row and make_input_sets).
Variant append_shape(const AppendCase& c) {
  Variant v;
  v.name = "append_" + c.name;
  v.spec = plain_spec(128, c.pairing, Numerics::hf_compatible);
  if (c.qk_norm) {
    v.spec.theta = 1e6;
    v.spec.qk_norm = posenc::QkNorm{posenc::QkNormKind::rms, 1e-6, false};
  }
  return v;
}

/// An append case's input sets: Q, K and positions as InputSets (the unfused path's RopeArgs),
/// and beside them V, the slots of every set and the cache. Both methods rotate through the same
/// sets; every set writes its own cache rows, so the cache lines written rotate too.
struct AppendSets {
  InputSets rope;
  posenc::gpu::DeviceBuffer arena;  ///< V sets, then the slots of every set, then cache K and V
  std::vector<posenc::AppendArgs> args;
  std::string note;
};

AppendSets make_append_sets(Gpu& g, const AppendCase& c, std::int64_t tokens, std::uint64_t seed) {
  const Variant shape = append_shape(c);
  const std::int64_t d = shape.spec.head_dim;
  const std::int64_t v_bytes = tokens * shape.hk * d * posenc::size_of(shape.dtype);
  const std::int64_t cache_row_bytes = shape.hk * d * posenc::size_of(c.cache);  // one slot of K or of V
  if ((d * posenc::size_of(shape.dtype)) % 16 != 0) throw std::runtime_error("the copy kernel needs 16-byte rows");
  AppendSets s;
  s.rope = make_input_sets(g, shape, tokens, seed, align_up(v_bytes, 256) + tokens * (8 + 2 * cache_row_bytes));
  const auto n_sets = static_cast<std::int64_t>(s.rope.args.size());
  const pb::SlotPlan plan = pb::plan_slots(c.layout, tokens, n_sets, seed ^ 0x5107ull);
  const std::int64_t v_stride = align_up(v_bytes, 256);
  const std::int64_t slots_bytes = align_up(n_sets * tokens * 8, 256);
  const std::int64_t cache_bytes = align_up(plan.blocks * plan.block_len * cache_row_bytes, 256);
  // q_out: one per set (each call writes its own, as each writes its own cache rows).
  const std::int64_t q_out_stride = c.q_out ? align_up(tokens * shape.hq * d * posenc::size_of(c.cache), 256) : 0;
  s.arena = posenc::gpu::DeviceBuffer(g.device, n_sets * (v_stride + q_out_stride) + slots_bytes + 2 * cache_bytes);
  auto* v0 = static_cast<unsigned char*>(s.arena.data());
  auto* slots0 = reinterpret_cast<std::int64_t*>(v0 + n_sets * v_stride);
  unsigned char* cache0 = v0 + n_sets * v_stride + slots_bytes;
  unsigned char* q_out0 = cache0 + 2 * cache_bytes;
  g.fill_elements(v0, shape.dtype, n_sets * v_stride / posenc::size_of(shape.dtype), seed ^ 0x7676ull);
  POSENC_BENCH_CUDA_CHECK(cudaMemcpyAsync(slots0, plan.slots.data(), plan.slots.size() * 8, cudaMemcpyHostToDevice,
                                          g.native));
  posenc::KvCacheView cache;
  cache.k = cache0;
  cache.v = cache0 + cache_bytes;
  cache.dtype = c.cache;
  cache.layout = c.layout;
  cache.kv_heads = shape.hk;
  cache.head_dim = d;
  cache.blocks = plan.blocks;
  cache.block_len = plan.block_len;
  if (c.cache == CacheDType::fp8_e4m3) {  // scales other than 1, so the division is exercised
    cache.k_scale = 0.5f;
    cache.v_scale = 0.25f;
  }
  s.args.resize(static_cast<std::size_t>(n_sets));
  for (std::int64_t i = 0; i < n_sets; ++i) {
    const RopeArgs& r = s.rope.args[static_cast<std::size_t>(i)];
    posenc::AppendArgs& a = s.args[static_cast<std::size_t>(i)];
    a.q = r.q;
    a.k = r.k;
    a.v = posenc::TensorView::contiguous(v0 + i * v_stride, shape.dtype, tokens, shape.hk, d);
    a.positions = r.positions;
    a.norm = r.norm;  // (present when the spec normalises: make_input_sets' weights)
    a.slots = slots0 + i * tokens;
    a.cache = cache;
    if (c.q_out) a.q_out = posenc::QuantizedOutput{q_out0 + i * q_out_stride, c.cache, shape.hq * d, d, 0.125f};
  }
  s.note = std::string(c.qk_norm ? "QK norm, " : "") + (c.q_out ? "Q to fp8 q_out (scale 0.125), " : "") +
           "cache " + posenc::to_string(c.cache) +
           " " + posenc::to_string(c.layout) + " " +
           std::to_string(plan.blocks) + "x" + std::to_string(plan.block_len) + " slots, " +
           std::to_string(pb::tokens_per_sequence(tokens)) + " token(s) per sequence per call";
  g.sync();  // plan.slots must outlive the upload
  return s;
}

/// The unfused path's second launch: K and V of `a` into the cache rows of their slots.
void scatter_kv(const Gpu& g, const posenc::AppendArgs& a) {
  if (a.cache.dtype != CacheDType::bf16 && a.cache.dtype != CacheDType::fp8_e4m3) {
    throw std::runtime_error("the bench copy kernel writes bfloat16 or float8_e4m3fn caches only");
  }
  ScatterKv s;
  s.k = static_cast<const uint4*>(a.k.data);
  s.v = static_cast<const uint4*>(a.v.data);
  s.slots = a.slots;
  s.rows = a.positions.count * a.cache.kv_heads;
  s.row_chunks = a.cache.head_dim * posenc::size_of(a.k.dtype) / 16;
  s.cache = a.cache;
  const auto blocks = static_cast<unsigned>((s.rows * s.row_chunks + 255) / 256);
  if (a.cache.dtype == CacheDType::fp8_e4m3) {
    scatter_kv_kernel<true><<<blocks, 256, 0, g.native>>>(s);
  } else {
    scatter_kv_kernel<false><<<blocks, 256, 0, g.native>>>(s);
  }
  POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  if (a.q_out.present()) {  // the rotated Q (apply wrote it in place, dense) into q_out
    const std::int64_t chunks = a.q.tokens * a.q.heads * a.q.head_dim * posenc::size_of(a.q.dtype) / 16;
    quantize_q_kernel<<<static_cast<unsigned>((chunks + 255) / 256), 256, 0, g.native>>>(
        static_cast<const uint4*>(a.q.data), static_cast<uint2*>(a.q_out.data), chunks, a.q_out.scale);
    POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
  }
}

/// Runs `op` (one append of `a`, by either method, with `engine`: a checkable() one) and compares
/// sampled tokens with append_reference.
std::string verify_append(Gpu& g, const posenc::gpu::GpuEngine& engine, const posenc::AppendArgs& a,
                          const std::function<void()>& op) {
  auto checked_op = [&] {
    op();
    engine.check(g.stream.ref());
  };
  return pb::verify_append(engine.spec(), a, checked_op, device_to_host(g), [&] { g.sync(); });
}

/// A row of the append sweep. Its bytes are the fused operation's least traffic, for both
/// methods: read and write Q, read K and V, write the cache's K and V rows (cache dtype).
pb::Row append_row(const std::string& card, const AppendCase& c, AppendMethod m, std::int64_t tokens) {
  const Variant shape = append_shape(c);
  pb::Row r = base_row(card, shape, tokens);
  r.variant = append_variant(c, m);
  r.bytes = pb::append_floor_bytes(tokens, shape.hq, shape.hk, shape.spec.head_dim, shape.dtype, c.cache);
  const double q_elems = static_cast<double>(tokens * shape.hq * shape.spec.head_dim);
  const double es = static_cast<double>(posenc::size_of(shape.dtype));
  // q_out: Q is read once and written once in the cache's dtype, not written back as itself.
  if (c.q_out) r.bytes += q_elems * (static_cast<double>(posenc::size_of(c.cache)) - es);
  r.bytes_whole = r.bytes;
  if (m == AppendMethod::rope_copy) {  // what the unfused path itself moves: K is also written and read back
    const double k_bytes = static_cast<double>(tokens * shape.hk * shape.spec.head_dim) * es;
    // (and with q_out, Q is written back as itself, then read again by the quantization)
    const double q_extra = c.q_out ? 2.0 * q_elems * es : 0.0;
    r.note = "moves " + pb::format_number(r.bytes + 2.0 * k_bytes + q_extra, 0) + " bytes";
  }
  return r;
}

/// One append row: verify on set 0, then time. Graphs only at decode sizes, where launch cost
/// matters (and to keep the sweep inside its time allowance).
void run_append_case(Gpu& g, const posenc::gpu::GpuEngine& engine, AppendSets& sets, AppendMethod m, pb::Row& row,
                     const Floor& floor) {
  const posenc::gpu::StreamRef stream = g.stream.ref();
  auto call_with = [&](const posenc::gpu::GpuEngine& e) {
    const std::size_t i = sets.rope.take_index();
    if (m == AppendMethod::fused) {
      e.append(sets.args[i], stream);
    } else {
      e.apply(sets.rope.args[i], stream);
      scatter_kv(g, sets.args[i]);
    }
  };
  auto call = [&] { call_with(engine); };
  sets.rope.next = 0;
  {
    const posenc::gpu::GpuEngine checked(checkable(engine.spec()), g.device);
    row.verified = verify_append(g, checked, sets.args[0], [&] { call_with(checked); });
  }
  row.note += (row.note.empty() ? "" : "; ") + sets.note;
  const TimedCall c{call, [&] { engine.check(stream); }, static_cast<std::int64_t>(sets.args.size()),
                    sets.rope.set_bytes, 0.1, row.t <= 1024};
  time_case(g, c, floor, row);
}

/// After a failed case: true when the device is in a sticky error state (every later call would
/// fail too), so the sweep stops instead of filling the table with copies of one error.
bool device_broken(const Gpu& g) {
  if (cudaStreamSynchronize(g.native) == cudaSuccess) return false;
  cudaGetLastError();
  return cudaDeviceSynchronize() != cudaSuccess;
}

// ---- targets (issue 18; the relative ones of the first performance issue) ------------------------

const pb::Row* find_row(const std::vector<pb::Row>& rows, const std::string& engine, const std::string& variant,
                        std::int64_t tokens) {
  for (const pb::Row& r : rows)
    if (r.engine == engine && r.variant == variant && r.t == tokens) return &r;
  return nullptr;
}

/// The variant whose FlashInfer and copy-kernel rows a posenc variant is compared with: the spec
/// path's for a cos/sin-cache row (decode_X_cache -> decode_X, cache_X -> main_X), else itself.
std::string peer_base(const std::string& variant) {
  const std::string suffix = "_cache";
  if (variant.size() > suffix.size() && variant.compare(variant.size() - suffix.size(), suffix.size(), suffix) == 0)
    return variant.substr(0, variant.size() - suffix.size());
  if (variant.rfind("cache_", 0) == 0) return "main_" + variant.substr(6);
  return variant;
}

/// FlashInfer's best time for `variant` at T: the faster of its two kernels, event-timed one launch
/// (`graph` false) or per call replayed from a graph; NaN when neither ran.
double best_peer_us(const std::vector<pb::Row>& rows, const std::string& variant, std::int64_t t, bool graph) {
  double best = pb::not_measured;
  for (fi::Kernel k : peer_kernels) {
    const pb::Row* r = find_row(rows, peer_engine(k), variant, t);
    if (r == nullptr || !pb::verdict_ok(r->verified)) continue;
    const double us = graph ? r->graph_us : r->median_us;
    if (std::isfinite(us) && !(us >= best)) best = us;
  }
  return best;
}

/// Issue 18's decode slack over the size-matched copy kernel, per call (graph) and one launch.
constexpr double decode_graph_slack_us = 0.15;
constexpr double decode_launch_slack_us = 0.3;
/// Mid sizes: share of the size-matched copy kernel's share of the floor.
constexpr double mid_share_of_copy = 0.97;

std::string us_pair(double a, double b) { return pb::format_number(a, 2) + " vs " + pb::format_number(b, 2) + " us"; }

std::vector<pb::TargetResult> evaluate_targets(const std::vector<pb::Row>& rows) {
  std::vector<pb::TargetResult> out;
  // Decode: faster than FlashInfer's best kernel, and within a fixed slack of the copy kernel of
  // the same bytes, both per call in a graph and for one launch.
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_gpu" || r.variant.rfind("decode_", 0) != 0) continue;
    const std::string base = peer_base(r.variant);
    const std::string name = r.variant + " T=" + std::to_string(r.t) + ": ";
    const double fi_graph = best_peer_us(rows, base, r.t, true), fi_launch = best_peer_us(rows, base, r.t, false);
    if (std::isfinite(fi_graph) || std::isfinite(fi_launch)) {
      out.push_back({name + "faster than FlashInfer's best (graph; one launch)",
                     "graph " + us_pair(r.graph_us, fi_graph) + "; launch " + us_pair(r.median_us, fi_launch),
                     r.graph_us < fi_graph && r.median_us < fi_launch});
    }
    if (const pb::Row* c = find_row(rows, "floor_sized", base, r.t)) {
      out.push_back({name + "<= copy + 0.15 us (graph), + 0.3 us (one launch)",
                     "graph " + us_pair(r.graph_us, c->graph_us) + "; launch " + us_pair(r.median_us, c->median_us),
                     r.graph_us <= c->graph_us + decode_graph_slack_us &&
                         r.median_us <= c->median_us + decode_launch_slack_us});
    }
  }
  // Mid sizes against the copy kernel of the same bytes; the large-T regression guard against the floor.
  const std::pair<std::int64_t, double> guard[] = {{65536, 0.98}, {16384, 0.94}};
  for (const std::string variant : {"main_half_split", "main_interleaved", "cache_half_split", "cache_interleaved"}) {
    for (std::int64_t t : {1024, 4096}) {
      const pb::Row* r = find_row(rows, "posenc_gpu", variant, t);
      const pb::Row* c = find_row(rows, "floor_sized", "rmw_kernel", t);
      if (r == nullptr || c == nullptr) continue;
      const double rel = r->ratio / c->ratio;
      out.push_back({variant + " T=" + std::to_string(t) + ": >= " + pb::percent(mid_share_of_copy) + " of the copy kernel",
                     pb::percent(rel) + " (" + pb::percent(r->ratio) + " vs " + pb::percent(c->ratio) + " of floor)",
                     std::isfinite(rel) && rel >= mid_share_of_copy});
    }
    for (auto [t, need] : guard) {
      const pb::Row* r = find_row(rows, "posenc_gpu", variant, t);
      if (r == nullptr) continue;
      out.push_back({variant + " T=" + std::to_string(t) + ": >= " + pb::percent(need) + " of floor",
                     pb::percent(r->ratio), std::isfinite(r->ratio) && r->ratio >= need});
    }
  }
  // Relative targets are judged where the engine is bandwidth-bound (T >= 4096); below that the
  // times are launch-bound and their ratio says little about the kernel.
  auto relative = [&](const std::string& variant, const std::string& reference, double within) {
    for (std::int64_t t : {4096, 16384, 65536}) {
      const pb::Row* r = find_row(rows, "posenc_gpu", variant, t);
      const pb::Row* ref = find_row(rows, "posenc_gpu", reference, t);
      if (r == nullptr || ref == nullptr) continue;
      const double rel = r->ratio / ref->ratio;
      out.push_back({variant + " T=" + std::to_string(t) + ": >= " + pb::percent(1.0 - within) + " of " + reference,
                     pb::percent(rel) + " (" + pb::percent(r->ratio) + " vs " + pb::percent(ref->ratio) + ")",
                     std::isfinite(rel) && rel >= 1.0 - within});
    }
  };
  relative("accurate", "main_half_split", 0.03);
  for (const char* v : {"heads_32x32", "heads_64x8", "heads_96x8", "heads_128x8", "hd64", "hd80", "hd96", "hd256",
                        "f32", "f16"})
    relative(v, "main_half_split", 0.10);

  int cases = 0, bad = 0;
  bool appends = false;
  std::string first_bad;
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_gpu") continue;
    ++cases;
    appends = appends || r.variant.rfind("append_", 0) == 0;
    if (!pb::verdict_ok(r.verified) || r.verified.empty()) {
      if (bad++ == 0) first_bad = r.variant + " T=" + std::to_string(r.t) + ": " + r.verified;
    }
  }
  if (cases > 0) {
    out.push_back({std::string("every case verified against apply_reference") +
                       (appends ? " / append_reference" : "") + " (" + std::to_string(cases) + " cases)",
                   bad == 0 ? std::string("all ok") : std::to_string(bad) + " bad, first " + first_bad, bad == 0});
  }
  // The peer must do the same work for its times to mean anything.
  int peer_rows = 0, peer_bad = 0;
  std::string first_peer_bad;
  for (const pb::Row& r : rows) {
    if (r.engine.rfind("flashinfer_", 0) != 0) continue;
    ++peer_rows;
    if (!pb::verdict_ok(r.verified) || r.verified.empty()) {
      if (peer_bad++ == 0) first_peer_bad = r.engine + "/" + r.variant + " T=" + std::to_string(r.t) + ": " + r.verified;
    }
  }
  if (peer_rows > 0) {
    out.push_back({"FlashInfer rows rotate as posenc does (rel_l2 <= 1e-2 vs accurate; " + std::to_string(peer_rows) +
                       " rows)",
                   peer_bad == 0 ? std::string("all ok") : std::to_string(peer_bad) + " bad, first " + first_peer_bad,
                   peer_bad == 0});
  }
  return out;
}

// ---- output ----------------------------------------------------------------------------------------

/// The append sweep side by side: per cache configuration and T, both methods' time and share of
/// the floor, and the fused call's speed-up (rope+copy time / fused time).
std::string append_markdown(const std::vector<pb::Row>& rows) {
  std::string s = "## Fused append against RoPE + a separate cache copy\n\n"
                  "| cache | T | fused us | rope+copy us | speed-up | fused share | rope+copy share | verified |\n"
                  "|---|---:|---:|---:|---:|---:|---:|---|\n";
  int lines = 0;
  for (const AppendCase& c : append_cases()) {
    for (const pb::Row& f : rows) {
      if (f.variant != append_variant(c, AppendMethod::fused)) continue;
      const pb::Row* u = find_row(rows, "posenc_gpu", append_variant(c, AppendMethod::rope_copy), f.t);
      const double rc_us = u != nullptr ? u->median_us : pb::not_measured;
      s += "| " + c.name + " | " + std::to_string(f.t) + " | " + pb::format_number(f.median_us, 2) + " | " +
           pb::format_number(rc_us, 2) + " | " + pb::format_number(rc_us / f.median_us, 2) + "x | " +
           pb::percent(f.ratio) + " | " + pb::percent(u != nullptr ? u->ratio : pb::not_measured) + " | " +
           f.verified + (u != nullptr ? " / " + u->verified : std::string()) + " |\n";
      ++lines;
    }
  }
  return lines > 0 ? s : std::string();
}

/// posenc against FlashInfer on the same input sets: per posenc row that has peer rows, the times
/// (event-timed one launch / per call in a graph), the copy kernel of the same bytes where the sweep
/// has one, and posenc's speed over FlashInfer's best (their time / ours: above 1, posenc is faster).
std::string peers_markdown(const std::vector<pb::Row>& rows) {
  std::string s = "## posenc against FlashInfer (same input sets; us: one launch / per call in a graph)\n\n"
                  "| variant | T | posenc | FI pos_ids | FI cos_sin_cache | copy kernel | speed vs FI best (launch / "
                  "graph) | FI check |\n|---|---:|---:|---:|---:|---:|---:|---|\n";
  auto times = [](const pb::Row* r) {
    return r == nullptr ? std::string() : pb::format_number(r->median_us, 2) + " / " + pb::format_number(r->graph_us, 2);
  };
  int lines = 0;
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_gpu") continue;
    const std::string base = peer_base(r.variant);
    const pb::Row* pos = find_row(rows, peer_engine(fi::Kernel::pos_ids), base, r.t);
    const pb::Row* cache = find_row(rows, peer_engine(fi::Kernel::cos_sin_cache), base, r.t);
    if (pos == nullptr && cache == nullptr) continue;
    const pb::Row* copy = find_row(rows, "floor_sized", base.rfind("decode_", 0) == 0 ? base : "rmw_kernel", r.t);
    if (copy != nullptr && base.rfind("decode_", 0) != 0 && (r.hq != 32 || r.hk != 8 || r.r != 128)) copy = nullptr;
    const double fe = best_peer_us(rows, base, r.t, false), fg = best_peer_us(rows, base, r.t, true);
    std::string check;
    for (const pb::Row* p : {pos, cache})
      if (p != nullptr) check += (check.empty() ? "" : "; ") + p->verified;
    s += "| " + r.variant + " | " + std::to_string(r.t) + " | " + times(&r) + " | " + times(pos) + " | " + times(cache) +
         " | " + times(copy) + " | " + pb::format_number(fe / r.median_us, 2) + "x / " +
         pb::format_number(fg / r.graph_us, 2) + "x | " + check + " |\n";
    ++lines;
  }
  return lines > 0 ? s : std::string();
}

std::string markdown(const std::string& card, const Floor& start, const Floor& end, const std::vector<pb::Row>& rows,
                     const std::vector<pb::TargetResult>& targets) {
  std::string s = "# posenc GPU benchmark: " + card + "\n\n";
  s += "Floor (measured at the start of this run, " + std::to_string(start.buffer_bytes >> 20) +
       " MiB buffers, bytes = read + write): memcpy " + pb::format_number(start.memcpy_gbps, 0) +
       " GB/s, read-modify-write kernel " + pb::format_number(start.rmw_gbps, 0) + " GB/s; ratios use the " +
       start.kind() + " figure (" + pb::format_number(start.best(), 0) + " GB/s). At the end of the run: memcpy " +
       pb::format_number(end.memcpy_gbps, 0) + " GB/s, kernel " + pb::format_number(end.rmw_gbps, 0) + " GB/s.\n\n";
  s += "| variant | dtype | pairing | numerics | Hq/Hk | D/R | T | us (event) | us/call (graph) | GB/s | share of floor | "
       "verified |\n|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|\n";
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_gpu") continue;
    s += "| " + r.variant + " | " + r.dtype + " | " + r.pairing + " | " + r.numerics + " | " + std::to_string(r.hq) +
         "/" + std::to_string(r.hk) + " | " + std::to_string(r.d) + "/" + std::to_string(r.r) + " | " +
         std::to_string(r.t) + " | " + pb::format_number(r.median_us, 2) + " | " + pb::format_number(r.graph_us, 2) +
         " | " + pb::format_number(r.gbps, 0) + " | " + pb::percent(r.ratio) + " | " + r.verified + " |\n";
  }
  s += "\n" + peers_markdown(rows) + "\n" + append_markdown(rows) + "\n" + pb::targets_markdown(targets);
  return s;
}

pb::Row floor_row(const std::string& card, const char* variant, double gbps, const Floor& f, const char* note) {
  pb::Row r;
  r.card = card;
  r.engine = "floor";
  r.variant = variant;
  r.dtype = "float32";
  r.bytes = 2.0 * static_cast<double>(f.buffer_bytes);
  r.bytes_whole = r.bytes;
  r.gbps = gbps;
  r.median_us = r.bytes / (gbps * 1e3);
  r.floor_gbps = f.best();
  r.floor_kind = f.kind();
  r.ratio = gbps / f.best();
  r.verified = "n/a";
  r.note = note;
  return r;
}

/// The launch floor row (engine "launch"): empty_kernel timed exactly as a case (event pairs
/// around each launch, and per call replayed from graphs), T = 1, no bytes.
pb::Row launch_row(Gpu& g, const std::string& card, const Floor& floor) {
  pb::Row r;
  r.card = card;
  r.engine = "launch";
  r.variant = "empty_kernel";
  r.t = 1;
  r.bytes = 0;
  r.bytes_whole = 0;
  r.verified = "n/a";
  r.note = "a kernel with an empty body and a 320-byte argument block";
  const LaunchArgs args{};
  TimedCall c{[&] {
                empty_kernel<<<1, 32, 0, g.native>>>(args);
                POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
              },
              [] {}, 1, 1};
  time_case(g, c, floor, r);
  r.gbps = pb::not_measured;
  r.ratio = pb::not_measured;
  return r;
}

/// The floor kernel at the size of one call of `shape` (the bytes its row counts: Q and K, or their
/// rotary window, read and written in place), timed exactly as a case: inputs rotating past L2,
/// event pairs around each launch, graph replays. It shows how much of the floor any kernel of that
/// size reaches once its launch and its ramp are paid, which the large-T floor does not: the
/// size-matched copy kernel the decode and mid-size targets are judged against.
pb::Row sized_floor_row(Gpu& g, const std::string& card, const Floor& floor, const Variant& shape,
                        std::int64_t tokens, const std::string& variant) {
  pb::Row r = base_row(card, shape, tokens);
  r.engine = "floor_sized";
  r.variant = variant;
  r.pairing = "n/a";
  r.numerics = "n/a";
  r.verified = "n/a";
  r.note = "in-place x*a+b kernel over the bytes of " + (variant == "rmw_kernel" ? "the main shape" : shape.name);
  const auto read = static_cast<std::int64_t>(r.bytes / 2);
  const std::int64_t stride = align_up(read, 256);
  const std::int64_t l2 = std::max<std::int64_t>(g.device.l2_bytes(), 1 << 20);
  const std::int64_t sets = std::min<std::int64_t>(std::max<std::int64_t>(2, (4 * l2 + read - 1) / read), 1 << 16);
  posenc::gpu::DeviceBuffer arena(g.device, sets * stride);
  g.fill_elements(arena.data(), DType::f32, sets * stride / 4, 0x5eedull + static_cast<std::uint64_t>(tokens));
  const std::int64_t n4 = (read + 15) / 16;  // within the set's 256-byte-aligned stride
  const auto blocks = static_cast<unsigned>((n4 + rmw_block * rmw_unroll - 1) / (rmw_block * rmw_unroll));
  std::int64_t next = 0;
  TimedCall c{[&] {
                auto* x = reinterpret_cast<float4*>(static_cast<unsigned char*>(arena.data()) + (next++ % sets) * stride);
                rmw_kernel<<<blocks, rmw_block, 0, g.native>>>(x, n4, 0.999f, 0.001f);
                POSENC_BENCH_CUDA_CHECK(cudaGetLastError());
              },
              [] {}, sets, read};
  time_case(g, c, floor, r);
  return r;
}

/// The main shape (bf16 Q [T, 32, 128] + K [T, 8, 128]) as a Variant, for its sized floor rows.
Variant main_shape() {
  Variant v;
  v.name = "main";
  v.spec = plain_spec(128, Pairing::half_split, Numerics::hf_compatible);
  return v;
}

struct Options : pb::CommonOptions {
  int device = 0;
  bool l2_resident = false;  ///< analysis: every call reuses one input set (no append rows, no targets)
  bool peers = true;         ///< FlashInfer's kernels beside the variants that have them
  bool decode = true;        ///< the decode rows (three models, T = 1, 8, 64, 256)
  std::vector<std::int64_t> decode_tokens;
};

void usage() {
  std::printf(
      "usage: posenc_bench_gpu [--quick] [--out DIR] [--filter A,B] [--tokens 1,64,4096] [--device N]\n"
      "                        [--budget-s S] [--no-append] [--no-peers] [--no-decode] [--l2-resident]\n"
      "  --quick      T in {1, 64, 4096, 65536} (decode: 1, 64); the main, accurate and f32 variants, the\n"
      "               decode rows and the paged_nhd append rows only\n"
      "  --out DIR    where bench_gpu.csv and bench_gpu.md go (default .)\n"
      "  --filter     keep variants whose name contains one of the comma-separated words\n"
      "               (main_half_split main_interleaved accurate main_exact_trig heads_32x32 heads_64x8 heads_96x8\n"
      "               heads_128x8 hd64 hd80 hd96 hd256 f32 f16 glm4_9b qk_norm qk_norm_gemma3; the decode rows are\n"
      "               decode_glm4_9b decode_llama31_8b decode_qwen3_30b_a3b (decode_llama31_8b_exact_trig:\n"
      "               the same with correctly rounded cos/sin; decode_X_cache: only posenc's cos/sin-cache row\n"
      "               of decode_X); the append rows are\n"
      "               append_{fused,ropecopy}_{contiguous,paged_nhd,paged_hnd,paged_nhd_interleaved,\n"
      "               paged_nhd_fp8,paged_nhd_fp8_qout,qk_norm_paged_nhd_fp8_qout}: --filter append runs\n"
      "               only those; _qout writes Q as fp8 too: fused = append with q_out, ropecopy = apply +\n"
      "               cache copy + a Q cast; qk_norm_: Qwen3's QK norm first, in both methods' first call)\n"
      "  --tokens     token counts to sweep (default 1,8,64,256,1024,4096,16384,65536; the decode rows\n"
      "               run at those of 1,8,64,256)\n"
      "  --budget-s   start no new case after this many seconds; what ran is still written\n"
      "  --no-append  skip the fused-append rows (GpuEngine::append against apply + a cache copy)\n"
      "  --no-peers   skip FlashInfer's rows (run beside main_*, f16, glm4_9b and the decode rows when\n"
      "               the build found its headers)\n"
      "  --no-decode  skip the decode rows (GLM-4-9B, Llama-3.1-8B, Qwen3-30B-A3B; posenc by the spec and by\n"
      "               its cos/sin-cache path, FlashInfer and the copy kernel of the same bytes)\n"
      "  --l2-resident  analysis: every call reuses one input set, as when the kernel that wrote Q and K\n"
      "               just ran (engine posenc_gpu_l2; no append rows; not the method of the targets)\n");
}

Options parse_options(int argc, char** argv) {
  Options o;
  pb::parse_args(argc, argv, o, usage, [&](const std::string& a, auto&& value) {
    if (a == "--l2-resident") {
      o.l2_resident = true;
      o.append = false;
      return true;
    }
    if (a == "--no-peers" || a == "--no-decode") {
      (a == "--no-peers" ? o.peers : o.decode) = false;
      return true;
    }
    if (a != "--device") return false;
    o.device = std::stoi(value());
    return true;
  });
  for (std::int64_t t : decode_tokens) {
    const bool given = std::find(o.tokens.begin(), o.tokens.end(), t) != o.tokens.end();
    if (o.tokens.empty() ? (!o.quick || t == 1 || t == 64) : given) o.decode_tokens.push_back(t);
  }
  if (o.tokens.empty()) {
    o.tokens = o.quick ? std::vector<std::int64_t>{1, 64, 4096, 65536}
                       : std::vector<std::int64_t>{1, 8, 64, 256, 1024, 4096, 16384, 65536};
  }
  return o;
}

int run(const Options& opt) {
  const auto t_begin = std::chrono::steady_clock::now();
  if (!posenc::gpu::available()) {
    std::fprintf(stderr, "posenc_bench_gpu: no GPU: %s\n", posenc::gpu::unavailable_reason().c_str());
    return 1;
  }
  Gpu g(opt.device, 2000);
  const std::string card = g.device.name();
  std::printf("device %d: %s, %d SMs, L2 %lld MiB, backend %s\n", opt.device, card.c_str(),
              g.device.multiprocessor_count(), static_cast<long long>(g.device.l2_bytes() >> 20),
              posenc::gpu::backend_name());

  const Floor floor = measure_floor(g);
  std::printf("floor: memcpy %.0f GB/s, rmw kernel %.0f GB/s -> using %s (%.0f GB/s)\n", floor.memcpy_gbps,
              floor.rmw_gbps, floor.kind(), floor.best());

  std::vector<pb::Row> rows;
  rows.push_back(floor_row(card, "floor_memcpy", floor.memcpy_gbps, floor, "start of run"));
  rows.push_back(floor_row(card, "floor_rmw_kernel", floor.rmw_gbps, floor, "start of run"));

  rows.push_back(launch_row(g, card, floor));
  std::printf("launch floor: empty kernel %.2f us event-timed, %.2f us per call in a graph (%s)\n",
              rows.back().median_us, rows.back().graph_us, rows.back().note.c_str());

  const bool peers = opt.peers && !opt.l2_resident && flashinfer_built;
  if (!flashinfer_built) {
    std::printf("FlashInfer peer: not built (no headers at configure time; scripts/stage-gpu-deps.sh extracts them)\n");
  } else {
    std::printf("FlashInfer peer: %s, built from %s%s\n", flashinfer_version, flashinfer_include,
                peers ? "" : " (rows off)");
  }

  for (std::int64_t t : opt.tokens) {
    rows.push_back(sized_floor_row(g, card, floor, main_shape(), t, "rmw_kernel"));
    std::printf("floor kernel at the main shape's bytes, T=%lld: %.2f us event-timed (%s of the floor), %.2f us per call in a graph\n",
                static_cast<long long>(t), rows.back().median_us, pb::percent(rows.back().ratio).c_str(),
                rows.back().graph_us);
  }

  std::printf("%-44s %-10s %-12s %6s %10s %10s %8s %7s  %s\n", "[engine/]variant", "dtype", "pairing", "T", "us",
              "graph_us", "GB/s", "share", "verified");
  bool broken = false;
  bool verify_failed = false;
  int skipped = 0;
  std::uint64_t seed = 1;
  auto out_of_time = [&] {
    return pb::stop_requested != 0 ||
           (opt.budget_s > 0 &&
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count() > opt.budget_s);
  };
  // Runs one case into `row` and records it; an exception becomes the row's error (and stops the
  // sweep when the device is left in an error state).
  auto record = [&](pb::Row row, const std::function<void(pb::Row&)>& body) {
    try {
      body(row);
    } catch (const std::exception& e) {
      row.verified = row.verified.empty() ? std::string("error: ") + e.what() : row.verified;
      row.note += std::string(row.note.empty() ? "" : "; ") + "error: " + e.what();
      broken = device_broken(g);
    }
    verify_failed = verify_failed || !pb::verdict_ok(row.verified);
    const std::string label = row.engine == "posenc_gpu" ? row.variant : row.engine + "/" + row.variant;
    std::printf("%-44s %-10s %-12s %6lld %10s %10s %8s %7s  %s\n", label.c_str(), row.dtype.c_str(),
                row.pairing.c_str(), static_cast<long long>(row.t), pb::format_number(row.median_us, 2).c_str(),
                pb::format_number(row.graph_us, 2).c_str(), pb::format_number(row.gbps, 0).c_str(),
                pb::percent(row.ratio).c_str(), row.verified.c_str());
    std::fflush(stdout);
    rows.push_back(std::move(row));
    if (broken) std::fprintf(stderr, "posenc_bench_gpu: the device is in an error state; stopping the sweep\n");
  };
  // An engine, or the error that stops every row of its variant.
  std::string engine_error;
  auto make_engine = [&](const RopeSpec& spec) {
    engine_error.clear();
    try {
      return std::make_unique<posenc::gpu::GpuEngine>(spec, g.device);
    } catch (const std::exception& e) {
      engine_error = std::string("engine construction: ") + e.what();
      return std::unique_ptr<posenc::gpu::GpuEngine>();
    }
  };

  // One (variant, T): the posenc row, then FlashInfer's rows on the same input sets, made once.
  // A variant's spec-path row runs when the filter names it; its cos/sin-cache row also when the
  // filter names only that row (decode_X_cache), so that a profiler can pick its launches by count.
  auto selects_spec_row = [&](const Variant& v) { return pb::matches_filter(v.name, opt.filters); };
  auto selects_cache_row = [&](const Variant& v) {
    return v.cache_row && pb::matches_filter(v.name + "_cache", opt.filters);
  };
  auto run_rows = [&](const Variant& v, const posenc::gpu::GpuEngine* engine, std::int64_t t,
                      std::unique_ptr<CosSinTable>& table) {
    std::unique_ptr<InputSets> sets;
    const std::uint64_t case_seed = seed++ * 0x1000193ull;
    auto input = [&]() -> InputSets& {
      if (!sets) sets = std::make_unique<InputSets>(make_input_sets(g, v, t, case_seed, 0, opt.l2_resident));
      return *sets;
    };
    auto posenc_row = [&](const Variant& pv) {
      pb::Row base = base_row(card, pv, t);
      if (opt.l2_resident) {
        base.engine = "posenc_gpu_l2";
        base.note += std::string(base.note.empty() ? "" : "; ") + "one input set reused: inputs resident in L2";
      }
      record(std::move(base), [&](pb::Row& row) {
        if (engine == nullptr) throw std::runtime_error(engine_error);
        if (pv.cos_sin_cache) {
          // The same float32 table FlashInfer's cache kernel reads, shared by every input set.
          if (!table) table = std::make_unique<CosSinTable>(make_cos_sin_table(g, pv));
          const auto view = posenc::CosSinCacheView::contiguous(table->data(), DType::f32, table->rows, table->rotary);
          for (RopeArgs& a : input().args) a.cos_sin = view;
          row.note += std::string(row.note.empty() ? "" : "; ") + "cos/sin from a float32 [" +
                      std::to_string(table->rows) + ", " + std::to_string(table->rotary) + "] cache";
        }
        run_case(g, pv, *engine, input(), row, floor);
      });
    };
    const bool spec_row = selects_spec_row(v);
    if (spec_row) posenc_row(v);
    if (!broken && selects_cache_row(v)) {
      if (out_of_time()) {
        ++skipped;
      } else {
        Variant cached = v;
        cached.name += "_cache";
        cached.cos_sin_cache = true;
        posenc_row(cached);
      }
    }
    if (!peers || !v.peers || !spec_row) return;
    const std::string unsupported = peer_unsupported(v);
    for (fi::Kernel k : peer_kernels) {
      if (broken) break;
      if (out_of_time()) {
        ++skipped;
        continue;
      }
      record(peer_row(card, v, t, k), [&](pb::Row& row) {
        if (!unsupported.empty()) throw std::runtime_error("FlashInfer cannot run this shape: " + unsupported);
        if (k == fi::Kernel::cos_sin_cache && !table) table = std::make_unique<CosSinTable>(make_cos_sin_table(g, v));
        run_peer_case(g, v, k, input(), table.get(), row, floor);
      });
    }
  };

  // The decode rows first (issue 18's targets): per model and T, the copy kernel of the same bytes,
  // posenc and FlashInfer.
  for (const Variant& v : opt.decode && !opt.l2_resident ? decode_variants() : std::vector<Variant>{}) {
    if (broken) break;
    if (!selects_spec_row(v) && !selects_cache_row(v)) continue;
    const std::unique_ptr<posenc::gpu::GpuEngine> engine = make_engine(v.spec);
    std::unique_ptr<CosSinTable> table;
    for (std::int64_t t : opt.decode_tokens) {
      if (broken) break;
      if (out_of_time()) {
        ++skipped;
        continue;
      }
      pb::Row copy = base_row(card, v, t);
      copy.engine = "floor_sized";
      record(std::move(copy), [&](pb::Row& row) { row = sized_floor_row(g, card, floor, v, t, v.name); });
      run_rows(v, engine.get(), t, table);
    }
  }

  for (const Variant& v : all_variants()) {
    if (broken) break;
    if (opt.quick && !v.in_quick) continue;
    if (!selects_spec_row(v) && !selects_cache_row(v)) continue;
    const std::unique_ptr<posenc::gpu::GpuEngine> engine = make_engine(v.spec);
    std::unique_ptr<CosSinTable> table;
    for (std::int64_t t : opt.tokens) {
      if (broken) break;
      if (out_of_time()) {
        ++skipped;
        continue;
      }
      run_rows(v, engine.get(), t, table);
    }
  }

  // The append sweep: per cache configuration and T, one set of inputs timed by both methods.
  for (const AppendCase& c : opt.append ? append_cases() : std::vector<AppendCase>{}) {
    if (broken) break;
    if (opt.quick && !c.in_quick) continue;
    std::vector<AppendMethod> methods;
    for (AppendMethod m : {AppendMethod::fused, AppendMethod::rope_copy})
      if (pb::matches_filter(append_variant(c, m), opt.filters)) methods.push_back(m);
    if (methods.empty()) continue;
    const std::unique_ptr<posenc::gpu::GpuEngine> engine = make_engine(append_shape(c).spec);
    for (std::int64_t t : opt.tokens) {
      if (broken) break;
      if (!c.only_tokens.empty() && std::find(c.only_tokens.begin(), c.only_tokens.end(), t) == c.only_tokens.end())
        continue;
      if (out_of_time()) {
        skipped += static_cast<int>(methods.size());
        continue;
      }
      std::unique_ptr<AppendSets> sets;
      const std::uint64_t case_seed = seed++ * 0x1000193ull;
      for (AppendMethod m : methods) {
        if (broken) break;
        record(append_row(card, c, m, t), [&](pb::Row& row) {
          if (!engine) throw std::runtime_error(engine_error);
          if (!sets) sets = std::make_unique<AppendSets>(make_append_sets(g, c, t, case_seed));
          run_append_case(g, *engine, *sets, m, row, floor);
        });
      }
    }
  }

  if (skipped > 0) {
    std::printf("WARNING: %s: %d cases not run\n", pb::stop_requested != 0 ? "stopped by a signal" : "time budget reached",
                skipped);
  }
  Floor end;
  if (!broken) {
    end = measure_floor(g);
    const double drift = end.best() / floor.best() - 1.0;
    std::printf("floor at the end: memcpy %.0f GB/s, rmw kernel %.0f GB/s (%+.1f%% against the start%s)\n",
                end.memcpy_gbps, end.rmw_gbps, 100.0 * drift,
                std::abs(drift) > 0.03 ? "; WARNING: the card's bandwidth moved during the run" : "");
    rows.push_back(floor_row(card, "floor_memcpy", end.memcpy_gbps, floor, "end of run"));
    rows.push_back(floor_row(card, "floor_rmw_kernel", end.rmw_gbps, floor, "end of run"));
  }

  const std::vector<pb::TargetResult> targets = evaluate_targets(rows);
  const std::filesystem::path out(opt.out);
  pb::write_text_file(out / "bench_gpu.csv", pb::csv_text(rows));
  pb::write_text_file(out / "bench_gpu.md", markdown(card, floor, end, rows, targets));
  pb::print_targets(targets);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  std::printf("wrote %s and %s (%.0f s)\n", (out / "bench_gpu.csv").c_str(), (out / "bench_gpu.md").c_str(), seconds);
  if (broken) return 1;
  return verify_failed ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  pb::install_stop_handler();
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "posenc_bench_gpu: %s\n", e.what());
    return 1;
  }
}
