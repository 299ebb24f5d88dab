// GLM-4 attention on posenc's GPU engine (host code): buffers, cuBLAS GEMMs, the scheduler's per-step uploads, launches and checks.
#include "glm4_attention_gpu_layer.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>

#include "glm4_attention_gpu_kernels.cuh"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc::examples {
namespace {

namespace kernels = gpu_kernels;

[[noreturn]] void fail(ErrorKind kind, const std::string& message) {
  throw Error(kind, "glm4_attention_gpu: " + message);
}

void check_cuda(cudaError_t error, const char* call) {
  if (error != cudaSuccess) {
    fail(ErrorKind::vendor, std::string("CUDA error: ") + cudaGetErrorString(error) + " (" + cudaGetErrorName(error) +
                                ") in `" + call + "`");
  }
}

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail(ErrorKind::vendor, std::string("cuBLAS error: ") + cublasGetStatusString(status) + " (" +
                                cublasGetStatusName(status) + ") in `" + call + "`");
  }
}

// Every cuBLAS call goes through this (device memory and copies use posenc's DeviceBuffer, which
// throws posenc::Error with the vendor string itself); every launch is followed by check_launch
// with the kernel's name, which reports a configuration error (bad grid, no code for this GPU)
// at the launch itself rather than at the next synchronization.
#define POSENC_EXAMPLE_CUBLAS_CHECK(call) check_cublas((call), #call)

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

