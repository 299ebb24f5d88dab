// `posenc run`: the main job — a real model's RoPE on a prefill batch, on the best device, verified and timed.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "command.hpp"
#include "device.hpp"
#include "options.hpp"
#include "posenc/error.hpp"
#include "verify.hpp"

namespace posenc::cli {
namespace {

/// Most Q and K elements `run` allocates (8 GiB in float32, on the host and again on a GPU).
constexpr std::int64_t max_run_elements = std::int64_t{1} << 31;

struct RunOptions {
  ModelOptions model;
  std::int64_t tokens = 4096;
  std::string dtype = "bf16";
  std::string device = "auto";
  int threads = 0;
  std::uint64_t seed = 1;
  int repeats = 9;
};

/// Lengths of the sequences of the batch: five prompts of different lengths in the ratio
/// 7:5:3:2:1 (fewer when there are fewer tokens), so positions restart inside the batch.
std::vector<std::int64_t> sequence_lengths(std::int64_t tokens) {
  constexpr std::int64_t weights[] = {7, 5, 3, 2, 1};
  constexpr std::int64_t weight_sum = 18;
  const std::int64_t count = std::min<std::int64_t>(std::size(weights), tokens);
  std::vector<std::int64_t> lengths;
  std::int64_t used = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    lengths.push_back(std::max<std::int64_t>(1, tokens * weights[i] / weight_sum));
    used += lengths.back();
  }
  lengths.front() += tokens - used;  // the rounding remainder goes to the longest prompt
  return lengths;
}

/// Deterministic uniform values in [-2, 2) from (seed, index): splitmix64, so a run is
/// reproducible on any platform and needs no state.
float random_value(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed * 0x9e3779b97f4a7c15ull + index + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1p-22f - 2.0f;
}

void fill_random(HostBatch& batch, std::uint64_t seed) {
  const std::int64_t q_count = batch.tokens * batch.q_heads * batch.head_dim;
  const std::int64_t k_count = batch.tokens * batch.k_heads * batch.head_dim;
  for (std::int64_t i = 0; i < q_count; ++i) {
    store_element(batch.dtype, batch.q.data(), i, random_value(seed, static_cast<std::uint64_t>(i)));
  }
  for (std::int64_t i = 0; i < k_count; ++i) {
    store_element(batch.dtype, batch.k.data(), i,
                  random_value(seed, static_cast<std::uint64_t>(q_count + i)));
  }
}

/// Tokens the float64 check visits: an even stride through the batch plus the first and last
/// token of every sequence (the largest angles sit at the ends).
std::vector<std::int64_t> sample_tokens(std::int64_t tokens, const std::vector<std::int64_t>& lengths) {
  constexpr std::int64_t target = 448;
  std::vector<std::int64_t> sample;
  const std::int64_t stride = std::max<std::int64_t>(1, (tokens + target - 1) / target);
  for (std::int64_t t = 0; t < tokens; t += stride) sample.push_back(t);
  std::int64_t start = 0;
  for (const std::int64_t length : lengths) {
    sample.push_back(start);
    sample.push_back(start + length - 1);
    start += length;
  }
  std::sort(sample.begin(), sample.end());
  sample.erase(std::unique(sample.begin(), sample.end()), sample.end());
  return sample;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Median seconds per apply over `repeats` samples. GPU samples hold enough back-to-back launches
/// (~2 ms) that one host synchronization does not dominate; CPU samples are one call each.
double median_apply_seconds(EngineRunner& runner, int repeats) {
  runner.apply();  // second warm-up: caches, thread pool, clocks
  runner.wait();
  int per_sample = 1;
  if (runner.kind() == DeviceKind::gpu) {
    const auto start = std::chrono::steady_clock::now();
    runner.apply();
    runner.wait();
    per_sample = static_cast<int>(std::clamp(2e-3 / std::max(seconds_since(start), 1e-7), 1.0, 1000.0));
  }
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < per_sample; ++i) runner.apply();
    runner.wait();
    samples.push_back(seconds_since(start) / per_sample);
  }
  runner.check();  // a fault in any timed launch fails the run
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

void print_field(const char* label, const std::string& text) {
  std::printf("%-10s %s\n", label, text.c_str());  // 11 columns: indent() aligns under the value
}

/// Multi-line text with its continuation lines aligned under print_field's value column.
std::string indent(const std::string& text) {
  std::string out;
  for (const char c : text) {
    out += c;
    if (c == '\n') out += std::string(11, ' ');
  }
  while (!out.empty() && (out.back() == ' ' || out.back() == '\n')) out.pop_back();
  return out;
}

std::string format(const char* fmt, double a, double b = 0.0, double c = 0.0) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, fmt, a, b, c);
  return buffer;
}

