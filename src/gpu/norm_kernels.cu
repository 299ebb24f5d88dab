// The QK-norm + RoPE kernel's instantiations (rope_norm_kernel, plain and append), in their own translation unit so nvcc builds them beside the others.
#include "gpu/norm_kernels.cuh"
#include "gpu/rope_dispatch.hpp"

namespace posenc::gpu::detail {

NormKernelPair norm_kernels(DType t, Numerics n) {
  return posenc::detail::visit(t, [n](auto dtype) {
    return posenc::detail::visit(n, [&](auto numerics) {
      constexpr DType A = decltype(dtype)::value;
      constexpr Numerics N = decltype(numerics)::value;
      return NormKernelPair{&rope_norm_kernel<A, N, false>, &rope_norm_kernel<A, N, true>};
    });
  });
}

}  // namespace posenc::gpu::detail
