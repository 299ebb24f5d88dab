// The host's pow, cos and sin for each HfArithmetic (hf_arithmetic.hpp): exact, and torch on an x86-64 CPU through the libraries torch itself calls (SLEEF, glibc, Intel MKL).
#include "core/hf_arithmetic.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "core/frequencies_detail.hpp"
#include "posenc/error.hpp"

// SLEEF's scalar u10 powf built with FMA (libsleef-dev). sleef.h declares it only where the
// compiler targets FMA (FP_FAST_FMA); the library exports it always, and posenc calls it only on
// CPUs that have FMA (torch_cpu_capability avx2 or avx512).
extern "C" float Sleef_finz_powf1_u10purecfma(float x, float y);

#ifndef POSENC_WITH_MKL
#define POSENC_WITH_MKL 0
#endif

#if POSENC_WITH_MKL
// Intel MKL's vmsCos and vmsSin (mkl_vml_functions.h, LP64 interface: MKL_INT is int), linked
// statically as torch links them, renamed so that no other MKL in the process collides with them
// (cmake/posenc_mkl_object.cmake). The mode bits are mkl_vml_defines.h's.
extern "C" {
void posencmkl_vmsCos(int n, const float* a, float* r, long long mode);
void posencmkl_vmsSin(int n, const float* a, float* r, long long mode);
}
#endif

namespace posenc::detail {

namespace {

/// torch's CPU `tensor ** python_scalar` on a 0-dim float32 tensor (PowKernel.cpp,
/// pow_tensor_scalar_optimized_kernel<float, double>): 2 and 3 become multiplies; otherwise
/// std::pow(float, double), the double pow of the widened base with the unrounded exponent,
/// rounded to float32. It is also the exact rule: one rounding of the double result.
float cpu_scalar_power(float x, double e) {
  if (e == 2.0) return x * x;
  if (e == 3.0) return x * x * x;
  return static_cast<float>(std::pow(static_cast<double>(x), e));
}

bool cpu_has(const char* feature) noexcept {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // __builtin_cpu_supports wants a string literal: one branch per feature asked for.
  if (std::strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2");
  if (std::strcmp(feature, "fma") == 0) return __builtin_cpu_supports("fma");
  if (std::strcmp(feature, "avx512vl") == 0) return __builtin_cpu_supports("avx512vl");
  if (std::strcmp(feature, "avx512bw") == 0) return __builtin_cpu_supports("avx512bw");
  if (std::strcmp(feature, "avx512dq") == 0) return __builtin_cpu_supports("avx512dq");
#else
  (void)feature;
#endif
  return false;
}

}  // namespace

HfArithmetic effective_arithmetic(const RopeSpec& spec, HfArithmetic device) noexcept {
  if (spec.numerics == Numerics::accurate) return HfArithmetic::exact;
  return spec.hf_arithmetic == HfArithmetic::engine ? device : spec.hf_arithmetic;
}

TorchCpuCapability torch_cpu_capability() noexcept {
  // ATen's compute_cpu_capability (DispatchStub.cpp) asks cpuinfo for these features.
  TorchCpuCapability best = TorchCpuCapability::baseline;
  if (cpu_has("avx2") && cpu_has("fma")) best = TorchCpuCapability::avx2;
  if (cpu_has("avx512vl") && cpu_has("avx512bw") && cpu_has("avx512dq") && cpu_has("fma"))
    best = TorchCpuCapability::avx512;
  const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
  if (forced != nullptr) {
    // torch takes the variable's word; posenc never goes above what this CPU can run.
    TorchCpuCapability wanted = best;
    if (std::strcmp(forced, "default") == 0) wanted = TorchCpuCapability::baseline;
    if (std::strcmp(forced, "avx2") == 0) wanted = TorchCpuCapability::avx2;
    if (std::strcmp(forced, "avx512") == 0) wanted = TorchCpuCapability::avx512;
    best = std::min(best, wanted);
  }
  return best;
}

std::vector<float> torch_cpu_powers(float base, std::int64_t d, TorchCpuCapability capability) {
  const std::int64_t n = d / 2;
  // ATen's vectorized_loop (cpu/Loops.h) steps 2 vectors at a time and hands the remainder to the
  // scalar loop: 2 x 16 floats with AVX-512, 2 x 8 with AVX2. The baseline build's vector pow is
  // std::pow per lane, so every entry is glibc's there.
  std::int64_t block = 0;
  if (capability == TorchCpuCapability::avx512) block = 32;
  if (capability == TorchCpuCapability::avx2) block = 16;
  const std::int64_t vectorized = block == 0 ? 0 : n / block * block;
  std::vector<float> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float e = rope_exponent(i, d);
    // SLEEF's u10 powf with FMA ("finz": the same bits in every FMA build, AVX2 and AVX-512 alike,
    // which is what torch's vector kernels run); glibc's powf for the scalar remainder.
    out[static_cast<std::size_t>(i)] = i < vectorized ? Sleef_finz_powf1_u10purecfma(base, e) : std::pow(base, e);
  }
  return out;
}

std::vector<float> exact_powers(float base, std::int64_t d) {
  std::vector<float> out(static_cast<std::size_t>(d / 2));
  for (std::int64_t i = 0; i < d / 2; ++i)
    out[static_cast<std::size_t>(i)] =
        static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(rope_exponent(i, d))));
  return out;
}