/// Host float32 values in the layer's dtype (bf16: nearest even, as PyTorch's `.to(bfloat16)`).
std::vector<unsigned char> encode(std::span<const float> values, DType dtype) {
  std::vector<unsigned char> bytes(values.size() * static_cast<std::size_t>(size_of(dtype)));
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    for (std::size_t i = 0; i < values.size(); ++i) {
      const std::uint16_t h = float_to_bf16_bits(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

/// The element at `index` of a host copy of device data, widened to float (exact).
float decode(const std::vector<unsigned char>& bytes, std::size_t index, DType dtype) {
  if (dtype == DType::f32) {
    float f;
    std::memcpy(&f, bytes.data() + 4 * index, 4);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, bytes.data() + 2 * index, 2);
  return bf16_bits_to_float(h);
}

/// The device tracker's slot count is fixed when it is built from a host tracker, so every slot
/// the layer may use (one per cache sequence) exists from the start, at length 0. A slot no
/// entry names is never touched by a step; a sequence that joins later just starts using one.
/// The host-side ids are placeholders: the device knows slots only, the layer maps seq_id -> slot.
/// The layer's rotation: the CPU example's spec with the options' arithmetic.
RopeSpec rope_spec(const GlmAttentionConfig& c, const GlmGpuOptions& o) {
  RopeSpec spec = glm_rope_spec(c);
  spec.hf_arithmetic = o.hf_arithmetic;
  return spec;
}

glm::PositionTracker initial_tracker(const GlmAttentionConfig& c) {
  glm::PositionTracker t(1, c.max_len);  // GLM-4: one position stream; positions past the cache are bugs
  for (std::int64_t i = 0; i < c.batch; ++i) t.add_sequence(i);
  return t;
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

struct GlmAttentionGpuLayer::State {
  GlmAttentionConfig config;
  GlmGpuOptions options;
  gpu::Device device;
  gpu::Stream stream;
  gpu::GpuEngine engine;
  gpu::GpuPositionTracker tracker;
  cublasHandle_t cublas = nullptr;

  // Sizes (elements unless named bytes).
  std::int64_t elem_bytes = 4;
  std::int64_t q_width = 0, kv_width = 0, qkv_width = 0;
  std::int64_t max_tokens = 0;      // the largest step: every sequence's whole context at once
  std::int64_t blocks_per_seq = 0;  // block-table columns: ceil(max_len / page_size)
  std::int64_t page_count = 0;      // batch * blocks_per_seq, so a sequence never waits for a page

  // Device memory, allocated once here; a step allocates nothing on the device.
  gpu::DeviceBuffer w_qkv, b_qkv, w_o;           // weights in the layer dtype
  gpu::DeviceBuffer k_cache, v_cache;            // [pages, page_size, kv_heads, head_dim]
  gpu::DeviceBuffer hidden, qkv, attn, out;      // per-step activations, max_tokens rows
  gpu::DeviceBuffer entry_slots, entry_counts;   // int32 [batch]: the tracker step's entries
  gpu::DeviceBuffer positions;                   // int64 [max_tokens]: what the tracker writes
  gpu::DeviceBuffer slots;                       // int64 [max_tokens]: the append's slot mapping
  gpu::DeviceBuffer token_rows, token_keys;      // int32 [max_tokens]: attention's per-token inputs
  gpu::DeviceBuffer block_table;                 // int32 [batch, blocks_per_seq]

  // The scheduler's host state: which sequence owns which tracker slot, how long each is (the
  // cache index of its next token) and its pages. A real server keeps the same bookkeeping.
  std::vector<std::int64_t> slot_seq;   // slot -> seq_id, -1 when free
  std::vector<std::int64_t> lengths;    // slot -> tokens in the cache
  std::vector<std::int64_t> table;      // [batch, blocks_per_seq] page ids, -1 when unassigned
  std::vector<std::int64_t> free_pages; // shuffled; pages are taken from the back
  std::int64_t last_tokens = 0;

  // Host staging of one step's uploads and downloads; members so they outlive the asynchronous
  // copies (the step synchronizes before returning).
  std::vector<unsigned char> hidden_host, out_host;
  std::vector<std::int32_t> entry_slots_host, entry_counts_host, rows_host, keys_host, table_host;
  std::vector<std::int64_t> slots_host, positions_host;

  State(const GlmAttentionConfig& c, const GlmGpuOptions& o)
      : config(c),
        options(o),
        device(gpu::Device::open(o.device)),
        stream(device),
        engine(rope_spec(c, o), device),
        tracker(initial_tracker(c), device, c.batch * c.max_len) {}

  ~State() {
    if (cublas != nullptr) cublasDestroy(cublas);  // no throw from a destructor; nothing to report
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  gpu::StreamRef ref() const { return stream.ref(); }
  cudaStream_t native() const { return static_cast<cudaStream_t>(stream.ref().native()); }
  cudaDataType_t cuda_type() const { return options.dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF; }

  std::int64_t slot_of(std::int64_t seq_id) const {
    const auto it = seq_id < 0 ? slot_seq.end() : std::find(slot_seq.begin(), slot_seq.end(), seq_id);
    if (it == slot_seq.end()) fail(ErrorKind::invalid_argument, "sequence " + std::to_string(seq_id) + " is not tracked");
    return it - slot_seq.begin();
  }

  /// y[rows, n] = x[rows, kdim] * w[n, kdim]^T + beta * y, row-major (nn.Linear's layout). cuBLAS
  /// is column-major: the row-major y is the column-major y^T = w * x^T, i.e. op(A) = w read
  /// transposed (lda = kdim) and op(B) = x as is (ldb = kdim).
  void linear(const void* x, const void* w, void* y, std::int64_t rows, std::int64_t kdim, std::int64_t n,
              float beta) const {
    const float alpha = 1.0f;
    // float32: the pedantic compute type forbids TF32 (and any reduced-precision shortcut), so the
    // GEMM stays a float32 GEMM and the 1e-5 comparison against transformers holds. bf16: bf16
    // inputs with float32 accumulation, PyTorch's default for bf16 matmuls.
    const cublasComputeType_t compute =
        options.dtype == DType::f32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
    POSENC_EXAMPLE_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                                             static_cast<int>(rows), static_cast<int>(kdim), &alpha, w, cuda_type(),
                                             static_cast<int>(kdim), x, cuda_type(), static_cast<int>(kdim), &beta, y,
                                             cuda_type(), static_cast<int>(n), compute, CUBLAS_GEMM_DEFAULT));
  }

  /// Fills the step's QKV rows with the bias; the QKV GEMM then adds onto them (beta = 1).
  template <typename T>
  void bias_rows(std::int64_t tokens) const {
    const std::int64_t n = tokens * qkv_width;
    constexpr int threads = 256;
    const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(ceil_div(n, threads), 1024));
    kernels::bias_rows_kernel<T><<<blocks, threads, 0, native()>>>(static_cast<T*>(qkv.data()),
                                                                   static_cast<const T*>(b_qkv.data()), tokens, qkv_width);
    check_launch("bias_rows_kernel<<<...>>> launch");
  }

  /// Paged attention of the step's tokens into `attn`: one block per (token, Q head).
  template <typename T>
  void attention(std::int64_t tokens) const {
    const auto& c = config;
    const auto shared = static_cast<std::size_t>((c.head_dim + c.max_len) * static_cast<std::int64_t>(sizeof(float)));
    const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(c.q_heads));
    kernels::paged_attention_kernel<T><<<grid, kernels::attention_threads, shared, native()>>>(
        static_cast<const T*>(qkv.data()), qkv_width, static_cast<const T*>(k_cache.data()),
        static_cast<const T*>(v_cache.data()), static_cast<const std::int32_t*>(block_table.data()),
        static_cast<int>(blocks_per_seq), static_cast<int>(options.page_size),
        static_cast<const std::int32_t*>(token_rows.data()), static_cast<const std::int32_t*>(token_keys.data()),
        static_cast<int>(c.q_heads), static_cast<int>(c.kv_heads), static_cast<int>(c.head_dim),
        static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim))), static_cast<T*>(attn.data()));
    check_launch("paged_attention_kernel<<<...>>> launch");
  }

  void bias_rows(std::int64_t tokens) const {
    if (options.dtype == DType::f32) {
      bias_rows<float>(tokens);
    } else {
      bias_rows<__nv_bfloat16>(tokens);
    }
  }
  void attention(std::int64_t tokens) const {
    if (options.dtype == DType::f32) {
      attention<float>(tokens);
    } else {
      attention<__nv_bfloat16>(tokens);
    }
  }

  /// One cache tensor copied back and gathered through `seq_id`'s pages: [length, kv_width].
  std::vector<float> gather(const gpu::DeviceBuffer& cache, std::int64_t seq_id) const {
    const std::int64_t slot = slot_of(seq_id);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(cache.size_bytes()));
    cache.download(bytes.data(), cache.size_bytes(), ref());
    stream.synchronize();
    const std::int64_t length = lengths[static_cast<std::size_t>(slot)];
    std::vector<float> rows(static_cast<std::size_t>(length * kv_width));
    for (std::int64_t i = 0; i < length; ++i) {
      const std::int64_t page = table[static_cast<std::size_t>(slot * blocks_per_seq + i / options.page_size)];
      const std::int64_t cache_slot = page * options.page_size + i % options.page_size;
      for (std::int64_t e = 0; e < kv_width; ++e) {
        rows[static_cast<std::size_t>(i * kv_width + e)] =
            decode(bytes, static_cast<std::size_t>(cache_slot * kv_width + e), options.dtype);
      }
    }
    return rows;
  }
};

