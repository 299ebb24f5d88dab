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
//           CPU definition), bit-exact for hf_compatible.
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
#include <string>
#include <vector>

#include "gpu/vendor.hpp"
#include "posenc/posenc.hpp"

#include "bench_common.hpp"

namespace pb = posenc::bench;
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

__global__ void fill_positions_kernel(std::int64_t* data, std::int64_t count, std::uint64_t seed) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step) {
    data[i] = pb::random_position(seed, i);
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
  void fill_positions(std::int64_t* data, std::int64_t count, std::uint64_t seed) const {
    fill_positions_kernel<<<device.multiprocessor_count() * 8, 256, 0, native>>>(data, count, seed);
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
};

RopeSpec plain_spec(std::int64_t head_dim, Pairing pairing, Numerics numerics) {
  RopeSpec s;
  s.head_dim = head_dim;
  s.pairing = pairing;
  s.numerics = numerics;
  s.theta = 10000.0;
  return s;
}

/// GLM-4-9B-chat as posenc resolves it from its embedded config.json: 32 query heads, 2 KV heads,
/// head_dim 128, the first 64 dims rotated in interleaved pairs.
Variant glm4_variant() {
  Variant v;
  v.name = "glm4_9b";
  try {
    const posenc::ModelConfig cfg =
        posenc::parse_model_config(posenc::default_model_config_json(), "<embedded:glm-4-9b-chat>");
    v.spec = cfg.spec();
    v.hq = cfg.num_attention_heads;
    v.hk = cfg.num_key_value_heads;
  } catch (const std::exception& e) {
    // Config ingestion is another part of posenc; if it fails, still time the real shape.
    v.spec = plain_spec(128, Pairing::interleaved, Numerics::hf_compatible);
    v.spec.rotary_dim = 64;
    v.spec.theta = 10000.0 * 500.0;  // rope_ratio 500
    v.hq = 32;
    v.hk = 2;
    v.note = std::string("spec written out by hand: config ingestion failed: ") + e.what();
  }
  return v;
}

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
  add("main_interleaved", plain_spec(128, Pairing::interleaved, hf), 32, 8, DType::bf16, true);
  add("accurate", plain_spec(128, Pairing::half_split, Numerics::accurate), 32, 8, DType::bf16, true);
  const std::pair<std::int64_t, std::int64_t> head_counts[] = {{32, 32}, {64, 8}, {96, 8}, {128, 8}};
  for (auto [hq, hk] : head_counts)
    add("heads_" + std::to_string(hq) + "x" + std::to_string(hk), plain_spec(128, Pairing::half_split, hf), hq,
        hk, DType::bf16, false);
  for (int d : {64, 80, 96, 256})
    add("hd" + std::to_string(d), plain_spec(d, Pairing::half_split, hf), 32, 8, DType::bf16, false);
  add("f32", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::f32, true);
  add("f16", plain_spec(128, Pairing::half_split, hf), 32, 8, DType::f16, false);
  Variant glm = glm4_variant();
  vs.push_back(std::move(glm));
  return vs;
}

// ---- one case ------------------------------------------------------------------------------------

constexpr std::int64_t align_up(std::int64_t v, std::int64_t a) { return (v + a - 1) / a * a; }

/// Several input sets of one case in one allocation: all Q sets, then all K sets, then all
/// position sets, each set aligned to 256 bytes. Three fill launches cover everything.
struct InputSets {
  posenc::gpu::DeviceBuffer arena;
  std::vector<RopeArgs> args;
  std::int64_t set_bytes = 0;  ///< Q + K + positions of one set, unpadded
  std::int64_t next = 0;       ///< rotation counter: every launch takes the next set
  const RopeArgs& take() { return args[static_cast<std::size_t>(next++ % static_cast<std::int64_t>(args.size()))]; }
};

