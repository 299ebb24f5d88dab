// Test support for MLA (multi-head latent attention): DeepSeek-V3's spec, Q and compressed-KV tensors with their rope slices as views, the cases of the CPU and GPU MLA tests, dense copies, random distinct slots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"
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

/// DeepSeek-V3's spec from configs/deepseek-v3.json (head_dim = rotary = qk_rope_head_dim 64,
/// interleaved_to_half, YaRN factor 40 with mscale) with `numerics`, in the exact arithmetic: the
/// CPU and GPU engines then agree bit for bit, and no MKL is needed.
RopeSpec deepseek_v3_spec(Numerics numerics = Numerics::hf_compatible);

/// One append into the mla layout (tests/test_mla.cpp, tests/test_gpu_mla.cpp).
struct MlaCase {
  RopeSpec spec = deepseek_v3_spec();
  DType act = DType::bf16;
  CacheDType cache = CacheDType::bf16;
  std::int64_t tokens = 29;
  std::int64_t heads = 8;
  std::int64_t nope = 128;
  std::int64_t latent = 512;
  std::int64_t blocks = 6;
  std::int64_t block_len = 8;
  /// Elements after each token's compressed KV: an odd pad takes the GPU off its 16-byte vectors.
  std::int64_t pad = 0;
  std::vector<std::int64_t> slots;  ///< empty: mla_slots draws them
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  bool out_of_place = false;  ///< Q read from a dense copy into the slice of a poisoned tensor (CPU test)
  int threads = 2;            ///< CPU engine threads
  std::uint64_t seed = 1;
};

/// "<spec> <dtype> -> mla <cache dtype> latent L pad P [out of place]".
std::string name_of(const MlaCase& c);

/// c.slots, or distinct random slots of the cache with every 4th token padding (-1).
std::vector<std::int64_t> mla_slots(const MlaCase& c);

/// Random positions in [0, 163840) (DeepSeek-V3's context), token 0 at 0 and token 1 at 4096
/// (original_max_position_embeddings).
std::vector<std::int64_t> mla_positions(const MlaCase& c);

/// A dense copy of a view (so apply can rotate it without touching the original).
HostTensor dense_copy(const ConstTensorView& src);

/// Distinct slots drawn at random from [0, capacity) (tokens <= capacity), every `pad_every`-th
/// token -1 (none when pad_every <= 0).
std::vector<std::int64_t> random_slots(std::int64_t tokens, std::int64_t capacity, std::int64_t pad_every,
                                       std::uint64_t seed);

}  // namespace posenc::test
