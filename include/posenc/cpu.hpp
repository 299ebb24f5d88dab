// The CPU engine: applies a RopeSpec to Q/K in host memory; also the plain reference definition.
#pragma once

#include <memory>
#include <string_view>

#include "posenc/counters.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc {

struct AppendArgs;  // kv_cache.hpp

/// Validates `args` against `spec` in one pass without writing anything: shapes and dtypes match
/// the spec and each other, strides are non-negative and do not make a view overlap itself or
/// another destination, sizes fit in 64 bits, every position lies in [0, spec.position_limit)
/// (and in [0, cos_sin.rows) when a cos/sin cache is given; the cache itself is checked as
/// tensor.hpp CosSinCacheView says).
/// Throws posenc::Error naming the value, its index and the limit. `check_positions` = false
/// skips reading positions (they live in device memory for the GPU engine).
void validate_args(const RopeSpec& spec, const RopeArgs& args, bool check_positions = true);

/// The definition of RoPE in this codebase: plain scalar loops over tokens, heads and pairs, one
/// element at a time, no threads, no vectorization. It validates, computes the frequency table
/// for the call (or reads the caller's cos/sin cache, RopeArgs::cos_sin), and applies the math of
/// rope.hpp with the spec's numerics. Every other path
/// (the CPU engine, the GPU engine) is tested against it.
void apply_reference(const RopeSpec& spec, const RopeArgs& args);

/// Options of the CPU engine.
struct CpuOptions {
  int threads = 0;  ///< worker threads; 0 = std::thread::hardware_concurrency()
};

/// Multi-threaded, vectorizable CPU engine. Built once per spec: the frequency table is computed
/// at construction (and per call only for the `dynamic`/`longrope` schemes, whose table depends
/// on the call's largest position). cos/sin are computed once per token and shared by its heads;
/// with a cos/sin cache in the call (RopeArgs::cos_sin) they are read from its row instead.
/// Results are bit-identical to apply_reference.
///
/// The hf numerics follow spec.hf_arithmetic (rope.hpp): `engine` and `torch_cpu` reproduce torch
/// on this x86-64 CPU (SLEEF/glibc pow, Intel MKL cos/sin), `exact` the correctly rounded
/// functions. The constructor throws Error(unsupported) for `torch_cuda` (CUDA's libdevice runs
/// only on an NVIDIA GPU) and, in a build without MKL (POSENC_MKL=OFF), for `torch_cpu`.
class CpuEngine {
 public:
  explicit CpuEngine(RopeSpec spec, CpuOptions options = {});
  ~CpuEngine();
  CpuEngine(CpuEngine&&) noexcept;
  CpuEngine& operator=(CpuEngine&&) noexcept;
  CpuEngine(const CpuEngine&) = delete;
  CpuEngine& operator=(const CpuEngine&) = delete;

  /// Validates everything first (nothing is written when it throws), then rotates.
  void apply(const RopeArgs& args) const;

  /// Fused RoPE + KV-cache append (kv_cache.hpp; include it to build AppendArgs): validates
  /// everything first (validate_append_args; nothing is written when it throws), then rotates Q
  /// and K in one pass of apply's kernels (cos/sin once per token, shared by Q and K) with K going
  /// to a scratch buffer, then casts the rotated K and V into the cache on the pool. The
  /// cache's K rows hold exactly apply's K bits converted to the cache dtype; results are
  /// bit-identical to append_reference. The K scratch belongs to the calling thread and only
  /// grows: a call allocates only when it is larger than every earlier one on that thread.
  void append(const AppendArgs& args) const;

  /// Operation counters, off by default. Off, a call pays one relaxed atomic load; on, three
  /// relaxed atomic adds. Safe to read while other threads apply.
  void enable_counters(bool on) const noexcept;
  OperationCounters counters() const noexcept;
  void reset_counters() const noexcept;

  const RopeSpec& spec() const noexcept;
  /// The table built at construction (the init-time table for dynamic/longrope).
  const FrequencyTable& frequencies() const noexcept;
  int threads() const noexcept;
  /// The kernel build that rotates `dtype` under this engine's spec on this CPU: "avx512_bf16",
  /// "avx512", "avx2" or "baseline". The widest build the CPU supports is taken, or the narrower
  /// one that the environment variable POSENC_CPU_ISA names; the AVX512-BF16 build serves only
  /// bfloat16 half_split / interleaved, so other combinations on such a CPU report "avx512".
  /// docs/PERFORMANCE.md lists the instructions each build uses. Every build gives the same bits.
  std::string_view kernel_build(DType dtype) const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace posenc