InputSets make_input_sets(Gpu& g, const Variant& v, std::int64_t tokens, std::uint64_t seed) {
  const std::int64_t es = posenc::size_of(v.dtype);
  const std::int64_t d = v.spec.head_dim;
  const std::int64_t q_bytes = tokens * v.hq * d * es;
  const std::int64_t k_bytes = tokens * v.hk * d * es;
  const std::int64_t p_bytes = tokens * 8;
  const std::int64_t q_stride = align_up(q_bytes, 256);
  const std::int64_t k_stride = align_up(k_bytes, 256);
  const std::int64_t p_stride = align_up(p_bytes, 256);
  const std::int64_t set_bytes = q_bytes + k_bytes + p_bytes;
  const std::int64_t per_set = q_stride + k_stride + p_stride;

  // Enough sets that the launches cycle through >= 4x L2, and never fewer than 2, so no launch
  // finds its inputs left in L2 by the launch before.
  const std::int64_t l2 = std::max<std::int64_t>(g.device.l2_bytes(), 1 << 20);
  std::int64_t n_sets = std::max<std::int64_t>(2, (4 * l2 + set_bytes - 1) / set_bytes);
  n_sets = std::min<std::int64_t>(n_sets, 1 << 16);
  const std::int64_t budget = g.device.memory_info().free_bytes * 6 / 10;
  while (n_sets > 1 && n_sets * per_set > budget) --n_sets;
  if (n_sets * per_set > budget) {
    throw std::runtime_error("one input set (" + std::to_string(per_set) + " bytes) does not fit in free memory");
  }

  InputSets s;
  s.set_bytes = set_bytes;
  s.arena = posenc::gpu::DeviceBuffer(g.device, n_sets * per_set);
  auto* base = static_cast<unsigned char*>(s.arena.data());
  unsigned char* q0 = base;
  unsigned char* k0 = base + n_sets * q_stride;
  unsigned char* p0 = k0 + n_sets * k_stride;
  g.fill_elements(q0, v.dtype, n_sets * q_stride / es, seed);
  g.fill_elements(k0, v.dtype, n_sets * k_stride / es, seed ^ 0x6b6b6b6bull);
  g.fill_positions(reinterpret_cast<std::int64_t*>(p0), n_sets * p_stride / 8, seed ^ 0x7070ull);
  s.args.resize(static_cast<std::size_t>(n_sets));
  for (std::int64_t i = 0; i < n_sets; ++i) {
    RopeArgs& a = s.args[static_cast<std::size_t>(i)];
    a.q = posenc::TensorView::contiguous(q0 + i * q_stride, v.dtype, tokens, v.hq, d);
    a.k = posenc::TensorView::contiguous(k0 + i * k_stride, v.dtype, tokens, v.hk, d);
    a.positions = {p0 + i * p_stride, posenc::IndexType::i64, tokens};
  }
  g.sync();
  return s;
}

