// `posenc check`: compare posenc with a golden fixture or a user's own .npy dump and name the first mismatching element.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "command.hpp"
#include "device.hpp"
#include "npy.hpp"
#include "options.hpp"
#include "posenc/error.hpp"
#include "posenc/model_config.hpp"
#include "tensors.hpp"

namespace posenc::cli {
namespace {

namespace fs = std::filesystem;

struct CheckOptions {
  std::string fixture;  ///< fixture mode: a tests/golden/<family> directory
  std::string root;     ///< where the fixture's config path is relative to
  ModelOptions model;
  InputPaths inputs;
  std::string expect_q;
  std::string expect_k;
  std::string inv_freq;
  std::string device = "auto";
  int threads = 0;
  std::int64_t tolerance_ulps = 0;
};

/// Largest --tolerance-ulps: the distance from -inf to +inf in float32 is about 2^32 ulps, so a
/// larger value could only mean a wrapped or saturated number.
constexpr std::int64_t max_tolerance_ulps = std::int64_t{1} << 32;

/// Most position streams a spec takes (RopeSpec: t, h, w and a fourth M-RoPE section).
constexpr std::int64_t max_position_streams = 4;

// ------------------------------------------------------------------------------------------------
// Shared by both modes
// ------------------------------------------------------------------------------------------------

/// The float32 values of a 1-D '<f4' inv_freq file; usage error otherwise.
std::vector<float> read_inv_freq(const std::string& path) {
  const NpyArray a = read_input(path);
  if (a.type != NpyType::f32 || a.shape.size() != 1 || a.count() == 0) {
    usage_error(path + ": inv_freq must be a 1-D '<f4' array with at least one value, not " + npy_descr(a.type) +
                " " + shape_text(a.shape));
  }
  std::vector<float> v(static_cast<std::size_t>(a.count()));
  std::memcpy(v.data(), a.data.data(), v.size() * sizeof(float));
  return v;
}

/// float32 ulps between two inv_freq entries (they are positive, so the bits order them).
std::int64_t float_ulps(float a, float b) {
  std::int32_t ia;
  std::int32_t ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return std::llabs(static_cast<std::int64_t>(ia) - ib);
}

/// `spec` with `inv_freq` fed in as a table, keeping the attention factor the scheme would use
/// (a table scheme has none of its own).
RopeSpec with_table(const RopeSpec& spec, std::vector<float> inv_freq, double attention_factor) {
  RopeSpec fed = spec;
  fed.scaling = Scaling::table;
  fed.params.inv_freq = std::move(inv_freq);
  fed.attention_factor = attention_factor;
  return fed;
}

/// The call's seq_len, its largest position + 1, after checking that every int32 or int64
/// position in `bytes` lies in [0, spec.position_limit): a usage error naming the file, the
/// element and the limit otherwise (the frequency table of a dynamic or longrope spec depends on
/// seq_len, so it is formed before the engine sees the positions).
std::int64_t checked_seq_len(IndexType type, const std::vector<std::byte>& bytes, const RopeSpec& spec,
                             const std::string& path) {
  std::int64_t m = 0;
  const std::int64_t count = static_cast<std::int64_t>(bytes.size()) / size_of(type);
  for (std::int64_t i = 0; i < count; ++i) {
    std::int64_t p;
    if (type == IndexType::i32) {
      std::int32_t p32;
      std::memcpy(&p32, bytes.data() + i * 4, 4);
      p = p32;
    } else {
      std::memcpy(&p, bytes.data() + i * 8, 8);
    }
    if (p < 0 || p >= spec.position_limit) {
      usage_error(path + ": position " + std::to_string(p) + " at element " + std::to_string(i) +
                  " is outside [0, " + std::to_string(spec.position_limit) + ") (the spec's position_limit)");
    }
    m = std::max(m, p);
  }
  return m + 1;  // m < position_limit <= INT64_MAX
}

/// Rotates `batch` in place on `device` and brings the result back to the host.
std::string rotate(const RopeSpec& spec, const DeviceChoice& device, int threads, HostBatch& batch) {
  EngineRunner runner(spec, device, threads, batch);
  runner.apply();
  runner.check();
  runner.download();
  return runner.description();
}

std::string ulps_text(std::int64_t ulps, DType dtype) {
  if (ulps == std::numeric_limits<std::int64_t>::max()) return "NaN against a number";
  return std::to_string(ulps) + " ulp" + (ulps == 1 ? "" : "s") + " of " + to_string(dtype);
}

std::string format(const char* fmt, double value) {
  char text[64];
  std::snprintf(text, sizeof text, fmt, value);
  return text;
}

// ------------------------------------------------------------------------------------------------
// Fixture mode: tests/golden/<family> written by scripts/golden/generate.py
// ------------------------------------------------------------------------------------------------

/// The .npy files of one dtype of a fixture case.
struct FixtureFiles {
  std::string q, k, q_out, k_out;
};

struct FixtureCase {
  std::string name;
  std::string positions;
  std::string inv_freq;
  double attention_factor = 1.0;
  std::vector<std::pair<std::string, FixtureFiles>> dtypes;  ///< dtype name ("bfloat16") and its files
};

/// meta.json of a golden fixture (scripts/golden/generate.py), every field type-checked.
struct FixtureMeta {
  std::string config;
  std::string layer_type = "default";
  std::string family = "?", transformers = "?", torch = "?", cpu_capability = "?";
  std::vector<FixtureCase> cases;
};

/// Reads meta.json under the config limits (size, nesting depth) and checks the type of every
/// field it uses: any problem is a usage error naming the file and the key, with the value as a
/// short escaped excerpt.
FixtureMeta read_meta(const fs::path& dir) {
  using json = nlohmann::json;
  const fs::path path = dir / "meta.json";
  const std::string name = path.string();
  std::error_code ec;
  const std::uintmax_t size = fs::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) usage_error(name + ": cannot be read (--fixture takes a tests/golden/<family> directory)");
  if (size > static_cast<std::uintmax_t>(max_config_bytes)) {
    usage_error(name + ": " + std::to_string(size) + " bytes exceeds the limit of " +
                std::to_string(max_config_bytes) + " bytes (max_config_bytes)");
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const json::parser_callback_t limit_depth = [&name](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_config_depth) {
      usage_error(name + ": JSON nested deeper than the limit of " + std::to_string(max_config_depth) +
                  " levels (max_config_depth)");
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, limit_depth);
  } catch (const json::exception& e) {
    usage_error(name + ": not valid JSON: " + message_excerpt(e.what(), 200));
  }

