// GLM-4 attention on posenc's CPU engine: plain loops everywhere except the fused RoPE + KV-cache append.
#include "glm4_attention_layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>

#include "npy.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc::examples {
namespace {

[[noreturn]] void fail(ErrorKind kind, const std::string& message) { throw Error(kind, "glm4_attention: " + message); }

std::vector<float> load_f32(const std::string& dir, const std::string& name, std::vector<std::int64_t> shape) {
  const std::string path = dir + "/" + name + ".npy";
  const cli::NpyArray a = cli::read_npy(path);
  if (a.type != cli::NpyType::f32 || a.shape != shape) fail(ErrorKind::io, path + ": not float32 of the expected shape");
  std::vector<float> v(static_cast<std::size_t>(a.count()));
  std::memcpy(v.data(), a.data.data(), v.size() * sizeof(float));
  return v;
}

std::vector<std::int64_t> load_i64(const std::string& dir, const std::string& name, std::int64_t tokens) {
  const std::string path = dir + "/" + name + ".npy";
  const cli::NpyArray a = cli::read_npy(path);
  if (a.type != cli::NpyType::i64 || a.shape != std::vector<std::int64_t>{tokens}) {
    fail(ErrorKind::io, path + ": not int64 [" + std::to_string(tokens) + "]");
  }
  std::vector<std::int64_t> v(static_cast<std::size_t>(tokens));
  std::memcpy(v.data(), a.data.data(), v.size() * sizeof(std::int64_t));
  return v;
}

}  // namespace

GlmAttentionWeights GlmAttentionWeights::random(const GlmAttentionConfig& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.2f);
  auto draw = [&](std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
  };
  const std::int64_t q = c.q_heads * c.head_dim;
  const std::int64_t kv = c.kv_heads * c.head_dim;
  return {draw(q * c.hidden_size), draw(q), draw(kv * c.hidden_size), draw(kv),
          draw(kv * c.hidden_size), draw(kv), draw(c.hidden_size * q)};
}

RopeSpec glm_rope_spec(const GlmAttentionConfig& c) {
  RopeSpec spec;
  spec.head_dim = c.head_dim;
  // HF: dim = int(head_dim * partial_rotary_factor); the window starts at element 0.
  spec.rotary_dim = static_cast<std::int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor);
  spec.pairing = Pairing::interleaved;
  spec.theta = c.rope_theta;
  spec.numerics = Numerics::hf_compatible;
  spec.position_limit = c.max_len;  // a position past the cache is a bug here, not a long context
  return spec;
}

GlmAttentionLayer::GlmAttentionLayer(GlmAttentionConfig config, GlmAttentionWeights w, CpuOptions options)
    : config_(config), engine_(glm_rope_spec(config), options), tracker_(1, config.max_len) {
  const auto& c = config_;
  if (c.kv_heads <= 0 || c.q_heads % c.kv_heads != 0) fail(ErrorKind::invalid_argument, "q_heads must be a multiple of kv_heads");
  const auto q = static_cast<std::size_t>(c.q_heads * c.head_dim);
  const auto kv = static_cast<std::size_t>(c.kv_heads * c.head_dim);
  const auto h = static_cast<std::size_t>(c.hidden_size);
  if (w.q_weight.size() != q * h || w.k_weight.size() != kv * h || w.v_weight.size() != kv * h ||
      w.q_bias.size() != q || w.k_bias.size() != kv || w.v_bias.size() != kv || w.o_weight.size() != h * q) {
    fail(ErrorKind::invalid_argument, "weight sizes do not match the config");
  }
  // One [q + 2 kv, hidden] matrix so the projection is one pass over the input row (vLLM's QKVParallelLinear).
  for (const auto* part : {&w.q_weight, &w.k_weight, &w.v_weight}) qkv_weight_.insert(qkv_weight_.end(), part->begin(), part->end());
  for (const auto* part : {&w.q_bias, &w.k_bias, &w.v_bias}) qkv_bias_.insert(qkv_bias_.end(), part->begin(), part->end());
  o_weight_ = std::move(w.o_weight);
  const auto cache = static_cast<std::size_t>(c.batch * c.max_len) * kv;
  k_cache_.assign(cache, 0.0f);
  v_cache_.assign(cache, 0.0f);
}

void GlmAttentionLayer::add_sequence(std::int64_t seq_id) {
  if (tracker_.size() >= config_.batch) fail(ErrorKind::out_of_range, "no free cache block for sequence " + std::to_string(seq_id));
  tracker_.add_sequence(seq_id);
  // Without remove_sequence, tracker slots are dense 0..size-1, so slot i owns block i.
  blocks_.push_back(tracker_.size() - 1);
}

std::int64_t GlmAttentionLayer::cache_block(std::int64_t seq_id) const {
  return blocks_[static_cast<std::size_t>(tracker_.slot_of(seq_id))];
}

