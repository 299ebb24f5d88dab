// GpuEngine (gpu.hpp): frequency data, host validation, dispatch to kernel instantiations, launch shape, launch and checks (host code only).
//
// What one apply() does on the host: validate the call (detail::validate_call, i.e. validate_args
// without re-validating the spec, which the constructor did; positions are device data and are not
// read), pack RopeKernelParams, pick the instantiation and the launch shape, launch,
// check the launch. No allocation, no host<->device copy, no synchronization: apply() can be
// captured in a CUDA/HIP graph. Everything that depends only on the spec and the device (frequency
// table upload, kernel occupancy) happens once, in the constructor.
//
// Call-dependent tables (the scheme registry's CallTable: longrope, dynamic): Hugging Face picks
// the table from the call's largest position. Instead of a host round trip, apply() first launches
// a one-block pre-pass on the same stream (select_frequencies_kernel) that reduces max(position)
// and writes the call's table into one of `selection_tables` engine-owned tables; the rotation
// launch reads it.
//   short_long (longrope): both tables are uploaded at construction and the pre-pass only selects.
//             exact: both from compute_frequencies on the host, bit-identical to the CPU engine;
//             torch_cuda: the short (init) table from the host in torch_cpu arithmetic, the long one
//             computed on the device by longrope_long_table_kernel, as transformers does on CUDA.
//   grows (dynamic NTK): when max(position) + 1 > max_position_embeddings the pre-pass computes the
//             grown base and inv_freq with the float32 operations of transformers' update
//             (select_kernel.cuh dynamic_inv_freq): for exact with each pow evaluated in double and
//             rounded once, which can differ from the host's double pow in its last bit, so an
//             entry can differ from the CPU's by 1 float32 ulp in rare cases (tested with that
//             tolerance, tests/test_gpu_engine.cpp DynamicNtk*); for torch_cuda with CUDA's powf and
//             ATen's reciprocal-multiply divisions. Below the threshold the uploaded init table is used.
//   The tables rotate per call, so applies of one engine in flight on different streams at once do
//   not share a table unless more than `selection_tables` are in flight together.
// The launch shape is launch_shape.hpp's pure function; device timing is device_timing.hpp.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "gpu/check.hpp"
#include "gpu/device_scope.hpp"
#include "gpu/device_timing.hpp"
#include "gpu/launch_shape.hpp"
#include "gpu/rope_dispatch.hpp"
#include "gpu/rope_params.hpp"
#include "gpu/select_kernel.cuh"
#include "core/qk_norm.hpp"  // after the GPU headers: vendor.hpp must precede element.hpp
#include "gpu/vendor.hpp"
#include "core/counting.hpp"
#include "core/element.hpp"
#include "core/hf_arithmetic.hpp"
#include "core/kv_detail.hpp"
#include "core/memory.hpp"
#include "core/schemes.hpp"
#include "core/validate.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc::gpu {
namespace {

using detail::NormKernel;
using detail::NormKernelPair;
using detail::KernelPair;
using detail::KernelTensor;
using detail::RopeKernel;
using detail::RopeKernelParams;
using detail::SelectParams;

using detail::DeviceScope;

/// Tables of the call-dependent pre-pass, used in turn.
constexpr int selection_tables = 16;
/// Byte offset of the tables inside the scratch buffer (after the fault words, 256-aligned).
constexpr std::int64_t tables_offset = 256;

constexpr const char* rope_op = "posenc rope";
constexpr const char* select_op = "posenc frequency selection";
constexpr const char* append_op = "posenc rope + kv append";

/// Kernels and occupancy are kept per dtype, indexed by its value.
constexpr std::size_t dtype_count = all_dtypes.size();

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

/// `in_place` comes from validation: the source is absent or exactly the destination view.
KernelTensor kernel_tensor(const TensorView& dst, const ConstTensorView& src, bool in_place,
                           bool partial) {
  KernelTensor t;
  t.dst = dst.data;
  t.dst_token_stride = dst.token_stride;
  t.dst_head_stride = dst.head_stride;
  if (!in_place) {
    t.src = src.data;
    t.src_token_stride = src.token_stride;
    t.src_head_stride = src.head_stride;
    t.copy_pass_through = partial ? 1 : 0;
  } else {
    t.src = dst.data;
    t.src_token_stride = dst.token_stride;
    t.src_head_stride = dst.head_stride;
  }
  return t;
}

/// True when every access of the vectorized instantiation (V elements, 16 bytes) is aligned.
bool vector_path_ok(const KernelTensor& t, std::int64_t v) {
  return aligned16(t.dst) && aligned16(t.src) && t.dst_token_stride % v == 0 &&
         t.dst_head_stride % v == 0 && t.src_token_stride % v == 0 && t.src_head_stride % v == 0;
}

/// The same for an append's other rows: the cache's (head_dim apart: aligned when the bases are and
/// head_dim is a multiple of V), V's, and q_out's (null when absent: aligned).
bool append_rows_aligned(const detail::KernelCache& c, std::int64_t v, std::int64_t head_dim) {
  return head_dim % v == 0 && aligned16(c.k) && aligned16(c.v) && aligned16(c.v_src) && c.v_token_stride % v == 0 &&
         c.v_head_stride % v == 0 && aligned16(c.q_out) && c.q_out_token_stride % v == 0 &&
         c.q_out_head_stride % v == 0;
}

}  // namespace

