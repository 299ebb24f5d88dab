// `posenc apply`: .npy in, .npy out — rotate someone's Q/K dumps with a model's RoPE to compare against them.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "command.hpp"
#include "device.hpp"
#include "npy.hpp"
#include "options.hpp"
#include "output.hpp"
#include "posenc/error.hpp"
#include "tensors.hpp"

namespace posenc::cli {
namespace {

struct ApplyOptions {
  ModelOptions model;
  std::string q_path;
  std::string k_path;
  std::string positions_path;
  std::string out_q_path;
  std::string out_k_path;
  std::string q_norm_weight_path;  // the QK-norm weights, when the config has the stage
  std::string k_norm_weight_path;
  std::string dtype;  // empty: from the Q file
  std::string device = "auto";
  int threads = 0;
};

/// The QK-norm weights of a spec with the stage: .npy vectors of the norm's width, converted to
/// the activation dtype as the inputs are; usage error when missing or misshapen.
void load_norm_weights(const RopeSpec& spec, const ApplyOptions& options, HostBatch& batch) {
  const bool given = !options.q_norm_weight_path.empty() || !options.k_norm_weight_path.empty();
  if (!spec.qk_norm.enabled()) {
    if (given) usage_error("--q-norm-weight/--k-norm-weight given, but the spec has no QK norm");
    return;
  }
  const bool has_k = batch.k_heads > 0;
  if (options.q_norm_weight_path.empty() || (has_k && options.k_norm_weight_path.empty())) {
    usage_error(std::string("the config's spec normalises Q and K before rotating (QK norm ") + to_string(spec.qk_norm.kind) +
                "): pass --q-norm-weight" + (has_k ? " and --k-norm-weight" : "") +
                " (.npy vectors of the norm's width, e.g. the model's q_norm.weight), or --no-qk-norm to rotate only");
  }
  const std::int64_t width = spec.qk_norm_width();
  auto load = [&](const std::string& path, std::vector<std::byte>& out) {
    const NpyArray w = read_input(path);
    if (w.shape.size() != 1 || w.shape[0] != width) {
      usage_error(path + ": shape " + shape_text(w.shape) + " is not [" + std::to_string(width) +
                  "] (the QK norm's width)");
    }
    out.assign(static_cast<std::size_t>(width * size_of(batch.dtype)), std::byte{0});
    convert_into(w, source_dtype(w, batch.dtype, path), batch.dtype, out);
  };
  load(options.q_norm_weight_path, batch.q_norm_weight);
  if (has_k) load(options.k_norm_weight_path, batch.k_norm_weight);
}

int apply(const ApplyOptions& options) {
  if (!options.out_k_path.empty() && same_file(options.out_q_path, options.out_k_path)) {
    usage_error("--out-q and --out-k name the same file (" + options.out_q_path + ")");
  }
  const ResolvedModel model = resolve_model(options.model);
  const std::int64_t head_dim = model.spec.head_dim;

  LoadedInputs loaded = load_inputs({options.q_path, options.k_path, options.positions_path, options.dtype},
                                    head_dim, model.spec.position_streams());
  HostBatch& batch = loaded.batch;
  const DType dtype = batch.dtype;
  const bool has_k = batch.k_heads > 0;
  load_norm_weights(model.spec, options, batch);

  const DeviceChoice device = choose_device(options.device);
  EngineRunner runner(model.spec, device, options.threads, batch);
  runner.apply();
  runner.check();
  runner.download();

  // Both outputs or neither: a failure leaves every file as it was, --q too when --out-q names it.
  const std::vector<std::byte> q_header = encode_npy_header(output_type(dtype), loaded.q_shape);
  const std::vector<std::byte> k_header =
      has_k ? encode_npy_header(output_type(dtype), loaded.k_shape) : std::vector<std::byte>{};
  OutputFiles outputs;
  outputs.stage(options.out_q_path, {q_header, batch.q});
  if (has_k) outputs.stage(options.out_k_path, {k_header, batch.k});
  outputs.commit();
  std::printf("posenc apply: %lld tokens, Q %s%s %s, %s layer type %s, numerics %s, on %s (%s) -> %s%s\n",
              static_cast<long long>(batch.tokens), shape_text(loaded.q_shape).c_str(),
              has_k ? (", K " + shape_text(loaded.k_shape)).c_str() : "", to_string(dtype),
              model.config.source.c_str(), message_excerpt(model.layer_type).c_str(), to_string(model.spec.numerics),
              runner.description().c_str(), device.reason.c_str(), options.out_q_path.c_str(),
              has_k ? (", " + options.out_k_path).c_str() : "");
  return exit_ok;
}

Runner setup(CLI::App& app) {
  auto options = std::make_shared<ApplyOptions>();
  add_model_options(app, options->model, /*config_required=*/true, /*with_numerics=*/true);
  app.add_option("--q", options->q_path, "queries .npy, [tokens, heads, head_dim] or [tokens, heads*head_dim]")
      ->required();
  CLI::Option* k = app.add_option("--k", options->k_path, "keys .npy (optional), same layout as --q");
  app.add_option("--positions", options->positions_path,
                 "positions .npy, <i4 or <i8: one per token ([T] or [1, T]); [S, T] for RoPE with S "
                 "position streams (M-RoPE)")
      ->required();
  app.add_option("--out-q", options->out_q_path, "rotated queries .npy (bf16 is written as <u2 bits)")
      ->required();
  CLI::Option* out_k = app.add_option("--out-k", options->out_k_path, "rotated keys .npy");
  k->needs(out_k);
  out_k->needs(k);
  app.add_option("--q-norm-weight", options->q_norm_weight_path,
                 "QK norm: Q's weight .npy [width] (configs with the stage: Qwen3, Gemma 3, GLM-4.5)");
  app.add_option("--k-norm-weight", options->k_norm_weight_path, "QK norm: K's weight .npy [width]");
  app.add_option("--dtype", options->dtype,
                 std::string("activation dtype (default: the dtype of --q): ") + dtype_help);
  add_device_option(app, options->device);
  app.add_option("--threads", options->threads, "CPU engine threads (0 = all cores)")
      ->check(CLI::Range(0, 4096));
  return [options] { return apply(*options); };
}

[[maybe_unused]] const bool registered = register_command(
    {"apply",
     "Apply a model's RoPE to Q (and K) read from .npy files at the positions of a .npy file, and "
     "write the results as .npy.",
     setup});

}  // namespace
}  // namespace posenc::cli
