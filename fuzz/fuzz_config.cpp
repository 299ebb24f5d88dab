// Fuzz target: the config parser (config.json text -> ModelConfig / RopeSpec) and everything a parsed spec feeds.
//
// Properties: parse_model_config either returns or throws posenc::Error of kind config or
// unsupported (never another exception, never a crash); every spec it returns passes validate();
// its frequency table, at construction and for the largest position the spec allows, has finite
// positive inverse frequencies and a finite attention factor (a config that would make them
// non-finite must be rejected when it is parsed); describe() works; the CPU engine accepts the
// spec (or refuses it with a posenc::Error) and rotates a small finite Q at positions 0, 1 and the
// largest allowed into finite values equal to apply_reference's, bit for bit.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"

namespace {

using posenc::fuzz::require;

std::string where(const std::string& layer) { return "layer type '" + layer + "': "; }

void check_table(const posenc::RopeSpec& spec, const posenc::FrequencyTable& table, const std::string& context) {
  require(static_cast<std::int64_t>(table.inv_freq.size()) == spec.frequency_dim() / 2,
          context + "inv_freq has the wrong length");
  for (std::size_t i = 0; i < table.inv_freq.size(); ++i) {
    const float f = table.inv_freq[i];
    require(std::isfinite(f) && f >= 0.0f, context + "inv_freq[" + std::to_string(i) + "] = " + std::to_string(f));
  }
  require(std::isfinite(table.attention_factor), context + "attention factor " + std::to_string(table.attention_factor));
}

/// Rotates one token per position through the engine and the reference (normalising first where the
/// spec has a QK norm); both must agree and be finite.
void check_rotation(const posenc::RopeSpec& spec, const std::string& context) {
  const std::int64_t last = spec.position_limit - 1;
  const std::vector<std::int64_t> positions{0, 1, last};
  const std::int64_t tokens = static_cast<std::int64_t>(positions.size());
  const std::int32_t streams = spec.position_streams();
  std::vector<std::int64_t> stream_major;
  for (std::int32_t s = 0; s < streams; ++s) stream_major.insert(stream_major.end(), positions.begin(), positions.end());
  const std::int64_t elements = tokens * spec.head_dim;
  std::vector<float> q(static_cast<std::size_t>(elements));
  for (std::int64_t i = 0; i < elements; ++i) q[static_cast<std::size_t>(i)] = 0.5f + static_cast<float>(i % 7) * 0.25f;
  std::vector<float> expected = q;

  // A spec with a QK norm (Qwen3, Gemma 3, GLM-4.5 configs) normalises Q first: it needs weights.
  std::vector<float> norm_weight(static_cast<std::size_t>(spec.head_dim));
  for (std::size_t i = 0; i < norm_weight.size(); ++i) norm_weight[i] = 0.75f + static_cast<float>(i % 5) * 0.125f;

  posenc::RopeArgs args;
  args.positions = {stream_major.data(), posenc::IndexType::i64, tokens, streams, tokens};
  args.q = posenc::TensorView::contiguous(expected.data(), posenc::DType::f32, tokens, 1, spec.head_dim);
  if (spec.qk_norm.enabled()) args.norm.q = norm_weight.data();
  try {
    posenc::apply_reference(spec, args);
  } catch (const posenc::Error& e) {
    require(false, context + "apply_reference refused a parsed spec at positions 0, 1, " + std::to_string(last) +
                       ": " + e.what());
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    require(std::isfinite(expected[i]), context + "apply_reference wrote a non-finite value at element " + std::to_string(i));
  }
  try {
    const posenc::CpuEngine engine(spec, posenc::CpuOptions{1});
    args.q.data = q.data();
    engine.apply(args);
  } catch (const posenc::Error& e) {
    require(false, context + "CpuEngine refused a parsed spec: " + e.what());
  }
  require(q == expected, context + "CpuEngine differs from apply_reference");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  posenc::ModelConfig config;
  try {
    config = posenc::parse_model_config(text, "fuzz.json");
  } catch (const posenc::Error& e) {
    require(e.kind() == posenc::ErrorKind::config || e.kind() == posenc::ErrorKind::unsupported,
            std::string("parse_model_config threw kind ") + to_string(e.kind()) + ": " + e.what());
    return 0;
  }
  require(!config.rope.empty(), "a parsed config has no spec");
  for (const auto& [layer, spec] : config.rope) {
    const std::string context = where(layer);
    try {
      spec.validate();
    } catch (const posenc::Error& e) {
      require(false, context + "a parsed spec fails validate(): " + e.what());
    }
    (void)spec.describe();
    check_table(spec, posenc::compute_frequencies(spec), context + "init table: ");
    check_table(spec, posenc::compute_frequencies(spec, spec.position_limit), context + "table at position_limit: ");
    check_rotation(spec, context);
  }
  return 0;
}