struct GpuEngine::State {
  RopeSpec spec;
  FrequencyTable table;
  Device device;
  DeviceBuffer tables;   ///< float32: init/short table [half], then the long table (longrope)
  DeviceBuffer scratch;  ///< fault words at 0, selection tables at tables_offset
  KernelPair kernels[2][dtype_count];  ///< [plain rotation, append][dtype]
  int resident_blocks[2][dtype_count][2] = {};  ///< per SM, at target_block_threads; [.][.][vectorized, generic]
  RopeKernelParams base;                      ///< spec-derived fields, filled once
  /// The QK-norm stage (spec.qk_norm enabled): its kernels per dtype and spec-derived fields.
  NormKernelPair norm_kernels[dtype_count];
  /// Resident blocks per SM of the norm kernels: [dtype][apply, append][rows in registers, in shared memory]
  int norm_resident[dtype_count][2][2] = {};
  detail::KernelNorm norm;
  SelectParams select;                        ///< spec-derived fields, filled once
  bool call_dependent = false;
  mutable std::atomic<std::uint32_t> next_table{0};

  mutable posenc::detail::CounterSet counters;
  mutable std::atomic<bool> timing_on{false};
  mutable std::mutex timing_mutex;                   ///< guards creating `timing`
  mutable std::unique_ptr<detail::DeviceTiming> timing;      ///< created by the first enable with timing

  unsigned long long* fault() const { return static_cast<unsigned long long*>(scratch.data()); }
  float* selection_table(std::uint32_t i) const {
    return reinterpret_cast<float*>(static_cast<char*>(scratch.data()) + tables_offset) +
           static_cast<std::int64_t>(i) * base.half;
  }
  detail::DeviceTiming* active_timing() const {
    if (!timing_on.load(std::memory_order_relaxed)) return nullptr;
    std::lock_guard<std::mutex> lock(timing_mutex);
    return timing.get();
  }

  /// Everything apply and append share after validation: the pre-pass (call-dependent tables),
  /// the launch shape, the launch and its checks, and the counters.
  void launch(RopeKernelParams p, bool append, const PositionsView& positions, std::int64_t tokens,
              detail::LaunchRecord record, std::int64_t bytes, StreamRef stream,
              const detail::KernelNorm* call_norm = nullptr) const;

  /// The norm fields of one call: the weights and torch's per-tensor reduce shape and mean factor,
  /// which depend on the rows (tokens x heads) being normalised.
  detail::KernelNorm norm_for(const NormWeights& weights, std::int64_t tokens, std::int64_t q_heads,
                              std::int64_t k_heads) const {
    detail::KernelNorm n = norm;
    n.q_weight = weights.q;
    n.k_weight = weights.k;
    const int width = n.width;
    const posenc::detail::TorchCudaReduceShape q_shape = posenc::detail::torch_cuda_reduce_shape(width, tokens * q_heads);
    const posenc::detail::TorchCudaReduceShape k_shape =
        posenc::detail::torch_cuda_reduce_shape(width, tokens * std::max<std::int64_t>(k_heads, 1));
    n.q_lanes = q_shape.lanes;
    n.k_lanes = k_shape.lanes;
    n.q_factor = posenc::detail::torch_cuda_mean_factor(tokens * q_heads, width);
    n.k_factor = posenc::detail::torch_cuda_mean_factor(tokens * std::max<std::int64_t>(k_heads, 1), width);
    return n;
  }
};

