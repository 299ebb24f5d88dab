// `posenc apply`: .npy in, .npy out — rotate someone's Q/K dumps with a model's RoPE to compare against them.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "device.hpp"
#include "elements.hpp"
#include "npy.hpp"
#include "options.hpp"
#include "posenc/error.hpp"

namespace posenc::cli {
namespace {

struct ApplyOptions {
  ModelOptions model;
  std::string q_path;
  std::string k_path;
  std::string positions_path;
  std::string out_q_path;
  std::string out_k_path;
  std::string dtype;  // empty: from the Q file
  std::string device = "auto";
  int threads = 0;
};

NpyArray read_input(const std::string& path) {
  try {
    return read_npy(path);
  } catch (const Error& e) {
    usage_error(e.what());  // the message starts with the path
  }
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (const std::int64_t d : shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

/// The activation dtype a float array holds, or nothing for '<u2' (bfloat16 bits only when the
/// user says so) and integer arrays.
std::optional<DType> float_dtype(NpyType type) {
  switch (type) {
    case NpyType::f32:
      return DType::f32;
    case NpyType::f16:
      return DType::f16;
    case NpyType::bf16:
      return DType::bf16;
    default:
      return std::nullopt;
  }
}

/// The element type of `array` read as activations of `dtype`; usage error when it is no float
/// type ('<u2' counts as bfloat16 bits only under --dtype bf16).
DType source_dtype(const NpyArray& array, DType dtype, const std::string& path) {
  if (array.type == NpyType::u16) {
    if (dtype == DType::bf16) return DType::bf16;
    usage_error(path + ": '<u2' arrays are read as bfloat16 bits, which needs --dtype bf16");
  }
  if (const std::optional<DType> t = float_dtype(array.type)) return *t;
  usage_error(path + ": dtype " + npy_descr(array.type) + " is not a floating-point activation type");
}

/// Heads of a [T, H, D] or [T, H*D] array with D = head_dim; usage error otherwise.
std::int64_t heads_of(const NpyArray& array, std::int64_t head_dim, const std::string& path) {
  const auto& s = array.shape;
  if (s.size() == 3 && s[2] == head_dim) return s[1];
  if (s.size() == 2 && s[1] % head_dim == 0) return s[1] / head_dim;
  usage_error(path + ": shape " + shape_text(s) + " is neither [tokens, heads, " +
              std::to_string(head_dim) + "] nor [tokens, heads * " + std::to_string(head_dim) +
              "] (head_dim " + std::to_string(head_dim) + " from the config)");
}

/// Copies `array` into `out` as `dtype`, rounding to nearest even when the file holds a wider type.
void convert_into(const NpyArray& array, DType from, DType dtype, std::vector<std::byte>& out) {
  const std::int64_t n = array.count();
  if (from == dtype) {
    std::memcpy(out.data(), array.data.data(), static_cast<std::size_t>(n * size_of(dtype)));
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    store_element(dtype, out.data(), i, load_element(from, array.data.data(), i));
  }
}

/// Where the output of `dtype` goes in a .npy file: bfloat16 as '<u2' bits (npy.hpp).
NpyType output_type(DType dtype) {
  return dtype == DType::f32 ? NpyType::f32 : dtype == DType::f16 ? NpyType::f16 : NpyType::bf16;
}

int apply(const ApplyOptions& options) {
  const ResolvedModel model = resolve_model(options.model);
  const std::int64_t head_dim = model.spec.head_dim;

  const NpyArray q = read_input(options.q_path);
  std::optional<NpyArray> k;
  if (!options.k_path.empty()) k = read_input(options.k_path);
  const NpyArray positions = read_input(options.positions_path);

  DType dtype;
  if (!options.dtype.empty()) {
    dtype = parse_dtype_option(options.dtype);
  } else if (const std::optional<DType> t = float_dtype(q.type)) {
    dtype = *t;
  } else {
    usage_error(options.q_path + ": dtype " + npy_descr(q.type) +
                " does not say the activation dtype; pass --dtype (bf16 for bfloat16 bits in '<u2')");
  }
  const DType q_from = source_dtype(q, dtype, options.q_path);
  const DType k_from = k ? source_dtype(*k, dtype, options.k_path) : dtype;

  HostBatch batch;
  batch.dtype = dtype;
  batch.head_dim = head_dim;
  if (q.shape.empty()) usage_error(options.q_path + ": a 0-d array has no tokens");
  batch.tokens = q.shape[0];
  if (batch.tokens == 0) usage_error(options.q_path + ": shape " + shape_text(q.shape) + " has no tokens");
  batch.q_heads = heads_of(q, head_dim, options.q_path);
  if (k) {
    batch.k_heads = heads_of(*k, head_dim, options.k_path);
    if (k->shape[0] != batch.tokens) {
      usage_error(options.k_path + ": " + std::to_string(k->shape[0]) + " tokens, but " +
                  options.q_path + " has " + std::to_string(batch.tokens));
    }
  }
  if (positions.type != NpyType::i32 && positions.type != NpyType::i64) {
    usage_error(options.positions_path + ": positions must be <i4 or <i8, not " +
                npy_descr(positions.type));
  }
  if (positions.count() != batch.tokens) {
    usage_error(options.positions_path + ": " + std::to_string(positions.count()) +
                " positions (shape " + shape_text(positions.shape) + "), but " + options.q_path +
                " has " + std::to_string(batch.tokens) + " tokens (one position per token)");
  }
  batch.position_type = positions.type == NpyType::i32 ? IndexType::i32 : IndexType::i64;
  batch.allocate();
  convert_into(q, q_from, dtype, batch.q);
  if (k) convert_into(*k, k_from, dtype, batch.k);
  batch.positions = positions.data;

  const DeviceChoice device = choose_device(options.device);
  EngineRunner runner(model.spec, device, options.threads, batch);
  runner.apply();
  runner.check();
  runner.download();

  write_npy(options.out_q_path, output_type(dtype), q.shape, batch.q);
  if (k) write_npy(options.out_k_path, output_type(dtype), k->shape, batch.k);
  std::printf("posenc apply: %lld tokens, Q %s%s %s, %s layer type %s, numerics %s, on %s (%s) -> %s%s\n",
              static_cast<long long>(batch.tokens), shape_text(q.shape).c_str(),
              k ? (", K " + shape_text(k->shape)).c_str() : "", to_string(dtype),
              model.config.source.c_str(), model.layer_type.c_str(), to_string(model.spec.numerics),
              runner.description().c_str(), device.reason.c_str(), options.out_q_path.c_str(),
              k ? (", " + options.out_k_path).c_str() : "");
  return exit_ok;
}

Runner setup(CLI::App& app) {
  auto options = std::make_shared<ApplyOptions>();
  add_model_options(app, options->model, /*config_required=*/true, /*with_numerics=*/true);
  app.add_option("--q", options->q_path, "queries .npy, [tokens, heads, head_dim] or [tokens, heads*head_dim]")
      ->required();
  CLI::Option* k = app.add_option("--k", options->k_path, "keys .npy (optional), same layout as --q");
  app.add_option("--positions", options->positions_path, "positions .npy, <i4 or <i8, one per token")
      ->required();
  app.add_option("--out-q", options->out_q_path, "rotated queries .npy (bf16 is written as <u2 bits)")
      ->required();
  CLI::Option* out_k = app.add_option("--out-k", options->out_k_path, "rotated keys .npy");
  k->needs(out_k);
  out_k->needs(k);
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