GlmAttentionGpuLayer::GlmAttentionGpuLayer(GlmAttentionConfig config, const GlmAttentionWeights& w,
                                           GlmGpuOptions options) {
  const auto& c = config;
  if (options.dtype != DType::f32 && options.dtype != DType::bf16) {
    fail(ErrorKind::unsupported, std::string("dtype ") + to_string(options.dtype) + " (float32 or bfloat16 only)");
  }
  if (c.kv_heads <= 0 || c.q_heads % c.kv_heads != 0) fail(ErrorKind::invalid_argument, "q_heads must be a multiple of kv_heads");
  if (options.page_size <= 0) fail(ErrorKind::invalid_argument, "page_size must be > 0");
  const auto q = static_cast<std::size_t>(c.q_heads * c.head_dim);
  const auto kv = static_cast<std::size_t>(c.kv_heads * c.head_dim);
  const auto h = static_cast<std::size_t>(c.hidden_size);
  if (w.q_weight.size() != q * h || w.k_weight.size() != kv * h || w.v_weight.size() != kv * h ||
      w.q_bias.size() != q || w.k_bias.size() != kv || w.v_bias.size() != kv || w.o_weight.size() != h * q) {
    fail(ErrorKind::invalid_argument, "weight sizes do not match the config");
  }

  state_ = std::make_unique<State>(config, options);
  State& s = *state_;
  s.elem_bytes = size_of(options.dtype);
  s.q_width = c.q_heads * c.head_dim;
  s.kv_width = c.kv_heads * c.head_dim;
  s.qkv_width = s.q_width + 2 * s.kv_width;
  s.max_tokens = c.batch * c.max_len;
  s.blocks_per_seq = ceil_div(c.max_len, options.page_size);
  s.page_count = c.batch * s.blocks_per_seq;

  s.device.make_current();
  POSENC_EXAMPLE_CUBLAS_CHECK(cublasCreate(&s.cublas));
  POSENC_EXAMPLE_CUBLAS_CHECK(cublasSetStream(s.cublas, s.native()));
  // Belt and braces with the pedantic compute type: no TF32 tensor-op math on this handle in float32.
  POSENC_EXAMPLE_CUBLAS_CHECK(
      cublasSetMathMode(s.cublas, options.dtype == DType::f32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH));

  // Weights: Q, K and V fused into one [q + 2 kv, hidden] matrix (one GEMM for all three, as
  // vLLM's QKVParallelLinear and the CPU layer), in the layer dtype.
  std::vector<float> fused_w;
  std::vector<float> fused_b;
  for (const auto* part : {&w.q_weight, &w.k_weight, &w.v_weight}) fused_w.insert(fused_w.end(), part->begin(), part->end());
  for (const auto* part : {&w.q_bias, &w.k_bias, &w.v_bias}) fused_b.insert(fused_b.end(), part->begin(), part->end());
  const auto upload = [&](gpu::DeviceBuffer& buffer, std::span<const float> values) {
    const std::vector<unsigned char> bytes = encode(values, options.dtype);
    buffer = gpu::DeviceBuffer(s.device, static_cast<std::int64_t>(bytes.size()));
    buffer.upload(bytes.data(), static_cast<std::int64_t>(bytes.size()), s.ref());
    s.stream.synchronize();  // `bytes` dies here
  };
  upload(s.w_qkv, fused_w);
  upload(s.b_qkv, fused_b);
  upload(s.w_o, w.o_weight);

  const auto alloc = [&](std::int64_t bytes) { return gpu::DeviceBuffer(s.device, std::max<std::int64_t>(bytes, 1)); };
  const std::int64_t cache_bytes = s.page_count * options.page_size * s.kv_width * s.elem_bytes;
  s.k_cache = alloc(cache_bytes);
  s.v_cache = alloc(cache_bytes);
  s.k_cache.fill_bytes(0, s.ref());
  s.v_cache.fill_bytes(0, s.ref());
  s.hidden = alloc(s.max_tokens * c.hidden_size * s.elem_bytes);
  s.qkv = alloc(s.max_tokens * s.qkv_width * s.elem_bytes);
  s.attn = alloc(s.max_tokens * s.q_width * s.elem_bytes);
  s.out = alloc(s.max_tokens * c.hidden_size * s.elem_bytes);
  s.entry_slots = alloc(c.batch * 4);
  s.entry_counts = alloc(c.batch * 4);
  s.positions = alloc(s.max_tokens * 8);
  s.slots = alloc(s.max_tokens * 8);
  s.token_rows = alloc(s.max_tokens * 4);
  s.token_keys = alloc(s.max_tokens * 4);
  s.block_table = alloc(c.batch * s.blocks_per_seq * 4);
  s.stream.synchronize();

  s.slot_seq.assign(static_cast<std::size_t>(c.batch), -1);
  s.lengths.assign(static_cast<std::size_t>(c.batch), 0);
  s.table.assign(static_cast<std::size_t>(c.batch * s.blocks_per_seq), -1);
  s.free_pages.resize(static_cast<std::size_t>(s.page_count));
  std::iota(s.free_pages.begin(), s.free_pages.end(), std::int64_t{0});
  std::mt19937 rng(options.page_seed);
  std::shuffle(s.free_pages.begin(), s.free_pages.end(), rng);

  s.engine.enable_counters(true, /*device_timing=*/true);
}