GpuEngine::GpuEngine(const RopeSpec& spec, const Device& device) try : state_(std::make_unique<State>()) {
  spec.validate();
  State& s = *state_;
  s.spec = spec;
  s.device = device;
  // Whose arithmetic the hf numerics reproduce (rope.hpp HfArithmetic). On this engine `engine`
  // means torch on the GPU. torch's CPU cos/sin (and its CPU pow at call time) have no device
  // counterpart, so torch_cpu is refused rather than approximated.
  const HfArithmetic arithmetic = posenc::detail::effective_arithmetic(spec, HfArithmetic::torch_cuda);
  if (arithmetic == HfArithmetic::torch_cpu) {
    throw Error(ErrorKind::unsupported,
                "GPU engine: hf_arithmetic 'torch_cpu' cannot be reproduced on a GPU (torch's CPU cos, sin and "
                "call-time pow come from CPU libraries with no device counterpart); use 'torch_cuda' (transformers "
                "on a GPU), 'exact', or the CPU engine");
  }
  const bool vendor = arithmetic == HfArithmetic::torch_cuda;
  // transformers builds the init-time table on the CPU even for a model that runs on the GPU
  // (from_pretrained initializes non-persistent buffers there and moves them), so torch_cuda takes
  // torch's CPU table; only tables computed during a call (dynamic NTK's grown table, LongRoPE's
  // long table) come from the GPU's arithmetic.
  RopeSpec host_spec = spec;  // the arithmetic of the tables computed on the host
  host_spec.hf_arithmetic = vendor ? HfArithmetic::torch_cpu : HfArithmetic::exact;
  s.table = compute_frequencies(host_spec);
  const std::int64_t rotary = spec.rotary();
  const std::int64_t half = rotary / 2;
  // Per pair: its inverse frequency and position stream (M-RoPE, 2-D); one table of `half`.
  const PairAxes axes = pair_axes(spec, s.table);
  if (static_cast<std::int64_t>(axes.inv_freq.size()) != half ||
      static_cast<std::int64_t>(axes.stream.size()) != half) {
    throw Error(ErrorKind::invalid_argument,
                "GPU engine: pair table has " + std::to_string(axes.inv_freq.size()) +
                    " entries, rotary_dim " + std::to_string(rotary) + " needs " +
                    std::to_string(half));
  }
  const bool multi_stream = spec.position_streams() > 1;

  std::vector<float> host_tables = axes.inv_freq;
  const posenc::detail::SchemeRow& scheme = posenc::detail::scheme_row(spec.scaling);
  s.call_dependent = scheme.call_table != posenc::detail::CallTable::fixed;
  if (s.call_dependent && (multi_stream || spec.pairing == Pairing::half_split_2d)) {
    throw Error(ErrorKind::unsupported,
                std::string("GPU engine: scaling '") + to_string(spec.scaling) +
                    "' (a table chosen per call) with several position streams is not supported");
  }
  const std::int64_t threshold = s.call_dependent ? scheme.threshold(spec.params) : 0;
  // LongRoPE's long table: on the host, or (torch_cuda) by longrope_long_table_kernel below.
  const bool long_on_device = scheme.call_table == posenc::detail::CallTable::short_long && vendor;
  if (scheme.call_table == posenc::detail::CallTable::short_long) {
    if (long_on_device) {
      for (const double f : spec.params.long_factor) host_tables.push_back(static_cast<float>(f));
    } else {
      const FrequencyTable second = compute_frequencies(host_spec, threshold + 1);
      host_tables.insert(host_tables.end(), second.inv_freq.begin(), second.inv_freq.end());
    }
  }

  // The streams of the pairs travel after the float tables, as bytes (only when there are several).
  const std::int64_t table_floats = static_cast<std::int64_t>(host_tables.size());
  if (multi_stream) {
    const std::size_t words = (axes.stream.size() + 3) / 4;
    std::vector<float> packed(words, 0.0f);
    std::memcpy(packed.data(), axes.stream.data(), axes.stream.size());
    host_tables.insert(host_tables.end(), packed.begin(), packed.end());
  }

  DeviceScope scope(device.ordinal());
  s.tables = DeviceBuffer(device, static_cast<std::int64_t>(host_tables.size() * sizeof(float)));
  const std::int64_t scratch_bytes =
      s.call_dependent ? tables_offset + selection_tables * half * std::int64_t{sizeof(float)}
                       : std::int64_t{detail::fault_words * sizeof(unsigned long long)};
  static_assert(detail::fault_words * sizeof(unsigned long long) <= tables_offset);
  s.scratch = DeviceBuffer(device, scratch_bytes);
  {
    Stream setup(device);
    s.tables.upload(host_tables.data(), s.tables.size_bytes(), setup.ref());
    s.scratch.fill_bytes(0xff, setup.ref());  // fault words = fault_clear
    if (long_on_device) {
      // The long factors were uploaded where the long table goes; the kernel overwrites them in
      // place (entry i reads factor i only).
      float* const long_table = static_cast<float*>(s.tables.data()) + half;
      const auto setup_stream = static_cast<cudaStream_t>(setup.ref().native());
      constexpr int threads = 128;
      detail::longrope_long_table_kernel<<<static_cast<unsigned>((half + threads - 1) / threads), threads, 0,
                                           setup_stream>>>(long_table, static_cast<float>(spec.theta),
                                                           1.0f / static_cast<float>(rotary),
                                                           static_cast<int>(half), long_table);
      POSENC_GPU_CHECK(cudaGetLastError());
    }
    setup.synchronize();
  }

  // Spec-derived kernel arguments, packed once.
  RopeKernelParams& b = s.base;
  b.inv_freq = static_cast<const float*>(s.tables.data());
  b.pair_stream = multi_stream
                      ? reinterpret_cast<const std::uint8_t*>(b.inv_freq + table_floats)
                      : nullptr;
  b.fault = s.fault();
  b.position_limit = spec.position_limit;
  // As the CPU reference: the spec's override or the scheme's factor; float32 for the hf modes.
  const double attention_factor = posenc::detail::effective_attention_factor(spec, s.table);
  b.attention_factor = attention_factor;
  b.attention_factor_f32 = static_cast<float>(attention_factor);
  b.vendor_trig = vendor ? 1 : 0;
  b.half = static_cast<std::int32_t>(half);
  b.rotary_dim = static_cast<std::int32_t>(rotary);
  b.rotary_offset = static_cast<std::int32_t>(spec.rotary_offset);

  if (s.call_dependent) {
    SelectParams& sp = s.select;
    sp.half = static_cast<std::int32_t>(half);
    sp.rotary_dim = static_cast<std::int32_t>(rotary);
    sp.init_table = static_cast<const float*>(s.tables.data());
    sp.threshold = threshold;
    if (scheme.call_table == posenc::detail::CallTable::short_long) {
      sp.mode = detail::SelectMode::longrope;
      sp.long_table = sp.init_table + half;
    } else {
      // CallTable::grows: the pre-pass grows dynamic NTK's theta (select_kernel.cuh); another
      // growing scheme would need a mode of its own there.
      sp.mode = detail::SelectMode::dynamic;
      sp.base = static_cast<float>(spec.theta);
      sp.factor = static_cast<float>(spec.params.factor);
      sp.max_positions = static_cast<float>(spec.params.max_position_embeddings);
      sp.factor_minus_one = static_cast<float>(spec.params.factor - 1.0);
      sp.exponent = static_cast<double>(rotary) / static_cast<double>(rotary - 2);
      sp.vendor_arithmetic = vendor ? 1 : 0;
      // ATen's CUDA true division by a scalar: a multiply by the float32 reciprocal, formed on the
      // host in float32 (opmath) from the float32 divisor.
      sp.inv_max_positions = 1.0f / static_cast<float>(spec.params.max_position_embeddings);
      sp.inv_rotary_dim = 1.0f / static_cast<float>(rotary);
      sp.exponent_f32 = static_cast<float>(sp.exponent);
    }
  }

  // Kernels of this spec's pairing and numerics, and their occupancy (also loads them now rather
  // than at the first apply).
  for (const DType dtype : all_dtypes) {
    const auto i = static_cast<std::size_t>(dtype);
    s.kernels[0][i] = detail::dispatch_kernels<false>(dtype, spec.pairing, spec.numerics);
    s.kernels[1][i] = detail::append_kernels(dtype, spec.pairing, spec.numerics);
    for (int a = 0; a < 2; ++a) {
      const RopeKernel ks[2] = {s.kernels[a][i].vectorized, s.kernels[a][i].generic};
      for (int j = 0; j < 2; ++j) {
        int blocks = 0;
        POSENC_GPU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks, ks[j], detail::target_block_threads, detail::max_tile_table_bytes / 2));
        s.resident_blocks[a][i][j] = std::max(1, blocks);
      }
    }
  }
  if (spec.qk_norm.enabled()) {
    const std::int64_t width = spec.qk_norm_width();
    // torch reads rows of >= 128 floats as 4-float vectors from 16-byte aligned rows; a row of
    // width % 4 != 0 would shift its alignment row by row (no model has one).
    if (vendor && width >= 128 && width % 4 != 0) {
      throw Error(ErrorKind::unsupported,
                  "GPU engine: QK norm over " + std::to_string(width) +
                      " elements in torch_cuda arithmetic: widths >= 128 must be multiples of 4 (torch's "
                      "vectorized reduction order is reproduced only for aligned rows); use hf_arithmetic 'exact'");
    }
    // The two paths differ in shared memory (a row per warp, or only the token's cos/sin), hence
    // in resident blocks; the launch sizes its grid to one whole wave of them.
    for (const DType dtype : all_dtypes) {
      const auto i = static_cast<std::size_t>(dtype);
      s.norm_kernels[i] = detail::norm_kernels(dtype, spec.numerics, spec.head_dim);
      for (int a = 0; a < 2; ++a)
        for (int r = 0; r < 2; ++r) {
          int blocks = 0;
          POSENC_GPU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &blocks, a == 0 ? s.norm_kernels[i].apply : s.norm_kernels[i].append, detail::norm_block_threads,
              static_cast<std::size_t>(detail::norm_shared_bytes(half, spec.head_dim, r == 0))));
          s.norm_resident[i][a][r] = std::max(1, blocks);
        }
    }
    s.norm.kind = static_cast<std::int32_t>(spec.qk_norm.kind);
    s.norm.pairing = static_cast<std::int32_t>(spec.pairing);
    s.norm.first = static_cast<std::int32_t>(spec.qk_norm_first());
    s.norm.width = static_cast<std::int32_t>(width);
    s.norm.head_dim = static_cast<std::int32_t>(spec.head_dim);
    s.norm.torch_cuda = vendor ? 1 : 0;
    s.norm.vectorized_sum = width >= 128 ? 1 : 0;
    s.norm.epsilon = static_cast<float>(spec.qk_norm.epsilon);
  }
} catch (const std::bad_alloc&) {  // the host side's small allocations (state, tables); device ones name their size
  posenc::detail::throw_out_of_host_memory("the GpuEngine's host state and tables");
}

