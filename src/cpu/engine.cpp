// CpuEngine: the threaded, vectorized CPU engine (persistent pool, kernels specialised per dtype x pairing x numerics and built per ISA), bit-identical to apply_reference.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/counting.hpp"
#include "core/dispatch.hpp"
#include "core/hf_arithmetic.hpp"
#include "core/kv_detail.hpp"
#include "core/memory.hpp"
#include "core/schemes.hpp"
#include "core/rope_math.hpp"
#include "core/qk_norm.hpp"
#include "core/validate.hpp"
#include "cpu/kernel_call.hpp"
#include "cpu/thread_pool.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>  // the F16C conversions of the AVX2 / AVX-512 kernels (kernels.hpp)
#endif

// The kernels are compiled three times: for the baseline ISA the library is built for, for
// AVX2+FMA and for AVX-512 (BW/DQ/VL, 512-bit vectors), and the bfloat16 hf_compatible ones a
// fourth time for AVX-512 with AVX512-BF16; the widest the CPU has is picked at construction. On
// baseline x86-64, std::fma (the `accurate` rotation) is a libm call per element and conversions
// run 4 wide; the bf16 rounding emulation of hf_compatible is compute-bound, so each doubling of
// the vector width nearly doubles throughput. Every operation is exactly rounded IEEE arithmetic
// in all builds (-ffp-contract=off, no fast-math), so all give apply_reference's bits. Macros name
// the namespace, the target (none: the library's baseline) and the build's conversion
// instructions: they are what differs between inclusions (kernels.hpp undefines them at its end).
#define POSENC_CPU_ISA baseline
#define POSENC_CPU_F16C 0
#define POSENC_CPU_BF16 0
#include "cpu/kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define POSENC_CPU_X86_KERNELS 1
#define POSENC_CPU_ISA avx2
#define POSENC_CPU_TARGET "avx2,fma,f16c"
#define POSENC_CPU_F16C 8
#define POSENC_CPU_BF16 0
#include "cpu/kernels.hpp"

#define POSENC_CPU_ISA avx512
#define POSENC_CPU_TARGET "avx512f,avx512bw,avx512dq,avx512vl,fma,f16c,prefer-vector-width=512"
#define POSENC_CPU_F16C 16
#define POSENC_CPU_BF16 0
#include "cpu/kernels.hpp"

// AVX-512 plus AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids): only the bfloat16 kernels of the
// half-split and interleaved pairings, whose roundings use vcvtne2ps2bf16 (and hf_compatible's sums
// vdpbf16ps); every other combination comes from the AVX-512 build.
#define POSENC_CPU_ISA avx512_bf16
#define POSENC_CPU_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,f16c,prefer-vector-width=512"
#define POSENC_CPU_F16C 16
#define POSENC_CPU_BF16 1
#include "cpu/kernels.hpp"
#else
#define POSENC_CPU_X86_KERNELS 0
#endif

namespace posenc {
namespace {

using cpu_detail::KernelCall;
using cpu_detail::KernelFn;
using cpu_detail::KernelTensor;
using cpu_detail::max_half;

/// Calls moving fewer bytes than this run on the calling thread: waking a worker costs tens of
/// microseconds, about what 256 KiB of rotation costs on one core.
constexpr double parallel_min_bytes = 256.0 * 1024;
/// A chunk handed to one thread moves at least this much, so the atomic hand-out stays negligible.
constexpr double chunk_min_bytes = 64.0 * 1024;
/// Chunks per thread: enough to balance uneven cores, few enough to keep each stream long.
constexpr std::int64_t chunks_per_thread = 4;

/// The kernel builds, widest last.
enum class Isa { baseline, avx2, avx512, avx512_bf16 };

/// The widest build the CPU supports, unless the environment variable POSENC_CPU_ISA names a
/// narrower one ("baseline", "avx2" or "avx512"; tests run every build against the reference).
Isa select_isa() noexcept {
#if POSENC_CPU_X86_KERNELS
  __builtin_cpu_init();
  Isa best = Isa::baseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = Isa::avx2;
  }
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    best = Isa::avx512;
  }
  if (best == Isa::avx512 && __builtin_cpu_supports("avx512bf16")) best = Isa::avx512_bf16;
  const char* forced = std::getenv("POSENC_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return Isa::baseline;
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0 && best >= Isa::avx512) return Isa::avx2;
  if (forced != nullptr && std::strcmp(forced, "avx512") == 0 && best == Isa::avx512_bf16) return Isa::avx512;
  return best;
#else
  return Isa::baseline;
#endif
}

