// Test support for MLA (mla_tensors.hpp): DeepSeek-V3-shaped Q and compressed-KV views, dense copies, random slots.
#include "support/mla_tensors.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "posenc/model_config.hpp"
#include "support/specs.hpp"

namespace posenc::test {

RopeSpec deepseek_v3_spec(Numerics numerics) {
  RopeSpec spec = load_model_config(std::string(POSENC_CONFIGS_DIR) + "/deepseek-v3.json").spec();
  spec.hf_arithmetic = HfArithmetic::exact;
  spec.numerics = numerics;
  return spec;
}

std::string name_of(const MlaCase& c) {
  return case_name(c.spec, c.act) + " -> mla " + to_string(c.cache) + " latent " + std::to_string(c.latent) +
         " pad " + std::to_string(c.pad) + (c.out_of_place ? " out of place" : "");
}

std::vector<std::int64_t> mla_slots(const MlaCase& c) {
  return c.slots.empty() ? random_slots(c.tokens, c.blocks * c.block_len, 4, c.seed + 5) : c.slots;
}

std::vector<std::int64_t> mla_positions(const MlaCase& c) {
  std::vector<std::int64_t> positions = random_positions(c.tokens, 163840, c.seed + 3);
  positions[0] = 0;
  if (c.tokens > 1) positions[1] = 4096;
  return positions;
}

MlaTensors::MlaTensors(DType act, std::int64_t tokens, std::int64_t heads, std::int64_t nope, std::int64_t rope,
                       std::int64_t latent, std::uint64_t seed, std::int64_t pad)
    : q_full(act, tokens, heads, nope + rope), ckv_full(act, tokens, 1, latent + rope, latent + rope + pad) {
  fill_random(q_full.view, seed);
  fill_random(ckv_full.view, seed + 1);
  const std::int64_t e = size_of(act);
  q = TensorView{static_cast<std::byte*>(q_full.view.data) + nope * e, act, tokens, heads, rope,
                 heads * (nope + rope), nope + rope};
  auto* base = static_cast<const std::byte*>(ckv_full.view.data);
  const std::int64_t token_stride = ckv_full.view.token_stride;
  k = ConstTensorView(base + latent * e, act, tokens, 1, rope, token_stride, rope);
  v = ConstTensorView(base, act, tokens, 1, latent, token_stride, latent);
}

HostTensor dense_copy(const ConstTensorView& src) {
  HostTensor out(src.dtype, src.tokens, src.heads, src.head_dim);
  const std::int64_t e = size_of(src.dtype);
  for (std::int64_t t = 0; t < src.tokens; ++t) {
    for (std::int64_t h = 0; h < src.heads; ++h) {
      std::memcpy(static_cast<std::byte*>(out.view.data) + ((t * src.heads + h) * src.head_dim) * e,
                  static_cast<const std::byte*>(src.data) + (t * src.token_stride + h * src.head_stride) * e,
                  static_cast<std::size_t>(src.head_dim * e));
    }
  }
  return out;
}

std::vector<std::int64_t> random_slots(std::int64_t tokens, std::int64_t capacity, std::int64_t pad_every,
                                       std::uint64_t seed) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(capacity));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), std::mt19937_64(seed));
  std::vector<std::int64_t> slots;
  for (std::int64_t t = 0; t < tokens; ++t) {
    slots.push_back(pad_every > 0 && t % pad_every == pad_every - 1 ? -1 : all[static_cast<std::size_t>(t)]);
  }
  return slots;
}

}  // namespace posenc::test