GpuEngine::~GpuEngine() = default;
GpuEngine::GpuEngine(GpuEngine&&) noexcept = default;
GpuEngine& GpuEngine::operator=(GpuEngine&&) noexcept = default;

const RopeSpec& GpuEngine::spec() const noexcept { return state_->spec; }
const FrequencyTable& GpuEngine::frequencies() const noexcept { return state_->table; }
const Device& GpuEngine::device() const noexcept { return state_->device; }

void GpuEngine::State::launch(RopeKernelParams p, bool append, const PositionsView& positions,
                              std::int64_t tokens, detail::LaunchRecord record, std::int64_t bytes,
                              StreamRef stream, const detail::KernelNorm* call_norm) const {
  const DType dtype = record.dtype;
  const auto di = static_cast<std::size_t>(dtype);  // validated: one of all_dtypes
  p.tokens = tokens;
  p.by_half = detail::make_divisor(static_cast<std::uint32_t>(p.half));  // < 2^31: the spec's head_dim limit
  // The rotation kernel's vector width and launch shape (the QK-norm kernel has its own, below).
  bool vectorized = false;
  detail::LaunchShape shape;
  if (call_norm == nullptr) {
    const std::int64_t head_dim = spec.head_dim;
    const bool copies = p.q.copy_pass_through != 0 || p.k.copy_pass_through != 0;
    // The vectorized instantiation needs every V-element access 16-byte aligned.
    const std::int64_t v = posenc::detail::vector_bytes / size_of(dtype);
    // half_split_2d: each half's Q = R/4 pairs must split into whole vectors too.
    const std::int64_t lane_pairs = spec.pairing == Pairing::half_split_2d ? p.half / 2 : p.half;
    vectorized = spec.rotary_offset % v == 0 && lane_pairs % v == 0 && (!copies || head_dim % v == 0) &&
                 vector_path_ok(p.q, v) && (p.k.src == nullptr || vector_path_ok(p.k, v));
    if (append) vectorized = vectorized && append_rows_aligned(p.cache, v, head_dim);
    const std::int64_t width = vectorized ? v : 1;
    p.rotary_lanes = static_cast<std::int32_t>(p.half / width);
    const int lanes = static_cast<int>(p.rotary_lanes + (copies ? (head_dim - p.rotary_dim) / width : 0));

    const int rows_in_flight = detail::rows_in_flight_for(vectorized);
    detail::ShapeInput shape_input;
    shape_input.tokens = tokens;
    shape_input.total_heads = p.total_heads;
    shape_input.lanes = lanes;
    shape_input.half = p.half;
    shape_input.sm_count = device.multiprocessor_count();
    shape_input.resident_blocks_per_sm = resident_blocks[append ? 1 : 0][di][vectorized ? 0 : 1];
    shape_input.rows_in_flight = rows_in_flight;
    shape = detail::choose_shape(shape_input);
    p.tile_tokens = shape.tile_tokens;
    p.tiles = shape.tiles;
    // Divisors of the kernel's index arithmetic (each < 2^31: heads by check_head_count, the batch
    // by the block and grid limits).
    p.by_heads = detail::make_divisor(static_cast<std::uint32_t>(p.total_heads));
    p.by_batch = detail::make_divisor(shape.block_y * static_cast<std::uint32_t>(rows_in_flight) * shape.grid_y);
  }
  record.vectorized = vectorized;

  const auto native = static_cast<cudaStream_t>(stream.native());
  DeviceScope scope(device.ordinal());
  detail::DeviceTiming* const timer = active_timing();
  const int timed = timer != nullptr ? timer->begin(native) : -1;

  if (call_dependent && p.cos_sin == nullptr) {  // a caller's cos/sin cache reads no frequency table
    SelectParams sp = select;
    sp.positions = positions.data;
    sp.tokens = tokens;
    sp.positions_i64 = p.positions_i64;
    sp.out = selection_table(next_table.fetch_add(1, std::memory_order_relaxed) % selection_tables);
    p.inv_freq = sp.out;
    detail::LaunchRecord select_record = record;
    select_record.op = select_op;
    detail::record_launch(native, select_record);
    detail::select_frequencies_kernel<<<1, detail::select_block_threads, 0, native>>>(sp);
    POSENC_GPU_CHECK_LAUNCH(select_record);
  }

  detail::record_launch(native, record);
  if (call_norm != nullptr) {
    // The QK-norm kernel: a block per token, grid-striding over tokens with one whole wave of
    // resident blocks (a partial second wave would double the last tokens' time); a warp per row,
    // the row in registers where the shape allows, in shared memory otherwise.
    detail::NormKernelParams np{p, *call_norm};
    const std::int64_t v = posenc::detail::vector_bytes / size_of(dtype);
    detail::NormPathInput path;
    path.torch_cuda = np.norm.torch_cuda != 0;
    path.vectorized_sum = np.norm.vectorized_sum != 0;
    path.q_lanes = np.norm.q_lanes;
    path.k_lanes = np.norm.k_lanes;
    path.head_dim = spec.head_dim;
    path.norm_first = np.norm.first;
    path.norm_width = np.norm.width;
    path.rotary_offset = spec.rotary_offset;
    path.rotary = spec.rotary();
    path.two_halves_or_adjacent = spec.pairing == Pairing::half_split || spec.pairing == Pairing::interleaved;
    path.mla = p.cache.latent_dim > 0;
    path.aligned = vector_path_ok(p.q, v) && (p.k.src == nullptr || vector_path_ok(p.k, v)) &&
                   (!append || append_rows_aligned(p.cache, v, spec.head_dim));
    path.narrow_rows = append || detail::register_row_addresses(p.q, p.k, size_of(dtype), tokens, np.norm.rows);
    np.norm.register_rows = detail::norm_uses_registers(path) ? 1 : 0;
    if (np.norm.register_rows != 0) detail::count_norm_register_launch();
    const auto shared = static_cast<std::size_t>(detail::norm_shared_bytes(p.half, spec.head_dim, np.norm.register_rows != 0));
    const int resident = norm_resident[di][append ? 1 : 0][np.norm.register_rows != 0 ? 0 : 1];
    const detail::NormGrid grid =
        detail::norm_grid(tokens, p.total_heads, std::int64_t{resident} * device.multiprocessor_count(),
                          detail::norm_rows_per_warp(np.norm.register_rows != 0, size_of(dtype), spec.head_dim));
    const NormKernel kernel = append ? norm_kernels[di].append : norm_kernels[di].apply;
    kernel<<<dim3(grid.x, grid.y, 1), detail::norm_block_threads, shared, native>>>(np);
  } else {
    const RopeKernel kernel = vectorized ? kernels[append ? 1 : 0][di].vectorized : kernels[append ? 1 : 0][di].generic;
    kernel<<<dim3(shape.grid_x, shape.grid_y, 1), dim3(shape.block_x, shape.block_y, 1), shape.table_bytes, native>>>(p);
  }
  POSENC_GPU_CHECK_LAUNCH(record);

  if (timed >= 0) timer->end(timed, native);
  if (counters.enabled()) counters.count(1, tokens, bytes);
}