GlmAttentionGpuLayer::~GlmAttentionGpuLayer() = default;
GlmAttentionGpuLayer::GlmAttentionGpuLayer(GlmAttentionGpuLayer&&) noexcept = default;
GlmAttentionGpuLayer& GlmAttentionGpuLayer::operator=(GlmAttentionGpuLayer&&) noexcept = default;

void GlmAttentionGpuLayer::add_sequence(std::int64_t seq_id) {
  State& s = *state_;
  if (seq_id < 0) fail(ErrorKind::invalid_argument, "sequence ids must be >= 0 (-1 marks a free slot)");
  if (contains(seq_id)) fail(ErrorKind::invalid_argument, "sequence " + std::to_string(seq_id) + " is tracked already");
  const auto it = std::find(s.slot_seq.begin(), s.slot_seq.end(), std::int64_t{-1});
  if (it == s.slot_seq.end()) fail(ErrorKind::out_of_range, "no free tracker slot for sequence " + std::to_string(seq_id));
  *it = seq_id;  // its slot starts at length 0 on the device too (no sequence ever used it)
}

bool GlmAttentionGpuLayer::contains(std::int64_t seq_id) const noexcept {
  return seq_id >= 0 && std::find(state_->slot_seq.begin(), state_->slot_seq.end(), seq_id) != state_->slot_seq.end();
}