/// The batch `run` rotates: random Q and K for the config's head counts, positions of several
/// sequences of different lengths flattened (each 0..length-1), the same in every position stream
/// of a multi-axis spec (M-RoPE text tokens; ChatGLM-6B block positions counting like positions).
HostBatch make_batch(const ModelConfig& config, std::int64_t head_dim, std::int32_t streams, DType dtype,
                     std::int64_t tokens, const std::vector<std::int64_t>& lengths, std::uint64_t seed) {
  HostBatch batch;
  batch.dtype = dtype;
  batch.tokens = tokens;
  batch.q_heads = config.num_attention_heads;
  batch.k_heads = config.num_key_value_heads;
  batch.head_dim = head_dim;
  batch.position_type = IndexType::i64;
  batch.position_streams = streams;
  batch.allocate();
  auto* positions = reinterpret_cast<std::int64_t*>(batch.positions.data());
  for (std::int32_t s = 0; s < streams; ++s) {
    for (const std::int64_t length : lengths) {
      for (std::int64_t p = 0; p < length; ++p) *positions++ = p;
    }
  }
  fill_random(batch, seed);
  return batch;
}

/// Random QK-norm weights when `spec` normalises Q and K: around 1 for `rms` (the weight
/// multiplies), around 0 for `rms_one_plus` (Gemma multiplies by 1 + w).
void add_norm_weights(HostBatch& batch, const RopeSpec& spec, std::uint64_t seed) {
  if (!spec.qk_norm.enabled()) return;
  const std::int64_t width = spec.qk_norm_width();
  const float center = spec.qk_norm.kind == QkNormKind::rms ? 1.0f : 0.0f;
  for (std::vector<std::byte>* w : {&batch.q_norm_weight, &batch.k_norm_weight}) {
    w->assign(static_cast<std::size_t>(width * size_of(batch.dtype)), std::byte{0});
    for (std::int64_t j = 0; j < width; ++j)
      store_element(batch.dtype, w->data(), j, center + 0.25f * random_value(seed, static_cast<std::uint64_t>(j)));
    ++seed;
  }
}

std::string shape_text(std::int64_t a, std::int64_t b, std::int64_t c) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + "]";
}

/// Applies, verifies and times one layer type's spec on `input`; returns the exit code.
int run_layer(const ResolvedModel& model, const RunOptions& options, const DeviceChoice& device,
              const HostBatch& input, const std::vector<std::int64_t>& lengths) {
  const std::int64_t max_position = *std::max_element(lengths.begin(), lengths.end()) - 1;
  print_field("layer", message_excerpt(model.layer_type));
  print_field("spec", indent(model.spec.describe()));

  HostBatch batch = input;  // the engine overwrites this copy; the reference reads `input`
  add_norm_weights(batch, model.spec, 0x5eed);
  EngineRunner runner(model.spec, device, options.threads, batch);
  print_field("device", runner.description() + " — " + device.reason);
  std::fflush(stdout);

  // First call: warm-up, and the result that is verified (later timed calls rotate it further).
  runner.apply();
  runner.check();
  runner.download();
  const std::vector<std::int64_t> sample = sample_tokens(batch.tokens, lengths);
  const FrequencyTable table = compute_frequencies(with_host_tables(model.spec), max_position + 1);
  const VerifyStats stats = verify_sample(model.spec, table, input, batch, sample);  // batch holds the weights
  const bool passed = stats.failures == 0;
  print_field("verify", std::to_string(sample.size()) + " tokens x " +
                            std::to_string(batch.q_heads + batch.k_heads) + " heads (" +
                            std::to_string(stats.values) + " values) vs float64: max abs error " +
                            format("%.3g", stats.max_abs_error) + ", max " +
                            format("%.2f", stats.max_ulps) + " ulp of " + to_string(batch.dtype));
  print_field("", "bound: " + error_bound_text(model.spec));
  print_field("", format("worst: %.2f of the bound: ", stats.max_bound_ratio) +
                      (passed ? "PASS" : "FAIL (" + std::to_string(stats.failures) + " values over)"));
  if (!passed) print_field("", "worst at " + stats.worst);
  std::fflush(stdout);

  const double seconds = median_apply_seconds(runner, options.repeats);
  const double bytes = 2.0 * static_cast<double>(batch.q_bytes() + batch.k_bytes());
  print_field("time", format("%.4g ms per apply (median of %.0f, after warm-up)", seconds * 1e3,
                             options.repeats) +
                          format(", %.4g MB moved (2 x (Q + K)), %.4g GB/s", bytes / 1e6,
                                 bytes / seconds / 1e9));
  const std::int64_t rotary = model.spec.rotary();
  if (rotary < batch.head_dim) {
    // Dims outside the window pass through, so an in-place call need not touch them: the figure
    // above then overstates the bandwidth achieved; this one does not.
    const double window_bytes = bytes * static_cast<double>(rotary) / static_cast<double>(batch.head_dim);
    print_field("", format("rotary window %.0f of %.0f dims: only %.4g MB", static_cast<double>(rotary),
                           static_cast<double>(batch.head_dim), window_bytes / 1e6) +
                        format(" must move in place, %.4g GB/s", window_bytes / seconds / 1e9));
  }
  if (!passed) {
    std::fprintf(stderr, "posenc run: error: layer type %s: %lld of %lld values exceed the bound (%s)\n",
                 message_excerpt(model.layer_type).c_str(), static_cast<long long>(stats.failures),
                 static_cast<long long>(stats.values), stats.worst.c_str());
    return exit_failure;
  }
  return exit_ok;
}