namespace {

/// The launch record of a call (formatted only when an error is reported).
detail::LaunchRecord launch_record(const char* op, const RopeSpec& spec, const RopeKernelParams& p,
                                   std::int64_t tokens, std::int64_t k_heads, DType dtype, IndexType positions,
                                   bool in_place) {
  detail::LaunchRecord record;
  record.op = op;
  record.tokens = tokens;
  record.q_heads = p.q_heads;
  record.k_heads = k_heads;
  record.head_dim = spec.head_dim;
  record.rotary_dim = p.rotary_dim;
  record.rotary_offset = p.rotary_offset;
  record.dtype = dtype;
  record.pairing = spec.pairing;
  record.numerics = spec.numerics;
  record.positions = positions;
  record.in_place = in_place;
  return record;
}

/// Heads of one launch must fit the kernel's 32-bit row arithmetic.
void check_head_count(std::int64_t heads) {
  if (heads > INT_MAX) {
    throw Error(ErrorKind::unsupported, "GPU engine: " + std::to_string(heads) + " heads exceed the kernel's limit of " +
                                            std::to_string(INT_MAX));
  }
}

/// The value a fault word pair holds for the index it names (record_bad_value's biased int32), or
/// nothing for an index >= 2^32-1.
std::optional<std::int32_t> recorded_value(const unsigned long long* pair) {
  const unsigned long long index = pair[0];
  if (index >= 0xffffffffull || (pair[1] >> 32) != index) return std::nullopt;
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(pair[1]) ^ 0x80000000u);
}