std::int64_t GlmAttentionGpuLayer::length(std::int64_t seq_id) const {
  return state_->lengths[static_cast<std::size_t>(state_->slot_of(seq_id))];
}

glm::PositionIds GlmAttentionGpuLayer::step(std::span<const glm::StepEntry> entries, std::span<const float> hidden,
                                            std::span<float> out) {
  State& s = *state_;
  const auto& c = s.config;
  const std::int64_t page_size = s.options.page_size;

  // --- Host checks: everything that can be known before launching, so a bad step commits nothing.
  std::vector<std::int64_t> entry_slot(entries.size());
  std::vector<bool> used(static_cast<std::size_t>(c.batch), false);
  std::int64_t tokens = 0;
  std::int64_t pages_needed = 0;
  for (std::size_t e = 0; e < entries.size(); ++e) {
    const auto& entry = entries[e];
    const std::int64_t slot = s.slot_of(entry.seq_id);
    if (used[static_cast<std::size_t>(slot)]) {
      fail(ErrorKind::invalid_argument, "sequence " + std::to_string(entry.seq_id) + " appears twice in one step");
    }
    used[static_cast<std::size_t>(slot)] = true;
    if (entry.new_tokens < 1) fail(ErrorKind::invalid_argument, "new_tokens must be >= 1");
    const std::int64_t length = s.lengths[static_cast<std::size_t>(slot)];
    if (entry.new_tokens > c.max_len - length) {
      fail(ErrorKind::out_of_range, "sequence " + std::to_string(entry.seq_id) + " outgrows max_len");
    }
    entry_slot[e] = slot;
    tokens += entry.new_tokens;
    pages_needed += ceil_div(length + entry.new_tokens, page_size) - ceil_div(length, page_size);
  }
  if (static_cast<std::int64_t>(hidden.size()) != tokens * c.hidden_size || out.size() != hidden.size()) {
    fail(ErrorKind::invalid_argument, "hidden/out must hold " + std::to_string(tokens) + " rows of " + std::to_string(c.hidden_size));
  }
  if (pages_needed > static_cast<std::int64_t>(s.free_pages.size())) fail(ErrorKind::out_of_range, "the cache has no free page");
  if (tokens == 0) return glm::PositionIds(1, 0);

  // --- The scheduler's part, on the host: pages for the tokens that cross into new ones, the
  // slot mapping (vLLM's slot_mapping, from the block table), the tracker entries and the
  // attention kernel's per-token (block-table row, key count).
  std::vector<std::int64_t> token_seq;
  std::vector<std::int64_t> token_pos;
  token_seq.reserve(static_cast<std::size_t>(tokens));
  token_pos.reserve(static_cast<std::size_t>(tokens));
  s.entry_slots_host.clear();
  s.entry_counts_host.clear();
  s.rows_host.clear();
  s.keys_host.clear();
  for (std::size_t e = 0; e < entries.size(); ++e) {
    const std::int64_t slot = entry_slot[e];
    const std::int64_t length = s.lengths[static_cast<std::size_t>(slot)];
    for (std::int64_t p = ceil_div(length, page_size); p < ceil_div(length + entries[e].new_tokens, page_size); ++p) {
      s.table[static_cast<std::size_t>(slot * s.blocks_per_seq + p)] = s.free_pages.back();
      s.free_pages.pop_back();
    }
    for (std::int64_t j = 0; j < entries[e].new_tokens; ++j) {
      // The cache index (tokens before it in the sequence) addresses the cache; the position comes
      // from the tracker. For GLM-4 they are equal, but a pinned or offset scheme would differ.
      token_seq.push_back(slot);  // block-table row = tracker slot
      token_pos.push_back(length + j);
      s.rows_host.push_back(static_cast<std::int32_t>(slot));
      s.keys_host.push_back(static_cast<std::int32_t>(length + j + 1));  // causal: itself and every earlier token
    }
    s.entry_slots_host.push_back(static_cast<std::int32_t>(slot));
    s.entry_counts_host.push_back(static_cast<std::int32_t>(entries[e].new_tokens));
  }
  s.slots_host = slots_from_block_table(s.table, s.blocks_per_seq, token_seq, token_pos, page_size, s.page_count);
  s.table_host.assign(s.table.begin(), s.table.end());  // -1 for unassigned pages; never read (keys stop before)
  s.hidden_host = encode(hidden, s.options.dtype);

  const auto ref = s.ref();
  const auto n_entries = static_cast<std::int64_t>(entries.size());
  s.hidden.upload(s.hidden_host.data(), static_cast<std::int64_t>(s.hidden_host.size()), ref);
  s.entry_slots.upload(s.entry_slots_host.data(), n_entries * 4, ref);
  s.entry_counts.upload(s.entry_counts_host.data(), n_entries * 4, ref);
  s.slots.upload(s.slots_host.data(), tokens * 8, ref);
  s.token_rows.upload(s.rows_host.data(), tokens * 4, ref);
  s.token_keys.upload(s.keys_host.data(), tokens * 4, ref);
  s.block_table.upload(s.table_host.data(), static_cast<std::int64_t>(s.table_host.size()) * 4, ref);

  // --- Device: positions, QKV, RoPE + cache append, attention, o_proj, all on one stream.
  auto* positions = static_cast<std::int64_t*>(s.positions.data());
  s.tracker.step(static_cast<const std::int32_t*>(s.entry_slots.data()),
                 static_cast<const std::int32_t*>(s.entry_counts.data()), n_entries, tokens, positions, ref);

  s.bias_rows(tokens);
  s.linear(s.hidden.data(), s.w_qkv.data(), s.qkv.data(), tokens, c.hidden_size, s.qkv_width, 1.0f);

  // RoPE on Q (in place) and K, with K and V written to the paged cache, in one launch. Q, K and
  // V are strided views into the fused QKV buffer: no copies between the GEMM and the append.
  const DType dt = s.options.dtype;
  auto* qkv = static_cast<unsigned char*>(s.qkv.data());
  AppendArgs args;
  args.q = TensorView{qkv, dt, tokens, c.q_heads, c.head_dim, s.qkv_width, c.head_dim};
  args.k = ConstTensorView(qkv + s.q_width * s.elem_bytes, dt, tokens, c.kv_heads, c.head_dim, s.qkv_width, c.head_dim);
  args.v = ConstTensorView(qkv + (s.q_width + s.kv_width) * s.elem_bytes, dt, tokens, c.kv_heads, c.head_dim,
                           s.qkv_width, c.head_dim);
  args.positions = s.tracker.positions(positions, tokens);  // the tracker's output, never seen by the host
  args.slots = static_cast<const std::int64_t*>(s.slots.data());
  args.cache = KvCacheView{s.k_cache.data(), s.v_cache.data(),
                           cache_dtype_of(dt),
                           CacheLayout::paged_nhd, c.kv_heads, c.head_dim, s.page_count, page_size};
  s.engine.append(args, ref);

  s.attention(tokens);
  s.linear(s.attn.data(), s.w_o.data(), s.out.data(), tokens, s.q_width, c.hidden_size, 0.0f);  // o_proj, no bias

  s.out_host.resize(static_cast<std::size_t>(tokens * c.hidden_size * s.elem_bytes));
  s.positions_host.resize(static_cast<std::size_t>(tokens));
  s.out.download(s.out_host.data(), static_cast<std::int64_t>(s.out_host.size()), ref);
  s.positions.download(s.positions_host.data(), tokens * 8, ref);

  // Once per step: both synchronize the stream and throw a recorded device fault (a bad tracker
  // entry first: it would be the cause of a bad position in the append).
  s.tracker.check(ref);
  s.engine.check(ref);

  for (std::size_t e = 0; e < entries.size(); ++e) s.lengths[static_cast<std::size_t>(entry_slot[e])] += entries[e].new_tokens;
  s.last_tokens = tokens;
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = decode(s.out_host, i, dt);
  return glm::PositionIds(1, tokens, s.positions_host);
}