glm::PositionIds GlmAttentionLayer::step(std::span<const glm::StepEntry> entries, std::span<const float> hidden,
                                         std::span<float> out) {
  const auto& c = config_;
  const std::int64_t q_width = c.q_heads * c.head_dim;
  const std::int64_t kv_width = c.kv_heads * c.head_dim;
  const std::int64_t qkv_width = q_width + 2 * kv_width;

  // peek, not step: nothing is committed until the cache write succeeded.
  glm::PositionIds positions = tracker_.peek(entries);
  const std::int64_t tokens = positions.tokens();
  if (static_cast<std::int64_t>(hidden.size()) != tokens * c.hidden_size || out.size() != hidden.size()) {
    fail(ErrorKind::invalid_argument, "hidden/out must hold " + std::to_string(tokens) + " rows of " + std::to_string(c.hidden_size));
  }

  // Cache index of each token (its count of predecessors in the sequence) and its slot
  // b * max_len + index in the contiguous cache. For GLM-4 index == position, but the cache is
  // addressed by index so pinned/offset position schemes would work unchanged.
  std::vector<std::int64_t> slots(static_cast<std::size_t>(tokens));
  std::vector<std::int64_t> index(static_cast<std::size_t>(tokens));
  std::vector<std::int64_t> block_of(static_cast<std::size_t>(tokens));
  std::int64_t t = 0;
  for (const auto& e : entries) {
    const std::int64_t block = cache_block(e.seq_id);
    const std::int64_t length = tracker_.lengths()[static_cast<std::size_t>(tracker_.slot_of(e.seq_id))];
    if (length + e.new_tokens > c.max_len) fail(ErrorKind::out_of_range, "sequence " + std::to_string(e.seq_id) + " outgrows max_len");
    for (std::int64_t j = 0; j < e.new_tokens; ++j, ++t) {
      index[static_cast<std::size_t>(t)] = length + j;
      block_of[static_cast<std::size_t>(t)] = block;
      slots[static_cast<std::size_t>(t)] = block * c.max_len + length + j;
    }
  }

  // Fused QKV projection: plain loop, double accumulation (the order differs from PyTorch's GEMM
  // anyway, so the result is not bit-identical; double keeps our side close to exact).
  std::vector<float> qkv(static_cast<std::size_t>(tokens * qkv_width));
  for (std::int64_t i = 0; i < tokens; ++i) {
    const float* x = hidden.data() + i * c.hidden_size;
    for (std::int64_t o = 0; o < qkv_width; ++o) {
      const float* w = qkv_weight_.data() + o * c.hidden_size;
      double acc = qkv_bias_[static_cast<std::size_t>(o)];
      for (std::int64_t k = 0; k < c.hidden_size; ++k) acc += static_cast<double>(x[k]) * w[k];
      qkv[static_cast<std::size_t>(i * qkv_width + o)] = static_cast<float>(acc);
    }
  }

  // RoPE on Q (in place) and K, with K and V written to the cache, in one call. Q, K and V are
  // strided views into the fused buffer: no copies between the projection and the append.
  AppendArgs args;
  args.q = TensorView{qkv.data(), DType::f32, tokens, c.q_heads, c.head_dim, qkv_width, c.head_dim};
  args.k = ConstTensorView(qkv.data() + q_width, DType::f32, tokens, c.kv_heads, c.head_dim, qkv_width, c.head_dim);
  args.v = ConstTensorView(qkv.data() + q_width + kv_width, DType::f32, tokens, c.kv_heads, c.head_dim, qkv_width,
                           c.head_dim);
  args.positions = positions.view(0);
  args.slots = slots.data();
  args.cache = KvCacheView{k_cache_.data(), v_cache_.data(), CacheDType::f32, CacheLayout::contiguous,
                           c.kv_heads, c.head_dim, c.batch, c.max_len};
  engine_.append(args);
  tracker_.step(entries);  // the same positions peek returned: the state did not change in between

  // Causal attention over each token's own sequence: keys 0..index (earlier steps and earlier
  // tokens of the same prefill chunk, all in the cache now). Other sequences' blocks are never
  // read, which is the batch's block-diagonal mask. float64 scores, softmax and sums.
  const std::int64_t group = c.q_heads / c.kv_heads;
  const double scaling = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  std::vector<float> attn(static_cast<std::size_t>(tokens * q_width));
  std::vector<double> scores(static_cast<std::size_t>(c.max_len));
  std::vector<double> acc(static_cast<std::size_t>(c.head_dim));
  for (std::int64_t i = 0; i < tokens; ++i) {
    const std::int64_t keys = index[static_cast<std::size_t>(i)] + 1;
    const std::int64_t base = block_of[static_cast<std::size_t>(i)] * c.max_len;
    for (std::int64_t h = 0; h < c.q_heads; ++h) {
      const float* q = qkv.data() + i * qkv_width + h * c.head_dim;
      const std::int64_t g = h / group;  // GQA: q head h reads kv head h / group (HF repeat_kv)
      double max_score = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < keys; ++j) {
        const float* k = k_cache_.data() + ((base + j) * c.kv_heads + g) * c.head_dim;
        double dot = 0.0;
        for (std::int64_t d = 0; d < c.head_dim; ++d) dot += static_cast<double>(q[d]) * k[d];
        scores[static_cast<std::size_t>(j)] = dot * scaling;
        max_score = std::max(max_score, dot * scaling);
      }
      double sum = 0.0;
      for (std::int64_t j = 0; j < keys; ++j) {
        auto& s = scores[static_cast<std::size_t>(j)];
        s = std::exp(s - max_score);
        sum += s;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t j = 0; j < keys; ++j) {
        const float* v = v_cache_.data() + ((base + j) * c.kv_heads + g) * c.head_dim;
        const double p = scores[static_cast<std::size_t>(j)] / sum;
        for (std::int64_t d = 0; d < c.head_dim; ++d) acc[static_cast<std::size_t>(d)] += p * v[d];
      }
      for (std::int64_t d = 0; d < c.head_dim; ++d) {
        attn[static_cast<std::size_t>(i * q_width + h * c.head_dim + d)] = static_cast<float>(acc[static_cast<std::size_t>(d)]);
      }
    }
  }

  // Output projection (no bias in GLM).
  for (std::int64_t i = 0; i < tokens; ++i) {
    const float* a = attn.data() + i * q_width;
    for (std::int64_t o = 0; o < c.hidden_size; ++o) {
      const float* w = o_weight_.data() + o * q_width;
      double s = 0.0;
      for (std::int64_t k = 0; k < q_width; ++k) s += static_cast<double>(a[k]) * w[k];
      out[static_cast<std::size_t>(i * c.hidden_size + o)] = static_cast<float>(s);
    }
  }
  return positions;
}

