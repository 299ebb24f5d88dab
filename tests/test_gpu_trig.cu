// GPU trig test: device_torch_sincos (src/gpu/vendor.hpp) gives CUDA's sincosf, sinf and cosf bit for bit, for every float32 (CUDA only).
//
// The hf_compatible kernels take cos/sin of each angle from device_torch_sincos, which replaces
// the library's large-argument reduction (|x| >= 105615) by its own in registers. This test is
// the proof that nothing changed: a test kernel evaluates every one of the 2^32 float bit
// patterns (both signs, infinities and NaNs included) through device_torch_sincos and through the
// library's sincosf, sinf and cosf, and counts the bit differences on the device. On an H100 the
// two tests take a few seconds together.
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>

#include <gtest/gtest.h>

#include "gpu/check.hpp"
#include "gpu/vendor.hpp"
#include "gpu_support.hpp"

namespace posenc::test {
namespace {

/// Device-side tally: [0] against sincosf (either output), [1] against sinf, [2] against cosf;
/// `first` is the smallest differing bit pattern (all ones when none differs).
struct Mismatches {
  unsigned long long count[3];
  unsigned long long first[3];
};

__device__ void record_mismatch(Mismatches* m, int which, std::uint32_t bits) {
  atomicAdd(&m->count[which], 1ull);
  atomicMin(&m->first[which], static_cast<unsigned long long>(bits));
}

/// Compares the bit patterns [begin, begin + count) (a grid-stride loop).
__global__ void compare_patterns(std::uint64_t begin, std::uint64_t count, Mismatches* m) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const auto bits = static_cast<std::uint32_t>(begin + i);
    const float x = __uint_as_float(bits);
    float s;
    float c;
    gpu::device_torch_sincos(x, &s, &c);
    float ls;
    float lc;
    sincosf(x, &ls, &lc);
    const std::uint32_t sb = __float_as_uint(s);
    const std::uint32_t cb = __float_as_uint(c);
    if (sb != __float_as_uint(ls) || cb != __float_as_uint(lc)) record_mismatch(m, 0, bits);
    if (sb != __float_as_uint(sinf(x))) record_mismatch(m, 1, bits);
    if (cb != __float_as_uint(cosf(x))) record_mismatch(m, 2, bits);
  }
}

/// out = {ours sin, ours cos, sincosf sin, sincosf cos, sinf, cosf} of x, for the report.
__global__ void evaluate_one(float x, float* out) {
  gpu::device_torch_sincos(x, &out[0], &out[1]);
  sincosf(x, &out[2], &out[3]);
  out[4] = sinf(x);
  out[5] = cosf(x);
}

class GpuTrig : public GpuTest {
 protected:
  /// Runs compare_patterns over each range [lo, hi) of bit patterns; expects no mismatch and
  /// reports the count and the first mismatch of each comparison otherwise.
  void expect_identical(std::initializer_list<std::pair<std::uint64_t, std::uint64_t>> ranges) {
    Mismatches* d_m = nullptr;
    float* d_out = nullptr;
    POSENC_GPU_CHECK(cudaMalloc(&d_m, sizeof(Mismatches)));
    POSENC_GPU_CHECK(cudaMalloc(&d_out, 6 * sizeof(float)));
    Mismatches m{};
    for (auto& f : m.first) f = ~0ull;
    POSENC_GPU_CHECK(cudaMemcpy(d_m, &m, sizeof m, cudaMemcpyHostToDevice));
    const auto start = std::chrono::steady_clock::now();
    std::uint64_t evaluated = 0;
    const unsigned blocks = static_cast<unsigned>(device.multiprocessor_count()) * 8u;
    for (const auto& [lo, hi] : ranges) {
      // Launches of at most 2^28 patterns keep each one short.
      for (std::uint64_t b = lo; b < hi; b += std::uint64_t{1} << 28) {
        const std::uint64_t n = std::min<std::uint64_t>(hi - b, std::uint64_t{1} << 28);
        compare_patterns<<<blocks, 256>>>(b, n, d_m);
        POSENC_GPU_CHECK(cudaGetLastError());
        evaluated += n;
      }
    }
    POSENC_GPU_CHECK(cudaDeviceSynchronize());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    POSENC_GPU_CHECK(cudaMemcpy(&m, d_m, sizeof m, cudaMemcpyDeviceToHost));
    std::printf("[ trig ] %llu patterns in %.2f s; mismatches: sincosf %llu, sinf %llu, cosf %llu\n",
                static_cast<unsigned long long>(evaluated), seconds, m.count[0], m.count[1], m.count[2]);
    static const char* const against[3] = {"sincosf", "sinf", "cosf"};
    for (int w = 0; w < 3; ++w) {
      if (m.count[w] == 0) continue;
      const auto bits = static_cast<std::uint32_t>(m.first[w]);
      const float x = std::bit_cast<float>(bits);
      evaluate_one<<<1, 1>>>(x, d_out);
      POSENC_GPU_CHECK(cudaGetLastError());
      float out[6];
      POSENC_GPU_CHECK(cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost));
      const auto b = [](float v) { return std::bit_cast<std::uint32_t>(v); };
      ADD_FAILURE() << m.count[w] << " patterns differ from " << against[w] << "; first x = " << x << std::hex
                    << " (0x" << bits << "): ours sin 0x" << b(out[0]) << " cos 0x" << b(out[1]) << ", sincosf sin 0x"
                    << b(out[2]) << " cos 0x" << b(out[3]) << ", sinf 0x" << b(out[4]) << ", cosf 0x" << b(out[5]);
    }
    POSENC_GPU_CHECK(cudaFree(d_out));
    POSENC_GPU_CHECK(cudaFree(d_m));
  }
};

constexpr std::uint64_t sign_bit = 0x80000000u;
const std::uint64_t large_min_bits = std::bit_cast<std::uint32_t>(105615.0f);  // the library's threshold

// Every pattern of magnitude >= 105615: the range device_torch_sincos reduces itself, with the
// infinities (0x7f800000, 0xff800000) and every NaN (they sit above the infinities).
TEST_F(GpuTrig, EveryLargeFloatMatchesSincosf) {
  expect_identical({{large_min_bits, sign_bit}, {sign_bit + large_min_bits, sign_bit * 2}});
}

// Every pattern below 105615 in magnitude (zeros and subnormals included): the library's own path.
TEST_F(GpuTrig, EverySmallFloatMatchesSincosf) {
  expect_identical({{0, large_min_bits}, {sign_bit, sign_bit + large_min_bits}});
}

}  // namespace
}  // namespace posenc::test
