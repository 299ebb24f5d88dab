// The fused RoPE + KV-cache append instantiations of rope_kernel, in their own translation unit so nvcc builds them beside the plain rotations.
#include "gpu/rope_dispatch.hpp"

namespace posenc::gpu::detail {

KernelPair append_kernels(DType t, Pairing p, Numerics n) { return dispatch_kernels<true>(t, p, n); }

}  // namespace posenc::gpu::detail