constexpr std::string_view isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::baseline: return "baseline";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512_bf16: return "avx512_bf16";
  }
  return "baseline";
}

/// The kernel of (d, p, n) in build `isa`, or in the AVX-512 build where the AVX512-BF16 one has
/// none; `isa` becomes the build that serves it.
KernelFn select_kernel(Isa& isa, DType d, Pairing p, Numerics n) {
#if POSENC_CPU_X86_KERNELS
  if (isa == Isa::avx512_bf16) {
    if (const KernelFn k = cpu_detail::avx512_bf16::select_kernel(d, p, n)) return k;
    isa = Isa::avx512;
  }
  if (isa == Isa::avx512) return cpu_detail::avx512::select_kernel(d, p, n);
  if (isa == Isa::avx2) return cpu_detail::avx2::select_kernel(d, p, n);
#endif
  isa = Isa::baseline;
  return cpu_detail::baseline::select_kernel(d, p, n);
}

/// The table's frequencies spread over the window's pairs (pair_axes), checked to cover all `half`.
PairAxes checked_axes(const RopeSpec& spec, const FrequencyTable& table, std::int64_t half, const char* which) {
  PairAxes axes = pair_axes(spec, table);
  if (static_cast<std::int64_t>(axes.inv_freq.size()) != half || static_cast<std::int64_t>(axes.stream.size()) != half) {
    throw Error(ErrorKind::invalid_argument, std::string(which) + " pair table has " +
                                                 std::to_string(axes.inv_freq.size()) +
                                                 " entries, expected rotary_dim / 2 = " + std::to_string(half));
  }
  return axes;
}

KernelTensor kernel_tensor(const TensorView& dst, const ConstTensorView& src, bool in_place) {
  const ConstTensorView from = in_place ? ConstTensorView(dst) : src;
  KernelTensor t;
  t.dst = dst.data;
  t.src = from.data;
  t.heads = dst.heads;
  t.dst_token_stride = dst.token_stride;
  t.dst_head_stride = dst.head_stride;
  t.src_token_stride = from.token_stride;
  t.src_head_stride = from.head_stride;
  t.copy_pass = !in_place;
  return t;
}

}  // namespace

/// Most bytes of cos/sin rows an engine caches (65536 positions for 64 pairs).
constexpr std::int64_t row_cache_bytes = std::int64_t{32} << 20;

struct CpuEngine::State {
  RopeSpec spec;
  FrequencyTable table;  ///< compute_frequencies(spec): the init-time table
  PairAxes axes;         ///< pair_axes(spec, table): per pair inv_freq and position stream
  double attention_factor = 1.0;
  std::int64_t half = 0;
  /// The arithmetic of the tables and hf cos/sin: the spec's, `engine` meaning torch_cpu.
  HfArithmetic arithmetic = HfArithmetic::exact;
  std::array<KernelFn, all_dtypes.size()> kernels{};  ///< by DType, for the spec's pairing and numerics
  std::array<Isa, all_dtypes.size()> kernel_builds{};  ///< the build each of `kernels` comes from

  // Call-dependent schemes (schemes.hpp CallTable; dynamic, longrope): the table depends on
  // seq_len = the call's largest position + 1. They keep one table up to the scheme's threshold,
  // computed here once. Above it, a short/long scheme has a second fixed table and a growing one a
  // table per seq_len: the last one is cached, so the layers of one step compute it once.
  // threshold < 0: no threshold known, every seq_len goes through the cache.
  detail::CallTable table_kind = detail::CallTable::fixed;
  std::int64_t threshold = -1;
  FrequencyTable below;  ///< seq_len <= threshold
  FrequencyTable above;  ///< longrope, seq_len > threshold
  PairAxes below_axes;   ///< pair_axes of `below` / `above`: what the kernels read
  PairAxes above_axes;
  mutable std::mutex cache_mutex;
  mutable std::int64_t cached_seq_len = -1;
  mutable std::array<float, max_half> cached_inv_freq{};
  mutable double cached_attention_factor = 1.0;

  /// cos/sin rows by position for fixed-table schemes (row_cache.hpp); null for dynamic/longrope.
  std::unique_ptr<cpu_detail::RowCache> rows;

  /// Operation counters (counters.hpp); off, they cost one relaxed load per call.
  mutable detail::CounterSet counters;

