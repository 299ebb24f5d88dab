// The QK-norm + RoPE kernel's instantiations (rope_norm_kernel, plain and append), in their own translation unit so nvcc builds them beside the others.
#include "gpu/norm_kernels.cuh"
#include "gpu/rope_dispatch.hpp"

namespace posenc::gpu::detail {

NormKernelPair norm_kernels(DType t, Numerics n, std::int64_t head_dim) {
  return posenc::detail::visit(t, [n, head_dim](auto dtype) {
    return posenc::detail::visit(n, [&](auto numerics) {
      constexpr DType A = decltype(dtype)::value;
      constexpr Numerics N = decltype(numerics)::value;
      if (head_dim == 256) return NormKernelPair{&rope_norm_kernel<A, N, false, 2>, &rope_norm_kernel<A, N, true, 2>};
      return NormKernelPair{&rope_norm_kernel<A, N, false, 1>, &rope_norm_kernel<A, N, true, 1>};
    });
  });
}

}  // namespace posenc::gpu::detail