  const auto bad = [&](const std::string& key, const json* value, const std::string& expected) {
    usage_error(name + ": key '" + message_excerpt(key) + "' = " +
                (value ? message_excerpt(value->dump(-1, ' ', false, json::error_handler_t::replace))
                       : std::string("(not given)")) +
                ": expected " + expected);
  };
  const auto member = [&](const json& object, const std::string& key, const std::string& where) -> const json* {
    if (!object.is_object()) bad(where, &object, "a JSON object");
    const auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
  };
  const auto string = [&](const json& object, const std::string& key, const std::string& where, bool required,
                          std::string& out) {
    const json* v = member(object, key, where);
    const std::string full = where.empty() ? key : where + "." + key;
    if (v == nullptr && !required) return;
    if (v == nullptr || !v->is_string()) bad(full, v, "a string");
    out = v->get<std::string>();
  };

  FixtureMeta meta;
  string(root, "config", "", true, meta.config);
  string(root, "layer_type", "", false, meta.layer_type);
  string(root, "family", "", false, meta.family);
  string(root, "transformers", "", false, meta.transformers);
  string(root, "torch", "", false, meta.torch);
  string(root, "cpu_capability", "", false, meta.cpu_capability);
  const json* cases = member(root, "cases", "");
  if (cases == nullptr || !cases->is_array()) bad("cases", cases, "a list of cases");
  for (std::size_t i = 0; i < cases->size(); ++i) {
    const json& c = (*cases)[i];
    const std::string where = "cases[" + std::to_string(i) + "]";
    FixtureCase fc;
    fc.name = "?";
    string(c, "name", where, false, fc.name);
    string(c, "positions", where, true, fc.positions);
    string(c, "inv_freq", where, true, fc.inv_freq);
    const json* af = member(c, "attention_factor", where);
    if (af == nullptr || !af->is_number()) bad(where + ".attention_factor", af, "a number");
    fc.attention_factor = af->get<double>();
    const json* dtypes = member(c, "dtypes", where);
    if (dtypes == nullptr || !dtypes->is_object()) bad(where + ".dtypes", dtypes, "an object of dtypes");
    for (const auto& [dtype, files] : dtypes->items()) {
      const std::string at = where + ".dtypes." + dtype;
      FixtureFiles f;
      string(files, "q", at, true, f.q);
      string(files, "k", at, true, f.k);
      string(files, "q_out", at, true, f.q_out);
      string(files, "k_out", at, true, f.k_out);
      fc.dtypes.emplace_back(dtype, std::move(f));
    }
    meta.cases.push_back(std::move(fc));
  }
  return meta;
}

/// meta.json names the config relative to the repository root: --root, else the path as given
/// (run from the root), else the fixture's <root>/tests/golden/<family> layout.
fs::path resolve_fixture_config(const fs::path& dir, const std::string& config, const std::string& root) {
  if (!root.empty()) return fs::path(root) / config;
  if (fs::exists(config)) return config;
  const fs::path from_layout = dir / ".." / ".." / ".." / config;
  if (fs::exists(from_layout)) return from_layout.lexically_normal();
  usage_error("fixture config " + config + " found neither from the current directory nor at " +
              from_layout.lexically_normal().string() + "; pass --root <repository root>");
}

/// One fixture case's tensors of one dtype, loaded and checked against the config's head_dim.
struct FixtureTensors {
  DType dtype;
  std::int64_t tokens = 0;
  std::int64_t q_heads = 0;
  std::int64_t k_heads = 0;
  std::vector<std::byte> q, k, q_out, k_out;
};

std::vector<std::byte> load_as(const fs::path& path, DType dtype, std::int64_t head_dim,
                               std::int64_t& tokens, std::int64_t& heads) {
  const std::string name = path.string();
  const NpyArray a = read_input(name);
  if (a.shape.size() != 3 || a.shape[2] != head_dim) {
    usage_error(name + ": shape " + shape_text(a.shape) + " is not [tokens, heads, " +
                std::to_string(head_dim) + "] (head_dim from the fixture's config)");
  }
  if ((tokens != 0 && a.shape[0] != tokens) || (heads != 0 && a.shape[1] != heads)) {
    usage_error(name + ": shape " + shape_text(a.shape) + " differs from its input's");
  }
  tokens = a.shape[0];
  heads = a.shape[1];
  std::vector<std::byte> out(static_cast<std::size_t>(a.count() * size_of(dtype)));
  convert_into(a, source_dtype(a, dtype, name), dtype, out);
  return out;
}

FixtureTensors load_fixture_tensors(const fs::path& dir, const FixtureFiles& files, DType dtype,
                                    std::int64_t head_dim) {
  FixtureTensors t{dtype, 0, 0, 0, {}, {}, {}, {}};
  std::int64_t k_tokens = 0;
  t.q = load_as(dir / files.q, dtype, head_dim, t.tokens, t.q_heads);
  t.q_out = load_as(dir / files.q_out, dtype, head_dim, t.tokens, t.q_heads);
  t.k = load_as(dir / files.k, dtype, head_dim, k_tokens, t.k_heads);
  t.k_out = load_as(dir / files.k_out, dtype, head_dim, k_tokens, t.k_heads);
  if (k_tokens != t.tokens) usage_error(dir.string() + ": Q and K have different token counts");
  return t;
}

/// Result line of one (case, dtype, table, device) run: PASS/FAIL, stats, first mismatch.
struct RunReport {
  bool pass = true;
  std::string line;
};

RunReport compare_fixture(const FixtureTensors& t, const HostBatch& batch, std::int64_t head_dim) {
  // bf16/fp16 must match bit for bit. fp32: transformers' CPU cos/sin (SLEEF, up to 1 ulp) is not
  // correctly rounded and posenc's is, so fp32 gets 2^-21 of the head's largest input (as test_golden).
  Tolerance tolerance;
  if (t.dtype == DType::f32) tolerance.head_relative_exponent = -21;
  CompareStats stats;
  std::int64_t inexact = 0;
  for (const bool is_q : {true, false}) {
    const std::int64_t heads = is_q ? t.q_heads : t.k_heads;
    const std::byte* got = is_q ? batch.q.data() : batch.k.data();
    const std::byte* want = is_q ? t.q_out.data() : t.k_out.data();
    const std::byte* input = is_q ? t.q.data() : t.k.data();
    CompareStats exact_stats;  // the same elements at 0 ulps, to say how many are not bit-exact
    compare_tensor(is_q ? "q" : "k", t.dtype, t.tokens, heads, head_dim, got, want, input, {}, exact_stats);
    inexact += exact_stats.mismatches;
    compare_tensor(is_q ? "q" : "k", t.dtype, t.tokens, heads, head_dim, got, want, input, tolerance, stats);
  }
  RunReport report;
  report.pass = stats.mismatches == 0;
  const std::string values = std::to_string(stats.values) + " values";
  if (report.pass && inexact == 0) {
    report.line = "Q+K bit-exact (" + values + ")";
  } else if (report.pass) {
    report.line = "Q+K within 2^-21*max|x| per head: " + std::to_string(inexact) + " of " + values +
                  " not bit-exact, max abs error " + format("%.3g", stats.max_abs_error) + ", max " +
                  ulps_text(stats.max_ulps, t.dtype);
  } else {
    report.line = std::to_string(stats.mismatches) + " of " + values + " differ" +
                  (t.dtype == DType::f32 ? " by more than 2^-21*max|x| of their head" : "") +
                  ", max abs error " + format("%.3g", stats.max_abs_error) + ", max " +
                  ulps_text(stats.max_ulps, t.dtype) + "; first: " + describe(*stats.first, t.dtype);
  }
  return report;
}

/// The fixture's positions as the run will pass them, or the reason it cannot.
struct CasePositions {
  std::int32_t streams = 1;       ///< streams passed to the engine
  std::vector<std::byte> data;    ///< int64, stream-major
  std::int64_t tokens = 0;
  std::int64_t seq_len = 1;       ///< largest position + 1
  std::string skip_reason;        ///< non-empty: the case cannot run in this build
  std::string note;
};

CasePositions case_positions(const NpyArray& pos, const std::string& path, const RopeSpec& spec) {
  if (pos.type != NpyType::i64 || pos.shape.empty() || pos.shape.size() > 2) {
    usage_error(path + ": fixture positions must be int64 [tokens] or [streams, tokens], not " +
                std::string(npy_descr(pos.type)) + " " + shape_text(pos.shape));
  }
  CasePositions out;
  out.tokens = pos.shape.back();
  const std::int64_t streams = pos.shape.size() == 2 ? pos.shape[0] : 1;
  if (out.tokens == 0 || streams == 0) usage_error(path + ": shape " + shape_text(pos.shape) + " has no positions");
  if (streams > max_position_streams) {
    usage_error(path + ": shape " + shape_text(pos.shape) + " has " + std::to_string(streams) +
                " position streams, over the limit of " + std::to_string(max_position_streams));
  }
  out.seq_len = checked_seq_len(IndexType::i64, pos.data, spec, path);
  out.data = pos.data;
  out.streams = static_cast<std::int32_t>(streams);
  if (streams == 1) return out;
  if (spec.position_streams() == streams) {
    out.note = ", " + std::to_string(streams) + " position streams";
    return out;
  }

  // The spec takes fewer streams than the fixture has (M-RoPE positions [3, T] for a spec without
  // mrope_section). Identical streams (text tokens) are 1-D RoPE exactly; distinct ones are not.
  const auto at = [&](std::int64_t s, std::int64_t t) {
    std::int64_t p;
    std::memcpy(&p, pos.data.data() + (s * out.tokens + t) * 8, 8);
    return p;
  };
  for (std::int64_t s = 1; s < streams; ++s) {
    for (std::int64_t t = 0; t < out.tokens; ++t) {
      if (at(s, t) != at(0, t)) {
        out.skip_reason = "needs multi-axis positions: the fixture has " + std::to_string(streams) +
                          " distinct position streams (M-RoPE t/h/w), the config's spec takes " +
                          std::to_string(spec.position_streams());
        return out;
      }
    }
  }
  out.streams = 1;
  out.data.resize(static_cast<std::size_t>(out.tokens * 8));
  out.note = ", " + std::to_string(streams) + " identical position streams passed as one";
  return out;
}

int check_fixture(const CheckOptions& options) {
  const fs::path dir = options.fixture;
  const FixtureMeta meta = read_meta(dir);
  const std::string& layer_type = meta.layer_type;
  const fs::path config_path = resolve_fixture_config(dir, meta.config, options.root);
  // The config's own numerics: they are the HF arithmetic of that model file (hf_compatible, or
  // hf_fp32_apply for Cohere, whose model file rotates in float32), which the fixture recorded.
  // Fixtures record the rotation alone: a config's QK-norm stage is left out (test_qk_norm checks it).
  const ResolvedModel model = resolve_model({config_path.string(), layer_type, "", "", /*no_qk_norm=*/true});
  const RopeSpec& own_spec = model.spec;
  const std::int64_t head_dim = own_spec.head_dim;

  std::vector<DeviceChoice> devices = {{DeviceKind::cpu, "always"}};
  std::string gpu_note;
  if (options.device != "cpu") {
    const DeviceChoice gpu = choose_device(options.device);  // --device gpu with none: exit 1
    if (gpu.kind == DeviceKind::gpu) {
      devices.push_back(gpu);
    } else {
      gpu_note = gpu.reason;
    }
  }

  std::printf("posenc check: fixture %s (%s, transformers %s, torch %s, cpu capability %s)\n",
              dir.string().c_str(), message_excerpt(meta.family).c_str(), message_excerpt(meta.transformers).c_str(),
              message_excerpt(meta.torch).c_str(), message_excerpt(meta.cpu_capability).c_str());
  std::printf("config  %s, layer type %s, numerics %s\n", config_path.string().c_str(),
              message_excerpt(model.layer_type).c_str(), to_string(own_spec.numerics));
  std::printf("devices cpu%s%s\n", devices.size() > 1 ? " and gpu" : "",
              gpu_note.empty() ? "" : (" (gpu not run: " + gpu_note + ")").c_str());

  int failures = 0;
  int passes = 0;
  int skips = 0;
  int diffs = 0;  // informational: posenc's own table differs from the fixture's by an ulp
  for (const FixtureCase& c : meta.cases) {
    const std::string case_name = message_excerpt(c.name);
    const std::string pos_path = (dir / c.positions).string();
    const CasePositions positions = case_positions(read_input(pos_path), pos_path, own_spec);
    if (!positions.skip_reason.empty()) {
      for (const auto& [dname, files] : c.dtypes) {
        std::printf("SKIP  %s/%s: %s\n", case_name.c_str(), message_excerpt(dname).c_str(),
                    positions.skip_reason.c_str());
        ++skips;
      }
      continue;
    }

    // inv_freq: posenc's own table from the config against the one transformers used. torch_cpu
    // reproduces torch at this CPU's capability; a fixture made at another capability (or on a GPU)
    // may differ by 1 float32 ulp where its pow was another library's.
    const std::vector<float> fixture_inv = read_inv_freq((dir / c.inv_freq).string());
    const FrequencyTable own = compute_frequencies(own_spec, positions.seq_len);
    const double want_af = c.attention_factor;
    const double own_af = own_spec.attention_factor.value_or(own.attention_factor);
    std::int64_t exact = 0;
    std::int64_t worst = 0;
    const bool same_size = own.inv_freq.size() == fixture_inv.size();
    for (std::size_t i = 0; same_size && i < fixture_inv.size(); ++i) {
      const std::int64_t u = float_ulps(own.inv_freq[i], fixture_inv[i]);
      exact += u == 0;
      worst = std::max(worst, u);
    }
    const bool own_exact = same_size && exact == static_cast<std::int64_t>(fixture_inv.size());
    const bool af_ok = std::fabs(own_af - want_af) <= 1e-12 * std::max(1.0, std::fabs(want_af));
    const bool table_ok = same_size && worst <= 1 && af_ok;
    if (!same_size) {
      std::printf("FAIL  %s inv_freq: posenc has %zu frequencies, the fixture %zu (rotary dim differs)\n",
                  case_name.c_str(), own.inv_freq.size(), fixture_inv.size());
    } else {
      std::printf("%s  %s inv_freq: %lld/%zu bit-exact with posenc's table (worst %lld ulp), attention "
                  "factor %.17g vs %.17g%s\n",
                  table_ok ? "PASS" : "FAIL", case_name.c_str(), static_cast<long long>(exact),
                  fixture_inv.size(), static_cast<long long>(worst), own_af, want_af,
                  own_exact ? "" : "; results with posenc's table are informational");
    }
    table_ok ? ++passes : ++failures;

    const RopeSpec fed = with_table(own_spec, fixture_inv, want_af);
    try {
      fed.validate();  // the fixture's table and factor, as an engine would check them
    } catch (const Error& e) {
      usage_error((dir / c.inv_freq).string() + " with meta.json's attention_factor: " + e.what());
    }
    for (const auto& [dtype_name, files] : c.dtypes) {
      const std::string dname = message_excerpt(dtype_name);
      DType dtype;
      try {
        dtype = parse_dtype(dtype_name.c_str());
      } catch (const Error&) {
        usage_error((dir / "meta.json").string() + ": case " + case_name + ": '" + dname +
                    "' is not a dtype (expected " + dtype_help + ")");
      }
      const FixtureTensors t = load_fixture_tensors(dir, files, dtype, head_dim);
      if (t.tokens != positions.tokens) {
        usage_error(pos_path + ": " + std::to_string(positions.tokens) + " tokens, but the " + dname +
                    " tensors have " + std::to_string(t.tokens));
      }
      for (const bool use_fixture_table : {true, false}) {
        for (const DeviceChoice& device : devices) {
          HostBatch batch;
          batch.dtype = dtype;
          batch.tokens = t.tokens;
          batch.q_heads = t.q_heads;
          batch.k_heads = t.k_heads;
          batch.head_dim = head_dim;
          batch.position_type = IndexType::i64;
          batch.position_streams = positions.streams;
          batch.allocate();
          batch.q = t.q;
          batch.k = t.k;
          batch.positions = positions.data;
          rotate(use_fixture_table ? fed : own_spec, device, options.threads, batch);
          const RunReport r = compare_fixture(t, batch, head_dim);
          // With posenc's table a 1-ulp inv_freq difference legitimately moves outputs.
          const bool counts = use_fixture_table || own_exact;
          const char* verdict = r.pass ? "PASS" : counts ? "FAIL" : "DIFF";
          std::printf("%s  %s/%s %s, %s inv_freq%s: %s\n", verdict, case_name.c_str(), dname.c_str(),
                      device.kind == DeviceKind::gpu ? "gpu" : "cpu",
                      use_fixture_table ? "fixture" : "posenc", positions.note.c_str(), r.line.c_str());
          if (r.pass) {
            ++passes;
          } else if (counts) {
            ++failures;
          } else {
            ++diffs;
          }
        }
      }
    }
  }
  std::printf("%s: %d passed, %d failed, %d skipped", failures == 0 ? "PASS" : "FAIL", passes, failures, skips);
  if (diffs > 0) {
    std::printf(", %d DIFF (posenc's own inv_freq is 1 ulp off the fixture's in places, so its outputs may "
                "differ; the fixture-table runs are the parity check)", diffs);
  }
  std::printf("\n");
  return failures == 0 ? exit_ok : exit_failure;
}

// ------------------------------------------------------------------------------------------------
// Dump mode: the user's own Q/K/positions and reference outputs
// ------------------------------------------------------------------------------------------------

/// The expected output in `path` as `dtype`, with the same element count as its input.
std::vector<std::byte> read_expected(const std::string& path, DType dtype, std::int64_t count,
                                     const std::vector<std::int64_t>& input_shape, const std::string& input_path) {
  const NpyArray a = read_input(path);
  if (a.count() != count) {
    usage_error(path + ": shape " + shape_text(a.shape) + " has " + std::to_string(a.count()) +
                " elements, but " + input_path + " " + shape_text(input_shape) + " has " + std::to_string(count));
  }
  std::vector<std::byte> out(static_cast<std::size_t>(count * size_of(dtype)));
  convert_into(a, source_dtype(a, dtype, path), dtype, out);
  return out;
}

int check_dump(const CheckOptions& options) {
  const auto need = [](const std::string& value, const char* flag) {
    if (value.empty()) usage_error(std::string("without --fixture, ") + flag + " is required");
  };
  need(options.model.config, "--config");
  need(options.inputs.q, "--q");
  need(options.inputs.positions, "--positions");
  need(options.expect_q, "--expect-q");

  ModelOptions rotation_only = options.model;  // check compares the rotation; the QK norm is left out
  rotation_only.no_qk_norm = true;
  const ResolvedModel model = resolve_model(rotation_only);
  LoadedInputs loaded = load_inputs(options.inputs, model.spec.head_dim, model.spec.position_streams());
  HostBatch& batch = loaded.batch;
  const DType dtype = batch.dtype;
  const bool has_k = batch.k_heads > 0;
  const std::int64_t q_count = batch.tokens * batch.q_heads * batch.head_dim;
  const std::vector<std::byte> want_q =
      read_expected(options.expect_q, dtype, q_count, loaded.q_shape, options.inputs.q);
  std::vector<std::byte> want_k;
  if (has_k) {
    want_k = read_expected(options.expect_k, dtype, batch.tokens * batch.k_heads * batch.head_dim,
                           loaded.k_shape, options.inputs.k);
  }

  RopeSpec spec = model.spec;
  std::string table_text = "posenc's, from the config";
  if (!options.inv_freq.empty()) {
    std::vector<float> inv = read_inv_freq(options.inv_freq);
    const FrequencyTable own = compute_frequencies(
        with_host_tables(spec), checked_seq_len(batch.position_type, batch.positions, spec, options.inputs.positions));
    if (inv.size() != own.inv_freq.size()) {
      usage_error(options.inv_freq + ": " + std::to_string(inv.size()) + " frequencies, but the config's RoPE has " +
                  std::to_string(own.inv_freq.size()));
    }
    spec = with_table(spec, std::move(inv), spec.attention_factor.value_or(own.attention_factor));
    table_text = options.inv_freq + " (" + std::to_string(own.inv_freq.size()) + " values fed in)";
  }

  const DeviceChoice device = choose_device(options.device);
  const std::string where = rotate(spec, device, options.threads, batch);

  std::printf("posenc check: %s layer type %s, numerics %s, %s, %lld tokens, Q %s%s\n",
              model.config.source.c_str(), message_excerpt(model.layer_type).c_str(), to_string(spec.numerics),
              to_string(dtype),
              static_cast<long long>(batch.tokens), shape_text(loaded.q_shape).c_str(),
              has_k ? (", K " + shape_text(loaded.k_shape)).c_str() : "");
  std::printf("inv_freq  %s\n", table_text.c_str());
  std::printf("device    %s (%s)\n", where.c_str(), device.reason.c_str());

  Tolerance tolerance;
  tolerance.max_ulps = options.tolerance_ulps;
  CompareStats total;
  for (const bool is_q : {true, false}) {
    if (!is_q && !has_k) continue;
    CompareStats stats;
    compare_tensor(is_q ? "q" : "k", dtype, batch.tokens, is_q ? batch.q_heads : batch.k_heads, batch.head_dim,
                   is_q ? batch.q.data() : batch.k.data(), is_q ? want_q.data() : want_k.data(),
                   /*input=*/nullptr, tolerance, stats);
    std::printf("%s         %lld values: %lld mismatching, max abs error %.6g, max %s\n", is_q ? "Q" : "K",
                static_cast<long long>(stats.values), static_cast<long long>(stats.mismatches),
                stats.max_abs_error, ulps_text(stats.max_ulps, dtype).c_str());
    total.values += stats.values;
    total.mismatches += stats.mismatches;
    if (!total.first && stats.first) total.first = stats.first;
  }
  const std::string allowed = options.tolerance_ulps == 0
                                  ? std::string("bit-exact")
                                  : "within " + ulps_text(options.tolerance_ulps, dtype);
  if (total.mismatches == 0) {
    std::printf("PASS: %lld values %s\n", static_cast<long long>(total.values), allowed.c_str());
    return exit_ok;
  }
  std::printf("first mismatch  %s\n", describe(*total.first, dtype).c_str());
  std::printf("FAIL: %lld of %lld values not %s\n", static_cast<long long>(total.mismatches),
              static_cast<long long>(total.values), allowed.c_str());
  if (options.inv_freq.empty()) {
    std::printf("hint: if the reference ran elsewhere, feed the inv_freq it used with --inv-freq; "
                "try --numerics for other arithmetic\n");
  }
  if (dtype == DType::f32 && options.tolerance_ulps == 0) {
    std::printf("hint: float32 references rarely match bit for bit (their cos/sin are not correctly "
                "rounded); allow a few ulps with --tolerance-ulps\n");
  }
  return exit_failure;
}

Runner setup(CLI::App& app) {
  auto options = std::make_shared<CheckOptions>();
  CLI::Option* fixture = app.add_option(
      "--fixture", options->fixture,
      "golden fixture directory (tests/golden/<family>): run every case and dtype, CPU and --device");
  app.add_option("--root", options->root,
                 "with --fixture: the directory the fixture's config path is relative to "
                 "(default: the current directory, then the fixture's ../../..)")
      ->needs(fixture);
  add_model_options(app, options->model, /*config_required=*/false, /*with_numerics=*/true);
  const std::vector<CLI::Option*> dump_options = {
      app.add_option("--q", options->inputs.q, "queries .npy, [tokens, heads, head_dim] or [tokens, heads*head_dim]"),
      app.add_option("--k", options->inputs.k, "keys .npy (optional), same layout as --q"),
      app.add_option("--positions", options->inputs.positions,
                     "positions .npy, <i4 or <i8: [T] or [1, T]; [S, T] for S position streams (M-RoPE)"),
      app.add_option("--expect-q", options->expect_q, "the reference's rotated queries .npy, same shape as --q"),
      app.add_option("--expect-k", options->expect_k, "the reference's rotated keys .npy, same shape as --k"),
      app.add_option("--inv-freq", options->inv_freq,
                     "feed this float32 inv_freq .npy in instead of posenc's table (as the reference used it)"),
      app.add_option("--dtype", options->inputs.dtype,
                     std::string("activation dtype (default: the dtype of --q): ") + dtype_help),
      app.add_option("--tolerance-ulps", options->tolerance_ulps,
                     "ulps of the dtype an element may differ by (default 0: bit-exact; at most 2^32)")
          ->check(CLI::Range(std::int64_t{0}, max_tolerance_ulps)),
  };
  dump_options[1]->needs(dump_options[4]);
  dump_options[4]->needs(dump_options[1]);
  for (CLI::Option* o : dump_options) fixture->excludes(o);
  add_device_option(app, options->device);
  app.add_option("--threads", options->threads, "CPU engine threads (0 = all cores)")->check(CLI::Range(0, 4096));
  return [options] {
    if (!options->fixture.empty()) {
      if (!options->model.config.empty() || !options->model.numerics.empty() ||
          !options->model.layer_type.empty()) {
        usage_error("--fixture takes its config, layer type and numerics from meta.json; drop "
                    "--config, --layer-type and --numerics");
      }
      return check_fixture(*options);
    }
    return check_dump(*options);
  };
}

[[maybe_unused]] const bool registered = register_command(
    {"check",
     "Compare posenc with a golden fixture (--fixture) or your own .npy dump (--config, --q, --positions, "
     "--expect-q, ...) and print the first mismatching element with its tensor, token, head and dim.",
     setup});

}  // namespace
}  // namespace posenc::cli