/// "(not recorded ...)" or the value a fault word pair holds for the token it names.
std::string fault_value(const unsigned long long* pair) {
  const std::optional<std::int32_t> v = recorded_value(pair);
  if (!v) return "(not recorded for token indices >= 2^32-1)";
  std::string value = std::to_string(*v);
  if (*v == INT32_MAX) value += " or more";
  if (*v == INT32_MIN) value += " or less";
  return value;
}

void set_positions(RopeKernelParams& p, const PositionsView& positions) {
  p.positions = positions.data;
  p.positions_i64 = positions.type == IndexType::i64 ? 1 : 0;
  p.stream_stride = positions.streams > 1 ? positions.stream_stride : 0;
}

/// The caller's cos/sin cache, when the call has one (validated by validate_call).
void set_cos_sin(RopeKernelParams& p, const RopeSpec& spec, const CosSinCacheView& cache) {
  if (!cache.present()) return;
  p.cos_sin = cache.data;
  p.cos_sin_row_stride = cache.row_stride;
  p.cos_sin_limit = posenc::detail::cos_sin_limit(spec, cache);
  p.cos_sin_dtype = static_cast<std::int32_t>(cache.dtype);
}

}  // namespace

void GpuEngine::apply(const RopeArgs& args, StreamRef stream) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::apply on a moved-from engine");
  const State& s = *state_;
  const posenc::detail::CallInfo info = posenc::detail::validate_call(s.spec, args, /*check_positions=*/false);
  const std::int64_t tokens = info.tokens;
  const std::int64_t q_heads = args.q.heads;
  const std::int64_t k_heads = args.k.present() ? args.k.heads : 0;
  check_head_count(q_heads + k_heads);
  const bool partial = s.base.rotary_dim < s.spec.head_dim;

  RopeKernelParams p = s.base;
  p.q = kernel_tensor(args.q, args.q_src, info.q_in_place, partial);
  if (k_heads > 0) p.k = kernel_tensor(args.k, args.k_src, info.k_in_place, partial);
  set_positions(p, args.positions);
  set_cos_sin(p, s.spec, args.cos_sin);
  p.q_heads = static_cast<std::int32_t>(q_heads);
  p.total_heads = static_cast<std::int32_t>(q_heads + k_heads);

  const detail::LaunchRecord record = launch_record(rope_op, s.spec, p, tokens, k_heads, args.q.dtype,
                                                    args.positions.type, info.q_in_place && info.k_in_place);
  const std::int64_t bytes = s.counters.enabled() ? posenc::detail::moved_bytes(args, info, s.spec) : 0;
  if (s.spec.qk_norm.enabled()) {
    const detail::KernelNorm norm = s.norm_for(args.norm, tokens, q_heads, k_heads);
    s.launch(p, /*append=*/false, args.positions, tokens, record, bytes, stream, &norm);
    return;
  }
  s.launch(p, /*append=*/false, args.positions, tokens, record, bytes, stream);
}

