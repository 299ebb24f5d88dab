// Test support for MLA (multi-head latent attention): DeepSeek-V3's Q and compressed-KV tensors with their rope slices as views, dense copies, random distinct slots.
#pragma once

#include <cstdint>
#include <vector>

#include "posenc/tensor.hpp"
#include "support/host_tensor.hpp"

namespace posenc::test {

/// The tensors of one MLA call, laid out as DeepSeek-V3's attention produces them (poisoned, then
/// filled with random values):
///   q_full   [tokens, heads, nope + rope]    q = its rope slice (head_dim rope, head_stride nope + rope)
///   ckv_full [tokens, latent + rope (+ pad)] v = c_kv = [..., :latent], k = k_pe = [..., latent:latent + rope]
struct MlaTensors {
  HostTensor q_full;
  HostTensor ckv_full;
  TensorView q;
  ConstTensorView k;
  ConstTensorView v;

  MlaTensors(DType act, std::int64_t tokens, std::int64_t heads, std::int64_t nope, std::int64_t rope,
             std::int64_t latent, std::uint64_t seed, std::int64_t pad = 0);
};

/// A dense copy of a view (so apply can rotate it without touching the original).
HostTensor dense_copy(const ConstTensorView& src);

/// Distinct slots drawn at random from [0, capacity) (tokens <= capacity), every `pad_every`-th
/// token -1 (none when pad_every <= 0).
std::vector<std::int64_t> random_slots(std::int64_t tokens, std::int64_t capacity, std::int64_t pad_every,
                                       std::uint64_t seed);

}  // namespace posenc::test