/// Applies once to `a` on the GPU and compares sampled tokens with apply_reference on the host.
std::string verify_case(Gpu& g, const Variant& v, const posenc::gpu::GpuEngine& engine, const RopeArgs& a) {
  const std::int64_t es = posenc::size_of(v.dtype);
  const std::int64_t d = v.spec.head_dim;
  const std::int64_t q_row = v.hq * d * es;
  const std::int64_t k_row = v.hk * d * es;
  const std::vector<std::int64_t> tokens = pb::sample_tokens(a.positions.count, 64);
  const auto n = static_cast<std::int64_t>(tokens.size());
  std::vector<unsigned char> q_ref(static_cast<std::size_t>(n * q_row)), k_ref(static_cast<std::size_t>(n * k_row));
  std::vector<unsigned char> q_got(q_ref.size()), k_got(k_ref.size());
  std::vector<std::int64_t> pos(static_cast<std::size_t>(n));

  auto rows = [&](bool to_host_ref, unsigned char* q_host, unsigned char* k_host) {
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t t = tokens[static_cast<std::size_t>(j)];
      POSENC_BENCH_CUDA_CHECK(cudaMemcpyAsync(q_host + j * q_row, static_cast<const unsigned char*>(a.q.data) + t * q_row,
                                              static_cast<std::size_t>(q_row), cudaMemcpyDeviceToHost, g.native));
      POSENC_BENCH_CUDA_CHECK(cudaMemcpyAsync(k_host + j * k_row, static_cast<const unsigned char*>(a.k.data) + t * k_row,
                                              static_cast<std::size_t>(k_row), cudaMemcpyDeviceToHost, g.native));
      if (to_host_ref) {
        POSENC_BENCH_CUDA_CHECK(cudaMemcpyAsync(&pos[static_cast<std::size_t>(j)],
                                                static_cast<const std::int64_t*>(a.positions.data) + t, 8,
                                                cudaMemcpyDeviceToHost, g.native));
      }
    }
    g.sync();
  };
  rows(true, q_ref.data(), k_ref.data());
  engine.apply(a, g.stream.ref());
  engine.check(g.stream.ref());
  rows(false, q_got.data(), k_got.data());

  RopeArgs host;
  host.q = posenc::TensorView::contiguous(q_ref.data(), v.dtype, n, v.hq, d);
  host.k = posenc::TensorView::contiguous(k_ref.data(), v.dtype, n, v.hk, d);
  host.positions = {pos.data(), posenc::IndexType::i64, n};
  posenc::apply_reference(v.spec, host);

  pb::Comparison cq = pb::compare_elements(v.dtype, q_got.data(), q_ref.data(), n * v.hq * d);
  const pb::Comparison ck = pb::compare_elements(v.dtype, k_got.data(), k_ref.data(), n * v.hk * d);
  cq.elements += ck.elements;
  cq.mismatches += ck.mismatches;
  cq.max_ulp = std::max(cq.max_ulp, ck.max_ulp);
  return pb::verdict(cq, v.spec.numerics);
}