const TorchPowers& host_powers(HfArithmetic arithmetic) {
  static const TorchPowers exact{exact_powers, cpu_scalar_power};
  static const TorchPowers torch_cpu{
      [](float base, std::int64_t d) { return torch_cpu_powers(base, d, torch_cpu_capability()); },
      cpu_scalar_power};
  switch (arithmetic) {
    case HfArithmetic::exact: return exact;
    case HfArithmetic::torch_cpu: return torch_cpu;
    case HfArithmetic::torch_cuda:
      throw Error(ErrorKind::unsupported,
                  "hf_arithmetic torch_cuda: its tables come from CUDA's powf, which runs only on an NVIDIA GPU; "
                  "the GPU engine computes them (GpuEngine::frequencies())");
    case HfArithmetic::engine: break;
  }
  throw Error(ErrorKind::invalid_argument,
              "hf_arithmetic " + std::string(to_string(arithmetic)) + ": not a concrete arithmetic here");
}

bool torch_cpu_trig_available() noexcept { return POSENC_WITH_MKL != 0; }

void torch_cpu_cos_sin(const float* angles, std::int64_t n, float* cos_out, float* sin_out) {
#if POSENC_WITH_MKL
  // ATen's vml::vcos / vml::vsin (cpu/vml.h) with MKL enabled, chunked below MKL_INT's range.
  constexpr long long mode = 0x00000002 /*VML_HA*/ | 0x00140000 /*VML_FTZDAZ_OFF*/ | 0x00000100 /*VML_ERRMODE_IGNORE*/;
  constexpr std::int64_t chunk = std::numeric_limits<int>::max();
  for (std::int64_t done = 0; done < n; done += chunk) {
    const int count = static_cast<int>(std::min(chunk, n - done));
    posencmkl_vmsCos(count, angles + done, cos_out + done, mode);
    posencmkl_vmsSin(count, angles + done, sin_out + done, mode);
  }
#else
  (void)angles;
  (void)n;
  (void)cos_out;
  (void)sin_out;
  require_host_arithmetic(HfArithmetic::torch_cpu, "torch_cpu_cos_sin");
#endif
}

void require_host_arithmetic(HfArithmetic arithmetic, const char* who) {
  if (arithmetic == HfArithmetic::torch_cuda)
    throw Error(ErrorKind::unsupported,
                std::string(who) + ": hf_arithmetic torch_cuda cannot be reproduced on the host: its cos, sin and "
                                   "pow are CUDA's libdevice functions, which run only on an NVIDIA GPU (use the GPU "
                                   "engine, or hf_arithmetic torch_cpu / exact here)");
  if (arithmetic == HfArithmetic::torch_cpu && !torch_cpu_trig_available())
    throw Error(ErrorKind::unsupported,
                std::string(who) + ": hf_arithmetic torch_cpu needs Intel MKL's vmsCos/vmsSin (torch's CPU cos and "
                                   "sin), and this build of posenc was configured with POSENC_MKL=OFF; rebuild with "
                                   "MKL (scripts/setup.sh installs it) or use hf_arithmetic exact");
}

}  // namespace posenc::detail
