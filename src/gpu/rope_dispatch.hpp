// Runtime (dtype, pairing, numerics) -> rope_kernel instantiations: the only dispatch onto template parameters (host code).
#pragma once

#include <string>

#include "gpu/rope_kernels.cuh"
#include "gpu/rope_params.hpp"
#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc::gpu::detail {

using RopeKernel = void (*)(RopeKernelParams);

/// The two instantiations for one (dtype, pairing, numerics): 16-byte vectors, and one element
/// per access for views the launcher cannot prove aligned.
struct KernelPair {
  RopeKernel vectorized = nullptr;
  RopeKernel generic = nullptr;
};

template <Act A, Pairing P, Numerics N, bool Append>
KernelPair kernels_for() {
  return {&rope_kernel<A, P, N, vector_width<A>, Append>, &rope_kernel<A, P, N, 1, Append>};
}

template <Act A, Pairing P, bool Append>
KernelPair dispatch_numerics(Numerics n) {
  switch (n) {
    case Numerics::hf_compatible: return kernels_for<A, P, Numerics::hf_compatible, Append>();
    case Numerics::hf_fp32_apply: return kernels_for<A, P, Numerics::hf_fp32_apply, Append>();
    case Numerics::accurate: return kernels_for<A, P, Numerics::accurate, Append>();
  }
  throw Error(ErrorKind::unsupported, "GPU engine: unsupported numerics value " + std::to_string(static_cast<int>(n)));
}

template <Act A, bool Append>
KernelPair dispatch_pairing(Pairing p, Numerics n) {
  switch (p) {
    case Pairing::half_split: return dispatch_numerics<A, Pairing::half_split, Append>(n);
    case Pairing::interleaved: return dispatch_numerics<A, Pairing::interleaved, Append>(n);
    case Pairing::interleaved_to_half: return dispatch_numerics<A, Pairing::interleaved_to_half, Append>(n);
    case Pairing::half_split_2d: return dispatch_numerics<A, Pairing::half_split_2d, Append>(n);
  }
  throw Error(ErrorKind::unsupported, "GPU engine: unsupported pairing value " + std::to_string(static_cast<int>(p)));
}

/// Instantiates every kernel of one Append value: include this where exactly one value is
/// dispatched (rope_launch.cu: plain rotations; append_kernels.cu: appends), so each
/// translation unit compiles half of them.
template <bool Append>
KernelPair dispatch_kernels(DType t, Pairing p, Numerics n) {
  switch (t) {
    case DType::f32: return dispatch_pairing<Act::f32, Append>(p, n);
    case DType::f16: return dispatch_pairing<Act::f16, Append>(p, n);
    case DType::bf16: return dispatch_pairing<Act::bf16, Append>(p, n);
  }
  throw Error(ErrorKind::unsupported, "GPU engine: unsupported dtype value " + std::to_string(static_cast<int>(t)));
}

/// dispatch_kernels<true>, compiled in append_kernels.cu.
KernelPair append_kernels(DType t, Pairing p, Numerics n);

}  // namespace posenc::gpu::detail