/// Per-call microseconds of applies replayed from CUDA graphs of `calls` applies each. For small
/// calls one graph's sets would sit in L2 after its first replay, so several graphs over disjoint
/// sets are built and replayed in turn until the replays cover >= 2x L2.
double graph_us_per_call(Gpu& g, const posenc::gpu::GpuEngine& engine, InputSets& sets, int calls) {
  const std::int64_t l2 = std::max<std::int64_t>(g.device.l2_bytes(), 1 << 20);
  const std::int64_t per_graph = static_cast<std::int64_t>(calls) * sets.set_bytes;
  std::int64_t n_graphs = std::max<std::int64_t>(1, (2 * l2 + per_graph - 1) / per_graph);
  n_graphs = std::min<std::int64_t>({n_graphs, 128,
                                     std::max<std::int64_t>(1, static_cast<std::int64_t>(sets.args.size()) / calls)});
  std::vector<cudaGraphExec_t> execs;
  auto destroy = [&] {
    for (cudaGraphExec_t e : execs) cudaGraphExecDestroy(e);
    execs.clear();
  };
  try {
    for (std::int64_t gi = 0; gi < n_graphs; ++gi) {
      POSENC_BENCH_CUDA_CHECK(cudaStreamBeginCapture(g.native, cudaStreamCaptureModeGlobal));
      try {
        for (int c = 0; c < calls; ++c) engine.apply(sets.take(), g.stream.ref());
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

void run_case(Gpu& g, const Variant& v, const posenc::gpu::GpuEngine& engine, pb::Row& row, const Floor& floor,
              std::uint64_t seed) {
  InputSets sets = make_input_sets(g, v, row.t, seed);
  row.verified = verify_case(g, v, engine, sets.args[0]);
  sets.next = 1;

  auto apply = [&](int) { engine.apply(sets.take(), g.stream.ref()); };
  for (int i = 0; i < 10; ++i) apply(i);
  const double estimate_us = std::max(0.5, time_block(g, 10, apply));
  // About 0.2 s of timed launches, at least 30 and at most the event pool.
  const int launches = std::clamp(static_cast<int>(2e5 / estimate_us), 30, g.event_pairs());
  row.median_us = pb::median(time_each(g, launches, apply));
  engine.check(g.stream.ref());

  const int calls = std::clamp(static_cast<int>(2000.0 / estimate_us), 10, 100);
  try {
    row.graph_us = graph_us_per_call(g, engine, sets, calls);
    engine.check(g.stream.ref());
  } catch (const std::exception& e) {
    row.note += std::string(row.note.empty() ? "" : "; ") + "graph: " + e.what();
  }

  row.gbps = pb::gb_per_s(row.bytes, row.median_us);
  row.floor_gbps = floor.best();
  row.floor_kind = floor.kind();
  row.ratio = row.gbps / row.floor_gbps;
  const std::string info = "sets=" + std::to_string(sets.args.size()) + " launches=" + std::to_string(launches) +
                           " graph_calls=" + std::to_string(calls);
  row.note += (row.note.empty() ? "" : "; ") + info;
}

/// After a failed case: true when the device is in a sticky error state (every later call would
/// fail too), so the sweep stops instead of filling the table with copies of one error.
bool device_broken(const Gpu& g) {
  if (cudaStreamSynchronize(g.native) == cudaSuccess) return false;
  cudaGetLastError();
  return cudaDeviceSynchronize() != cudaSuccess;
}

// ---- targets (the issue "performance at the memory-bandwidth limit") -----------------------------

const pb::Row* find_row(const std::vector<pb::Row>& rows, const std::string& variant, std::int64_t tokens) {
  for (const pb::Row& r : rows)
    if (r.variant == variant && r.t == tokens) return &r;
  return nullptr;
}

std::vector<pb::TargetResult> evaluate_targets(const std::vector<pb::Row>& rows) {
  std::vector<pb::TargetResult> out;
  const std::pair<std::int64_t, double> share[] = {{65536, 0.94}, {16384, 0.92}, {4096, 0.85}, {1024, 0.65}};
  for (const std::string variant : {"main_half_split", "main_interleaved"}) {
    for (auto [t, need] : share) {
      const pb::Row* r = find_row(rows, variant, t);
      if (r == nullptr) continue;
      out.push_back({variant + " T=" + std::to_string(t) + ": >= " + pb::percent(need) + " of floor",
                     pb::percent(r->ratio), std::isfinite(r->ratio) && r->ratio >= need});
    }
    for (std::int64_t t : {1, 8, 64}) {
      const pb::Row* r = find_row(rows, variant, t);
      if (r == nullptr) continue;
      out.push_back({variant + " T=" + std::to_string(t) + ": one launch <= 4.0 us",
                     pb::format_number(r->median_us, 2) + " us", std::isfinite(r->median_us) && r->median_us <= 4.0});
      out.push_back({variant + " T=" + std::to_string(t) + ": graph replay <= 1.5 us/call",
                     pb::format_number(r->graph_us, 2) + " us", std::isfinite(r->graph_us) && r->graph_us <= 1.5});
    }
  }
  // Relative targets are judged where the engine is bandwidth-bound (T >= 4096); below that the
  // times are launch-bound and their ratio says little about the kernel.
  auto relative = [&](const std::string& variant, const std::string& reference, double within) {
    for (std::int64_t t : {4096, 16384, 65536}) {
      const pb::Row* r = find_row(rows, variant, t);
      const pb::Row* ref = find_row(rows, reference, t);
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
  std::string first_bad;
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_gpu") continue;
    ++cases;
    if (!pb::verdict_ok(r.verified) || r.verified.empty()) {
      if (bad++ == 0) first_bad = r.variant + " T=" + std::to_string(r.t) + ": " + r.verified;
    }
  }
  if (cases > 0) {
    out.push_back({"every case verified against apply_reference (" + std::to_string(cases) + " cases)",
                   bad == 0 ? std::string("all ok") : std::to_string(bad) + " bad, first " + first_bad, bad == 0});
  }
  return out;
}

// ---- output ----------------------------------------------------------------------------------------

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
  s += "\n" + pb::targets_markdown(targets);
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

struct Options : pb::CommonOptions {
  int device = 0;
};

void usage() {
  std::printf(
      "usage: posenc_bench_gpu [--quick] [--out DIR] [--filter A,B] [--tokens 1,64,4096] [--device N]\n"
      "                        [--budget-s S]\n"
      "  --quick     T in {1, 64, 4096, 65536} and the main, accurate and f32 variants only\n"
      "  --out DIR   where bench_gpu.csv and bench_gpu.md go (default .)\n"
      "  --filter    keep variants whose name contains one of the comma-separated words\n"
      "              (main_half_split main_interleaved accurate heads_32x32 heads_64x8 heads_96x8\n"
      "               heads_128x8 hd64 hd80 hd96 hd256 f32 f16 glm4_9b)\n"
      "  --tokens    token counts to sweep (default 1,8,64,256,1024,4096,16384,65536)\n"
      "  --budget-s  start no new case after this many seconds; what ran is still written\n");
}

Options parse_options(int argc, char** argv) {
  Options o;
  pb::parse_args(argc, argv, o, usage, [&](const std::string& a, auto&& value) {
    if (a != "--device") return false;
    o.device = std::stoi(value());
    return true;
  });
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

  std::printf("%-18s %-10s %-12s %6s %10s %10s %8s %7s  %s\n", "variant", "dtype", "pairing", "T", "us", "graph_us",
              "GB/s", "share", "verified");
  bool broken = false;
  bool verify_failed = false;
  int skipped = 0;
  std::uint64_t seed = 1;
  for (const Variant& v : all_variants()) {
    if (broken) break;
    if (opt.quick && !v.in_quick) continue;
    if (!pb::matches_filter(v.name, opt.filters)) continue;
    std::unique_ptr<posenc::gpu::GpuEngine> engine;
    std::string engine_error;
    try {
      engine = std::make_unique<posenc::gpu::GpuEngine>(v.spec, g.device);
    } catch (const std::exception& e) {
      engine_error = std::string("error: engine construction: ") + e.what();
    }
    for (std::int64_t t : opt.tokens) {
      if (pb::stop_requested != 0 ||
          (opt.budget_s > 0 &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count() > opt.budget_s)) {
        ++skipped;
        continue;
      }
      pb::Row row = base_row(card, v, t);
      if (!engine) {
        row.verified = engine_error;
      } else {
        try {
          run_case(g, v, *engine, row, floor, seed++ * 0x1000193ull);
        } catch (const std::exception& e) {
          row.verified = row.verified.empty() ? std::string("error: ") + e.what() : row.verified;
          row.note += std::string(row.note.empty() ? "" : "; ") + "error: " + e.what();
          broken = device_broken(g);
        }
      }
      verify_failed = verify_failed || !pb::verdict_ok(row.verified);
      std::printf("%-18s %-10s %-12s %6lld %10s %10s %8s %7s  %s\n", row.variant.c_str(), row.dtype.c_str(),
                  row.pairing.c_str(), static_cast<long long>(t), pb::format_number(row.median_us, 2).c_str(),
                  pb::format_number(row.graph_us, 2).c_str(), pb::format_number(row.gbps, 0).c_str(),
                  pb::percent(row.ratio).c_str(), row.verified.c_str());
      std::fflush(stdout);
      rows.push_back(std::move(row));
      if (broken) {
        std::fprintf(stderr, "posenc_bench_gpu: the device is in an error state; stopping the sweep\n");
        break;
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
