// Whose float32 pow, cos and sin the hf numerics use (RopeSpec::hf_arithmetic): the resolution per engine and the host's implementations (docs/NUMERICS.md §3.4).
//
// transformers builds its tables with torch's `base ** exponent` and evaluates `emb.cos()` /
// `emb.sin()` on the device the model runs on; each device's torch calls a different math library,
// and their float32 results differ in the last bit for a few percent of the inputs. This header is
// the one place that says which library stands for which HfArithmetic on the host:
//   exact      pow evaluated in double and rounded once to float32; cos/sin likewise (rope_math.hpp)
//   torch_cpu  what ATen does on an x86-64 CPU, found by tracing torch 2.11 (docs/NUMERICS.md §3.4):
//              the pow kernel runs SLEEF's powf (u10) on whole blocks of 2 vectors and glibc's powf
//              on the remainder; cos/sin are Intel MKL's vmsCos/vmsSin in high-accuracy mode.
// torch_cuda lives with the GPU engine (CUDA's libdevice runs only there).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "posenc/rope.hpp"

namespace posenc::detail {

/// The arithmetic a spec's tables and hf cos/sin follow on an engine whose own arithmetic is
/// `device` (torch_cpu: CpuEngine and apply_reference; torch_cuda: GpuEngine): `accurate` numerics
/// always use exact tables; HfArithmetic::engine becomes `device`.
HfArithmetic effective_arithmetic(const RopeSpec& spec, HfArithmetic device) noexcept;

/// How one device's torch evaluates the two float32 powers of transformers' rope functions.
struct TorchPowers {
  /// `base ** (torch.arange(0, d, 2).float() / d)` with a float32 base (a Python float or a
  /// 0-dim tensor): the d/2 powers, in order.
  std::function<std::vector<float>(float base, std::int64_t d)> table;
  /// `x ** exponent` for a 0-dim float32 tensor x and a Python float exponent (dynamic NTK's
  /// `(...) ** (dim / (dim - 2))`).
  std::function<float(float x, double exponent)> scalar;
};

/// The host's powers of `arithmetic` (exact or torch_cpu). Throws Error(unsupported) for
/// torch_cuda, whose call-time powers only the GPU engine computes (its init table is torch_cpu's:
/// compute_frequencies), and for `engine` (resolve it first).
const TorchPowers& host_powers(HfArithmetic arithmetic);

/// ATen's CPU capability (`torch.backends.cpu.get_cpu_capability()`): it sets the vector width of
/// torch's pow kernel, hence which entries of a table SLEEF computes.
enum class TorchCpuCapability : std::uint8_t { baseline, avx2, avx512 };

/// The capability torch 2.x picks on this CPU: avx512 with AVX512-VL/BW/DQ and FMA, avx2 with AVX2
/// and FMA, else baseline ("DEFAULT"); the environment variable ATEN_CPU_CAPABILITY ("default",
/// "avx2", "avx512") lowers it as it does torch's.
TorchCpuCapability torch_cpu_capability() noexcept;

/// torch's `base ** (arange(0, d, 2).float() / d)` on a CPU of `capability`: ATen's vectorized
/// loop handles blocks of 2 vectors (2 x 16 floats on avx512, 2 x 8 on avx2) with SLEEF's powf
/// u10 and the rest of the d/2 entries one by one with glibc's powf; the baseline capability uses
/// glibc's powf for every entry.
std::vector<float> torch_cpu_powers(float base, std::int64_t d, TorchCpuCapability capability);

/// The exact table: fl32(pow(double(base), double(e_i))) for e_i = fl32(2i) / fl32(d).
std::vector<float> exact_powers(float base, std::int64_t d);

/// Whether this build links Intel MKL (CMake option POSENC_MKL), which torch_cpu's cos/sin need.
bool torch_cpu_trig_available() noexcept;

/// torch's float32 cos and sin of `n` angles on an x86-64 CPU: MKL's vmsCos and vmsSin with
/// VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, the calls ATen makes. Each value depends on its
/// angle alone. Without MKL (torch_cpu_trig_available() false) it throws Error(unsupported).
void torch_cpu_cos_sin(const float* angles, std::int64_t n, float* cos_out, float* sin_out);

/// Throws Error(unsupported) naming `who` when `arithmetic` (already resolved) cannot run in this
/// process on the host: torch_cuda always, torch_cpu in a build without MKL.
void require_host_arithmetic(HfArithmetic arithmetic, const char* who);

}  // namespace posenc::detail