void GpuEngine::append(const AppendArgs& args, StreamRef stream) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::append on a moved-from engine");
  const State& s = *state_;
  const posenc::detail::CallInfo info = posenc::detail::validate_append(s.spec, args, /*device_data=*/true);
  const std::int64_t tokens = info.tokens;
  const std::int64_t q_heads = args.q.heads;
  const std::int64_t kv_heads = args.cache.kv_heads;
  // V rows: one per KV head, or (mla) the latent in pieces of head_dim (a multiple, validated).
  const bool mla = args.cache.layout == CacheLayout::mla;
  const std::int64_t v_rows = mla ? args.cache.latent_dim / s.spec.head_dim : kv_heads;
  check_head_count(q_heads + kv_heads + v_rows);
  const bool partial = s.base.rotary_dim < s.spec.head_dim;

  RopeKernelParams p = s.base;
  p.q = kernel_tensor(args.q, args.q_src, info.q_in_place, partial);
  // K is only read: its rows go to the cache (and so do the pass-through dims, when partial).
  p.k.src = args.k.data;
  p.k.src_token_stride = args.k.token_stride;
  p.k.src_head_stride = args.k.head_stride;
  p.k.copy_pass_through = partial ? 1 : 0;
  detail::KernelCache& c = p.cache;
  c.k = args.cache.k;
  c.v = mla ? args.cache.k : args.cache.v;  // mla: one tensor
  c.v_src = args.v.data;
  c.v_token_stride = args.v.token_stride;
  c.v_head_stride = mla ? s.spec.head_dim : args.v.head_stride;  // mla: the latent's pieces
  c.slots = args.slots;
  c.slot_limit = args.cache.slots();
  c.block_len = args.cache.block_len;
  c.kv_heads = static_cast<std::int32_t>(kv_heads);
  c.head_dim = static_cast<std::int32_t>(s.spec.head_dim);
  c.head_major = args.cache.layout == CacheLayout::paged_hnd ? 1 : 0;
  c.latent_dim = mla ? static_cast<std::int32_t>(args.cache.latent_dim) : 0;  // <= 2^24, validated
  c.dtype = static_cast<std::int32_t>(args.cache.dtype);
  c.k_scale = args.cache.k_scale;
  c.v_scale = args.cache.v_scale;
  // q_out (validated: q_src absent, so Q is launched in place and only read; dtype the cache's).
  c.q_out = args.q_out.data;
  c.q_out_token_stride = args.q_out.token_stride;
  c.q_out_head_stride = args.q_out.head_stride;
  c.q_scale = args.q_out.scale;
  c.k_head_scales = args.cache.k_head_scales;
  c.v_head_scales = args.cache.v_head_scales;
  c.q_head_scales = args.q_out.present() ? args.q_out.head_scales : nullptr;
  set_positions(p, args.positions);
  set_cos_sin(p, s.spec, args.cos_sin);
  p.q_heads = static_cast<std::int32_t>(q_heads);
  p.total_heads = static_cast<std::int32_t>(q_heads + kv_heads + v_rows);

  const detail::LaunchRecord record =
      launch_record(append_op, s.spec, p, tokens, kv_heads, args.q.dtype, args.positions.type, info.q_in_place);
  std::int64_t bytes = 0;
  if (s.counters.enabled()) {
    RopeArgs rope;
    rope.q = args.q;
    rope.q_src = args.q_src;
    bytes = posenc::detail::moved_bytes(rope, info, s.spec) + posenc::detail::append_extra_bytes(args);
  }
  if (s.spec.qk_norm.enabled()) {
    const detail::KernelNorm norm = s.norm_for(args.norm, tokens, q_heads, kv_heads);
    s.launch(p, /*append=*/true, args.positions, tokens, record, bytes, stream, &norm);
    return;
  }
  s.launch(p, /*append=*/true, args.positions, tokens, record, bytes, stream);
}

void GpuEngine::enable_counters(bool on, bool device_timing) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::enable_counters on a moved-from engine");
  const State& s = *state_;
  if (on && device_timing) {
    std::lock_guard<std::mutex> lock(s.timing_mutex);
    if (!s.timing) {
      DeviceScope scope(s.device.ordinal());
      s.timing = std::make_unique<detail::DeviceTiming>(s.device.ordinal());
    }
  }
  s.counters.on.store(on, std::memory_order_relaxed);
  s.timing_on.store(on && device_timing, std::memory_order_relaxed);
}