GlmAttentionFixture GlmAttentionFixture::load(const std::string& dir, const GlmAttentionConfig& c) {
  GlmAttentionFixture f;
  const std::int64_t q = c.q_heads * c.head_dim;
  const std::int64_t kv = c.kv_heads * c.head_dim;
  const std::int64_t h = c.hidden_size;
  f.weights = {load_f32(dir, "q_proj.weight", {q, h}), load_f32(dir, "q_proj.bias", {q}),
               load_f32(dir, "k_proj.weight", {kv, h}), load_f32(dir, "k_proj.bias", {kv}),
               load_f32(dir, "v_proj.weight", {kv, h}), load_f32(dir, "v_proj.bias", {kv}),
               load_f32(dir, "o_proj.weight", {h, q})};
  // The token count comes from positions.npy; every other per-token file must agree with it.
  const cli::NpyArray positions = cli::read_npy(dir + "/positions.npy");
  if (positions.shape.size() != 1) fail(ErrorKind::io, dir + "/positions.npy: not 1-D");
  f.tokens = positions.shape[0];
  f.positions = load_i64(dir, "positions", f.tokens);
  f.seq_ids = load_i64(dir, "seq_ids", f.tokens);
  f.steps = load_i64(dir, "steps", f.tokens);
  f.hidden = load_f32(dir, "hidden", {f.tokens, h});
  f.output = load_f32(dir, "output", {f.tokens, h});
  f.k_proj = load_f32(dir, "k_proj", {f.tokens, kv});
  f.k_rope = load_f32(dir, "k_rope", {f.tokens, kv});
  return f;
}

std::vector<ScheduleStep> schedule_from_tokens(std::span<const std::int64_t> steps,
                                               std::span<const std::int64_t> seq_ids) {
  if (steps.size() != seq_ids.size()) fail(ErrorKind::invalid_argument, "steps and seq_ids differ in length");
  std::vector<ScheduleStep> out;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const bool new_step = out.empty() || steps[i] != steps[i - 1];
    if (!new_step && steps[i] < steps[i - 1]) fail(ErrorKind::invalid_argument, "steps must not decrease");
    if (new_step) out.push_back({{}, static_cast<std::int64_t>(i), 0});
    auto& s = out.back();
    if (!new_step && seq_ids[i] == seq_ids[i - 1]) {
      ++s.entries.back().new_tokens;
    } else {
      s.entries.push_back({seq_ids[i], 1});
    }
    ++s.count;
  }
  return out;
}

std::vector<ScheduleStep> default_schedule() {
  std::vector<std::int64_t> steps;
  std::vector<std::int64_t> seqs;
  auto add = [&](std::int64_t step, std::int64_t seq, std::int64_t n) {
    steps.insert(steps.end(), static_cast<std::size_t>(n), step);
    seqs.insert(seqs.end(), static_cast<std::size_t>(n), seq);
  };
  add(0, 0, 5);
  add(0, 1, 9);
  add(0, 2, 3);
  for (std::int64_t step = 1; step <= 32; ++step) {
    for (std::int64_t seq = 0; seq < (step > 10 ? 4 : 3); ++seq) add(step, seq, 1);
    if (step == 10) add(step, 3, 4);
  }
  return schedule_from_tokens(steps, seqs);
}

}  // namespace posenc::examples