  mutable cpu_detail::ThreadPool pool;  // running work does not change the engine's state

  State(RopeSpec s, int threads) : spec(std::move(s)), pool(threads) {}

  /// Fills `out` with the per-pair inv_freq of a dynamic/longrope call; returns the attention factor.
  double call_table(std::int64_t seq_len, std::array<float, max_half>& out) const {
    const FrequencyTable* fixed = nullptr;
    const PairAxes* fixed_axes = nullptr;
    if (threshold > 0 && seq_len <= threshold) {
      fixed = &below;
      fixed_axes = &below_axes;
    }
    if (threshold > 0 && seq_len > threshold && table_kind == detail::CallTable::short_long) {
      fixed = &above;
      fixed_axes = &above_axes;
    }
    if (fixed != nullptr) {
      std::copy(fixed_axes->inv_freq.begin(), fixed_axes->inv_freq.end(), out.begin());
      return detail::effective_attention_factor(spec, *fixed);
    }
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      if (cached_seq_len == seq_len) {
        std::copy_n(cached_inv_freq.begin(), half, out.begin());
        return cached_attention_factor;
      }
    }
    // A new seq_len beyond the threshold: the one place a call allocates (compute_frequencies
    // returns a vector), once per distinct seq_len rather than once per layer.
    const auto computed = detail::allocating("the per-call frequency table", half * std::int64_t{2 * sizeof(float)}, [&] {
      FrequencyTable call_table = compute_frequencies(spec, seq_len);
      PairAxes call_axes = checked_axes(spec, call_table, half, "per-call");
      return std::pair(std::move(call_table), std::move(call_axes));
    });
    const FrequencyTable& fresh = computed.first;
    const PairAxes& fresh_axes = computed.second;
    const double factor = detail::effective_attention_factor(spec, fresh);
    std::copy(fresh_axes.inv_freq.begin(), fresh_axes.inv_freq.end(), out.begin());
    std::lock_guard<std::mutex> lock(cache_mutex);
    std::copy(fresh_axes.inv_freq.begin(), fresh_axes.inv_freq.end(), cached_inv_freq.begin());
    cached_attention_factor = factor;
    cached_seq_len = seq_len;
    return factor;
  }
};

// A function-try-block: a std::bad_alloc from any of the construction's small allocations (state,
// frequency tables, worker threads' bookkeeping) leaves nothing behind and becomes Error(out_of_memory).
CpuEngine::CpuEngine(RopeSpec spec, CpuOptions options) try {
  spec.validate();
  if (spec.head_dim > max_head_dim || spec.rotary() > spec.head_dim) {
    throw Error(ErrorKind::invalid_argument, "head_dim " + std::to_string(spec.head_dim) + " / rotary_dim " +
                                                 std::to_string(spec.rotary()) + " do not fit max_head_dim " +
                                                 std::to_string(max_head_dim));
  }
  int threads = options.threads;
  if (threads < 0) {
    throw Error(ErrorKind::invalid_argument, "CpuOptions.threads " + std::to_string(threads) + " must be >= 0");
  }
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // The arithmetic this engine reproduces: torch on this CPU, or exact; CUDA's cannot run here.
  const HfArithmetic arithmetic = detail::effective_arithmetic(spec, HfArithmetic::torch_cpu);
  detail::require_host_arithmetic(arithmetic, "CpuEngine");
  state_ = std::make_unique<State>(std::move(spec), threads);
  State& s = *state_;
  s.arithmetic = arithmetic;
  s.half = s.spec.rotary() / 2;
  s.table = compute_frequencies(s.spec);
  s.axes = checked_axes(s.spec, s.table, s.half, "init");
  s.attention_factor = detail::effective_attention_factor(s.spec, s.table);

  const detail::SchemeRow& scheme = detail::scheme_row(s.spec.scaling);
  s.table_kind = scheme.call_table;
  if (scheme.threshold != nullptr) s.threshold = scheme.threshold(s.spec.params);  // > 0: validated
  if (s.table_kind != detail::CallTable::fixed && s.threshold > 0) {
    s.below = compute_frequencies(s.spec, s.threshold);
    s.below_axes = checked_axes(s.spec, s.below, s.half, "short-context");
    if (s.table_kind == detail::CallTable::short_long) {
      s.above = compute_frequencies(s.spec, s.threshold + 1);
      s.above_axes = checked_axes(s.spec, s.above, s.half, "long-context");
    }
  }

  if (s.table_kind == detail::CallTable::fixed && s.half > 0) {
    // Up to row_cache_bytes of rows (address space only until a position is first used).
    const std::int64_t by_size = std::max<std::int64_t>(1, row_cache_bytes / (s.half * 2 * std::int64_t{sizeof(float)}));
    const std::int64_t positions = std::min(s.spec.position_limit, by_size);
    s.rows = detail::allocating("the CpuEngine's cos/sin row cache", cpu_detail::RowCache::bytes(positions, s.half),
                                [&] { return std::make_unique<cpu_detail::RowCache>(positions, s.half); });
  }

  const Isa widest = select_isa();
  for (const DType d : all_dtypes) {
    Isa& isa = s.kernel_builds[static_cast<std::size_t>(d)] = widest;
    s.kernels[static_cast<std::size_t>(d)] = select_kernel(isa, d, s.spec.pairing, s.spec.numerics);
  }
} catch (const std::bad_alloc&) {
  detail::throw_out_of_host_memory("the CpuEngine's state and frequency tables");
}