int run(const RunOptions& options) {
  const ModelConfig config = load_config_or_default(options.model.config);
  // A layer-typed model (Gemma 3: full and sliding attention) runs every layer type unless one is named.
  std::vector<std::string> layer_types = {options.model.layer_type};
  if (options.model.layer_type.empty() && config.rope.size() > 1 && !config.rope.contains("default")) {
    layer_types.clear();
    for (const auto& entry : config.rope) layer_types.push_back(entry.first);
  }
  std::vector<ResolvedModel> models;
  for (const std::string& layer_type : layer_types) {
    ModelOptions chosen = options.model;
    chosen.layer_type = layer_type;
    models.push_back(select_spec(config, chosen));
  }
  const DType dtype = parse_dtype_option(options.dtype);
  // The batch is allocated on the host (and the device): bound it before allocating anything.
  const std::int64_t heads = config.num_attention_heads + config.num_key_value_heads;  // <= 2 * max_heads
  const std::int64_t head_dim = models.front().spec.head_dim;                          // <= max_head_dim
  if (options.tokens > max_run_elements / heads / head_dim) {
    usage_error("--tokens " + std::to_string(options.tokens) + " x (" + std::to_string(config.num_attention_heads) +
                " + " + std::to_string(config.num_key_value_heads) + " heads) x head_dim " + std::to_string(head_dim) +
                " exceeds the limit of " + std::to_string(max_run_elements) +
                " Q and K elements of `run` (max_run_elements); lower --tokens");
  }
  const DeviceChoice device = choose_device(options.device);

  const std::vector<std::int64_t> lengths = sequence_lengths(options.tokens);
  const HostBatch input = make_batch(config, models.front().spec.head_dim,
                                     models.front().spec.position_streams(), dtype, options.tokens, lengths,
                                     options.seed);
  std::string sequences;
  for (const std::int64_t length : lengths) sequences += (sequences.empty() ? "" : " ") + std::to_string(length);

  std::printf("posenc run: apply RoPE to a prefill batch, verify against float64, time it\n");
  print_field("config", config.source + " (model_type " + message_excerpt(config.model_type) + ")");
  print_field("batch", std::to_string(input.tokens) + " tokens in " + std::to_string(lengths.size()) +
                           " sequences (" + sequences + "), positions 0.." +
                           std::to_string(*std::max_element(lengths.begin(), lengths.end()) - 1));
  print_field("tensors", "Q " + shape_text(input.tokens, input.q_heads, input.head_dim) + ", K " +
                             shape_text(input.tokens, input.k_heads, input.head_dim) + " " +
                             to_string(dtype) + ", uniform in [-2, 2), seed " + std::to_string(options.seed));
  int status = exit_ok;
  for (const ResolvedModel& model : models) {
    status = std::max(status, run_layer(model, options, device, input, lengths));
  }
  return status;
}

Runner setup(CLI::App& app) {
  auto options = std::make_shared<RunOptions>();
  add_model_options(app, options->model, /*config_required=*/false, /*with_numerics=*/true);
  app.add_option("--tokens,-t", options->tokens, "tokens in the batch (all sequences together)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--dtype", options->dtype, std::string("activation dtype: ") + dtype_help)
      ->capture_default_str();
  add_device_option(app, options->device);
  app.add_option("--threads", options->threads, "CPU engine threads (0 = all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  app.add_option("--seed", options->seed, "seed of the random Q and K")->capture_default_str();
  app.add_option("--repeats", options->repeats, "timed calls (the median is reported)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  return [options] { return run(*options); };
}

[[maybe_unused]] const bool registered = register_command(
    {"run",
     "The main job: apply a model's RoPE (default: embedded GLM-4-9B-chat) to a random prefill batch on "
     "the best device, verify against a float64 reference, report time and GB/s.",
     setup});

}  // namespace
}  // namespace posenc::cli