OperationCounters GpuEngine::counters() const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::counters on a moved-from engine");
  const State& s = *state_;
  OperationCounters c = s.counters.read();
  std::lock_guard<std::mutex> lock(s.timing_mutex);
  if (s.timing) {
    detail::DeviceTiming& t = *s.timing;
    DeviceScope scope(s.device.ordinal());
    std::lock_guard<std::mutex> ring(t.mutex);
    for (int i = 0; i < timing_pairs; ++i) (void)t.collect(i);
    c.timed_calls = t.timed_calls;
    c.device_ms = t.device_ms;
  }
  return c;
}

void GpuEngine::reset_counters() const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::reset_counters on a moved-from engine");
  const State& s = *state_;
  s.counters.reset();
  std::lock_guard<std::mutex> lock(s.timing_mutex);
  if (s.timing) {
    detail::DeviceTiming& t = *s.timing;
    std::lock_guard<std::mutex> ring(t.mutex);
    for (auto& state : t.state) {
      if (state == detail::DeviceTiming::PairState::pending) state = detail::DeviceTiming::PairState::free;
    }
    t.timed_calls = 0;
    t.device_ms = 0.0;
  }
}

void GpuEngine::check(StreamRef stream) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "GpuEngine::check on a moved-from engine");
  const State& s = *state_;
  stream.synchronize();  // an asynchronous fault is reported first, naming its launch

  const auto native = static_cast<cudaStream_t>(stream.native());
  DeviceScope scope(s.device.ordinal());
  unsigned long long words[detail::fault_words] = {};
  POSENC_GPU_CHECK(cudaMemcpyAsync(words, s.fault(), sizeof(words), cudaMemcpyDeviceToHost, native));
  POSENC_GPU_CHECK(cudaStreamSynchronize(native));
  const unsigned long long* positions = words + detail::position_fault;
  const unsigned long long* slots = words + detail::slot_fault;
  const unsigned long long* cached = words + detail::cos_sin_fault;
  const unsigned long long* scales = words + detail::scale_fault;
  if (positions[0] == detail::fault_clear && slots[0] == detail::fault_clear && cached[0] == detail::fault_clear &&
      scales[0] == detail::fault_clear) {
    return;
  }
  POSENC_GPU_CHECK(cudaMemsetAsync(s.fault(), 0xff, sizeof(words), native));
  POSENC_GPU_CHECK(cudaStreamSynchronize(native));

  std::string message;
  if (slots[0] != detail::fault_clear) {
    // The slot's limit is the cache's, which check() does not know; the kernel compared against it.
    message = "GPU engine: slot " + fault_value(slots) + " of token " + std::to_string(slots[0]) +
              " is outside [0, cache.slots()) and is not -1 (the first such token since the last check; its K "
              "and V were not written, its Q was rotated)";
  }
  if (positions[0] != detail::fault_clear) {
    if (!message.empty()) message += "; and ";
    message += (message.empty() ? "GPU engine: position " : "position ") + fault_value(positions) + " of token " +
               std::to_string(positions[0]) + " is outside [0, " + std::to_string(s.spec.position_limit) +
               ") (the first such token since the last check; it was rotated by its angle)";
  }
  if (cached[0] != detail::fault_clear) {
    // The limit is the call's: min(cos_sin.rows, spec.position_limit), recorded with the token.
    std::string limit = "the cos/sin cache's rows";
    if (cached[0] < 0xffffffffull && (cached[2] >> 32) == cached[0]) {
      const unsigned long long rows = cached[2] & 0xffffffffull;
      limit = std::to_string(rows) + (rows == 0xffffffffull ? " or more" : "");
    }
    if (!message.empty()) message += "; and ";
    message += (message.empty() ? "GPU engine: position " : "position ") + fault_value(cached) + " of token " +
               std::to_string(cached[0]) + " is outside [0, " + limit +
               "), the rows of the cos/sin cache (or spec.position_limit, if smaller) (the first such token since the "
               "last check; the cache was not read for it and its rows were written unrotated)";
  }
  if (scales[0] != detail::fault_clear) {
    // The index holds which array and the head; the value, the scale's float bits.
    constexpr unsigned long long head_mask = (1ull << detail::scale_fault_head_bits) - 1;
    const auto which = static_cast<detail::ScaleArray>(scales[0] >> detail::scale_fault_head_bits);
    const char* name = which == detail::ScaleArray::q_out ? "q_out.head_scales"
                       : which == detail::ScaleArray::k   ? "cache.k_head_scales"
                                                          : "cache.v_head_scales";
    std::string value = "(not recorded)";
    if (const std::optional<std::int32_t> bits = recorded_value(scales)) {
      float f = 0.0f;
      std::memcpy(&f, &*bits, sizeof f);
      value = std::to_string(f);
    }
    if (!message.empty()) message += "; and ";
    message += std::string(message.empty() ? "GPU engine: " : "") + name + "[" + std::to_string(scales[0] & head_mask) +
               "] = " + value + " must be finite and > 0 (the first such head since the last check; its rows were not "
               "written)";
  }
  // A bad position or slot is out_of_range; a bad scale alone, invalid_argument (as CpuEngine says).
  const bool range = positions[0] != detail::fault_clear || slots[0] != detail::fault_clear ||
                     cached[0] != detail::fault_clear;
  throw Error(range ? ErrorKind::out_of_range : ErrorKind::invalid_argument, message);
}

}  // namespace posenc::gpu