CpuEngine::~CpuEngine() = default;
CpuEngine::CpuEngine(CpuEngine&&) noexcept = default;
CpuEngine& CpuEngine::operator=(CpuEngine&&) noexcept = default;

void CpuEngine::apply(const RopeArgs& args) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "CpuEngine::apply on a moved-from engine");
  const State& s = *state_;
  // One validation pass; it also yields the largest position that dynamic/longrope need.
  const detail::CallInfo info = detail::validate_call(s.spec, args, /*check_positions=*/true);

  KernelCall call;
  std::array<float, max_half> call_inv_freq;  // the per-call table (dynamic/longrope), on the stack
  call.inv_freq = s.axes.inv_freq.data();
  call.rows = s.rows.get();
  // Every pair's stream is the same for all tables (it depends on the spec only).
  if (s.spec.position_streams() > 1) call.pair_stream = s.axes.stream.data();
  double factor = s.attention_factor;
  call.cos_sin = args.cos_sin;  // present: the rows come from the caller's cache (no table is read)
  if (!args.cos_sin.present() && detail::table_depends_on_positions(s.spec.scaling)) {
    factor = s.call_table(info.max_position + 1, call_inv_freq);
    call.inv_freq = call_inv_freq.data();
  }
  call.q = kernel_tensor(args.q, args.q_src, info.q_in_place);
  call.has_k = args.k.present();
  if (call.has_k) call.k = kernel_tensor(args.k, args.k_src, info.k_in_place);
  call.positions = args.positions;
  call.half = s.half;
  call.offset = s.spec.rotary_offset;
  call.head_dim = s.spec.head_dim;
  call.attention_factor_f32 = static_cast<float>(factor);
  call.attention_factor = factor;
  call.torch_cpu_trig = s.arithmetic == HfArithmetic::torch_cpu;
  if (s.spec.qk_norm.enabled()) {
    call.norm = s.spec.qk_norm;
    call.norm_arithmetic = s.arithmetic == HfArithmetic::torch_cpu ? HfArithmetic::torch_cpu : HfArithmetic::exact;
    call.norm_first = s.spec.qk_norm_first();
    call.norm_width = s.spec.qk_norm_width();
    call.q.norm_weight = args.norm.q;
    call.k.norm_weight = args.norm.k;
  }

  const KernelFn kernel = s.kernels[static_cast<std::size_t>(args.q.dtype)];
  const std::int64_t tokens = info.tokens;
  if (s.counters.enabled()) s.counters.count(1, tokens, detail::moved_bytes(args, info, s.spec));
  // Bytes read and written per token (an estimate for scheduling, so double cannot overflow).
  const double token_bytes = 2.0 * static_cast<double>(size_of(args.q.dtype)) * static_cast<double>(s.spec.head_dim) *
                             static_cast<double>(args.q.heads + (call.has_k ? args.k.heads : 0));
  const int threads = s.pool.threads();
  if (threads == 1 || tokens == 1 || token_bytes * static_cast<double>(tokens) < parallel_min_bytes) {
    kernel(&call, 0, tokens);
    return;
  }
  const std::int64_t by_balance = (tokens + threads * chunks_per_thread - 1) / (threads * chunks_per_thread);
  const auto by_size = static_cast<std::int64_t>(std::ceil(chunk_min_bytes / token_bytes));
  const std::int64_t chunk = std::max<std::int64_t>({by_balance, by_size, 1});
  // Another thread is using the pool (apply is const and may run concurrently): work alone.
  if (!s.pool.try_run(tokens, chunk, kernel, &call)) kernel(&call, 0, tokens);
}

