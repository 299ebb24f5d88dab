// Runtime (dtype, pairing, numerics) -> rope_kernel instantiations: the only dispatch onto template parameters (host code).
#pragma once

#include "core/dispatch.hpp"
#include "gpu/rope_kernels.cuh"
#include "gpu/rope_params.hpp"
#include "posenc/dtype.hpp"
#include "posenc/rope.hpp"

namespace posenc::gpu::detail {

using RopeKernel = void (*)(RopeKernelParams);

/// The two instantiations for one (dtype, pairing, numerics): 16-byte vectors, and one element
/// per access for views the launcher cannot prove aligned.
struct KernelPair {
  RopeKernel vectorized = nullptr;
  RopeKernel generic = nullptr;
};

/// Instantiates every kernel of one Append value: include this where exactly one value is
/// dispatched (rope_launch.cu: plain rotations; append_kernels.cu: appends), so each
/// translation unit compiles half of them. Throws Error for values outside the enums.
template <bool Append>
KernelPair dispatch_kernels(DType t, Pairing p, Numerics n) {
  return posenc::detail::visit(t, p, n, [](auto dtype, auto pairing, auto numerics) {
    constexpr DType A = decltype(dtype)::value;
    constexpr Pairing P = decltype(pairing)::value;
    constexpr Numerics N = decltype(numerics)::value;
    return KernelPair{&rope_kernel<A, P, N, vector_width<A>, Append>, &rope_kernel<A, P, N, 1, Append>};
  });
}

/// dispatch_kernels<true>, compiled in append_kernels.cu.
KernelPair append_kernels(DType t, Pairing p, Numerics n);

/// The QK-norm + RoPE kernels (norm_kernels.cuh) of one (dtype, numerics): a plain rotation and an
/// append (the pairing is a runtime value there), the instantiation whose register path holds rows
/// of `head_dim` (256: two groups of 128 elements a lane; any other: one, which the register path
/// takes only at 128). Compiled in norm_kernels.cu; throws Error for values outside the enums.
using NormKernel = void (*)(NormKernelParams);
struct NormKernelPair {
  NormKernel apply = nullptr;
  NormKernel append = nullptr;
};
NormKernelPair norm_kernels(DType t, Numerics n, std::int64_t head_dim);

}  // namespace posenc::gpu::detail