std::vector<std::int64_t> GlmAttentionGpuLayer::pages(std::int64_t seq_id) const {
  const State& s = *state_;
  const std::int64_t slot = s.slot_of(seq_id);
  std::vector<std::int64_t> row;
  for (std::int64_t p = 0; p < s.blocks_per_seq; ++p) {
    const std::int64_t page = s.table[static_cast<std::size_t>(slot * s.blocks_per_seq + p)];
    if (page >= 0) row.push_back(page);
  }
  return row;
}

std::int64_t GlmAttentionGpuLayer::page_count() const noexcept { return state_->page_count; }

std::vector<float> GlmAttentionGpuLayer::k_cache(std::int64_t seq_id) const { return state_->gather(state_->k_cache, seq_id); }
std::vector<float> GlmAttentionGpuLayer::v_cache(std::int64_t seq_id) const { return state_->gather(state_->v_cache, seq_id); }

std::vector<float> GlmAttentionGpuLayer::last_qkv() const {
  const State& s = *state_;
  const std::int64_t count = s.last_tokens * s.qkv_width;
  if (count == 0) return {};
  std::vector<unsigned char> bytes(static_cast<std::size_t>(count * s.elem_bytes));
  s.qkv.download(bytes.data(), static_cast<std::int64_t>(bytes.size()), s.ref());
  s.stream.synchronize();
  std::vector<float> values(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = decode(bytes, i, s.options.dtype);
  return values;
}

OperationCounters GlmAttentionGpuLayer::counters() const { return state_->engine.counters(); }
const GlmAttentionConfig& GlmAttentionGpuLayer::config() const noexcept { return state_->config; }
const GlmGpuOptions& GlmAttentionGpuLayer::options() const noexcept { return state_->options; }
const gpu::Device& GlmAttentionGpuLayer::device() const noexcept { return state_->device; }

}  // namespace posenc::examples