void CpuEngine::append(const AppendArgs& args) const {
  if (!state_) throw Error(ErrorKind::invalid_argument, "CpuEngine::append on a moved-from engine");
  const State& s = *state_;
  detail::validate_append(s.spec, args);  // everything, before any write

  // K goes through apply's kernels into a dense scratch tensor (the caller's K is not written), in
  // the same call as Q: cos/sin are computed once per token for both, and the cache receives
  // exactly apply's K bits. The scratch belongs to the calling thread and only grows, so steady
  // decode and prefill steps allocate nothing.
  // With q_out, Q takes the same route (the caller's Q is then only read) and the scatter casts it.
  const ConstTensorView& k = args.k;
  const TensorView& q = args.q;
  const std::int64_t k_words = detail::ScatterCall::scratch_words(k);
  const std::int64_t q_words = args.q_out.present() ? detail::ScatterCall::scratch_words(q) : 0;
  thread_local std::vector<std::uint32_t> scratch;
  const auto words = static_cast<std::size_t>(k_words + q_words);
  if (scratch.size() < words) {
    detail::allocating("CpuEngine::append's K (and Q) scratch", static_cast<std::int64_t>(words * sizeof(std::uint32_t)),
                       [&] { scratch.resize(words); });
  }
  const TensorView rotated_k = TensorView::contiguous(scratch.data(), k.dtype, k.tokens, k.heads, k.head_dim);
  const TensorView rotated_q =
      args.q_out.present() ? TensorView::contiguous(scratch.data() + k_words, q.dtype, q.tokens, q.heads, q.head_dim)
                           : TensorView{};
  apply(detail::append_rotation(args, rotated_k, rotated_q));  // validates again (cheap next to the rotation); it cannot fail where validate_append passed

  const detail::ScatterCall call = detail::scatter_call(args, rotated_k, rotated_q);
  const std::int64_t tokens = args.positions.count;
  // Bytes read and written per token, as apply estimates them.
  const double token_bytes = static_cast<double>(k.heads * k.head_dim + args.v.heads * args.v.head_dim) *
                             static_cast<double>(size_of(k.dtype) + size_of(args.cache.dtype));
  if (s.counters.enabled()) {
    // The inner apply counted the call, Q, and K's rotation into the scratch (2 x K, whole heads).
    // The counters report the operation's traffic, as the GPU engine does: K and V read once and
    // the cache rows written once, so the scratch pass is taken back out.
    const std::int64_t scratch_bytes = 2 * tokens * k.heads * k.head_dim * size_of(k.dtype);
    s.counters.count(0, 0, detail::append_extra_bytes(args) - scratch_bytes);
  }
  const int threads = s.pool.threads();
  if (threads == 1 || tokens == 1 || token_bytes * static_cast<double>(tokens) < parallel_min_bytes) {
    detail::scatter_tokens(&call, 0, tokens);
    return;
  }
  const std::int64_t by_balance = (tokens + threads * chunks_per_thread - 1) / (threads * chunks_per_thread);
  const auto by_size = static_cast<std::int64_t>(std::ceil(chunk_min_bytes / token_bytes));
  const std::int64_t chunk = std::max<std::int64_t>({by_balance, by_size, 1});
  if (!s.pool.try_run(tokens, chunk, &detail::scatter_tokens, &call)) detail::scatter_tokens(&call, 0, tokens);
}

void CpuEngine::enable_counters(bool on) const noexcept { state_->counters.on.store(on, std::memory_order_relaxed); }

OperationCounters CpuEngine::counters() const noexcept { return state_->counters.read(); }

void CpuEngine::reset_counters() const noexcept { state_->counters.reset(); }

const RopeSpec& CpuEngine::spec() const noexcept { return state_->spec; }
const FrequencyTable& CpuEngine::frequencies() const noexcept { return state_->table; }
int CpuEngine::threads() const noexcept { return state_->pool.threads(); }

std::string_view CpuEngine::kernel_build(DType dtype) const noexcept {
  const auto index = static_cast<std::size_t>(dtype);
  if (!state_ || index >= state_->kernel_builds.size()) return {};  // moved from, or not a DType
  return isa_name(state_->kernel_builds[index]);
}

}  // namespace posenc
