// RopeSpec: everything that defines a model's rotary position embedding, independent of hardware.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace posenc {

// ------------------------------------------------------------------------------------------------
// The math
//
// A head vector x of length head_dim holds a rotary window of R = rotary_dim elements starting at
// rotary_offset; elements outside the window pass through unchanged. The window is split into
// H = R/2 pairs (a_i, b_i), i = 0..H-1, and pair i is rotated by the angle  p * inv_freq[i]
// (p = the token's position):
//
//     c_i = cos(p * inv_freq[i]) * attention_factor
//     s_i = sin(p * inv_freq[i]) * attention_factor
//     a_i' = a_i * c_i - b_i * s_i
//     b_i' = b_i * c_i + a_i * s_i
//
// inv_freq comes from the frequency scheme (Scaling below); for the default scheme
// inv_freq[i] = 1 / theta^(2i/R).
//
// Pairings: which elements form pair i. Drawn for a head of 8 with R = 4 (offset 0), the window
// holding pairs 0 and 1, "-" passing through:
//
//   half_split   (NeoX, Llama, Qwen, Glm4Moe; HF rotate_half)
//                 in  [a0 a1 b0 b1 - - - -]      a_i = x[i],      b_i = x[i + H]
//                 out [a0'a1'b0'b1'- - - -]
//
//   interleaved  (GPT-J, GLM-4 / ChatGLM2-3, Cohere; adjacent pairs)
//                 in  [a0 b0 a1 b1 - - - -]      a_i = x[2i],     b_i = x[2i + 1]
//                 out [a0'b0'a1'b1'- - - -]
//
//   interleaved_to_half  (DeepSeek-V3 / Kimi-K2 `rope_interleave`: pairs read adjacent, written
//                 de-interleaved)
//                 in  [a0 b0 a1 b1 - - - -]      a_i = x[2i],     b_i = x[2i + 1]
//                 out [a0'a1'b0'b1'- - - -]      y[i] = a_i',     y[i + H] = b_i'
//
//   half_split_2d  (ChatGLM-6B 2-D RoPE) the window is two halves, each rotated half-split as a
//                 RoPE of R/2 dims; the first half by position stream 0 (position), the second by
//                 stream 1 (block position). Drawn for R = 8 (Q = R/4 pairs per half):
//                 in  [a0 a1 b0 b1 | a2 a3 b2 b3]   pair i < Q: a_i = x[i], b_i = x[i + Q], stream 0
//                                                   pair i >= Q: a_i = x[R/2 + i - Q], b_i = x[R/2 + i],
//                                                   stream 1; both halves use inv_freq of R/2 dims
//
// Multi-axis RoPE (M-RoPE, Qwen2-VL / Qwen2.5-VL / GLM-4.1V / GLM-4.5V / Qwen3-VL): positions
// come in several streams (t, h, w) and pair i takes its angle from one of them:
//   mrope_section = [m0, m1, m2] (sum H), contiguous: pairs [0, m0) use stream 0, the next m1
//                 stream 1, the rest stream 2;
//   mrope_interleaved (Qwen3-VL): pair i uses stream 1 if i % 3 == 1 and i < 3*m1, stream 2 if
//                 i % 3 == 2 and i < 3*m2, else stream 0.
// The pairing (half_split or interleaved) is independent of the stream assignment. When all
// streams hold the same positions, M-RoPE is exactly 1-D RoPE.
//
// Numerics (docs/NUMERICS.md §3 gives each rounding step):
//   hf_compatible  reproduces Hugging Face transformers' eager arithmetic: inv_freq in float32,
//                  angle = fl32(inv_freq[i] * fl32(p)), float32 cos/sin of the spec's
//                  hf_arithmetic (torch's on the engine's device by default; exact: correctly
//                  rounded) multiplied by fl32(attention_factor), then rounded to the activation dtype;
//                  the two products are each rounded to the activation dtype before the add,
//                  and the sum is rounded again ("3-round", HF's `q*cos + rotate_half(q)*sin`).
//   hf_fp32_apply  as hf_compatible for cos/sin (rounded to the activation dtype), but the
//                  rotation is computed in float32 and rounded once (HF Cohere).
//   accurate       angle = inv_freq[i] * p evaluated exactly (double) and reduced accurately, cos
//                  and sin rounded once to float32, rotation in float32 rounded once to the
//                  activation dtype. Error against a float64 reference of the same inv_freq stays
//                  within a few float32 ulps for positions up to at least 2^20.
//
// Caller's cos/sin cache (RopeArgs::cos_sin, tensor.hpp CosSinCacheView; vLLM's and sgl-kernel's
// `rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)`): c_i and s_i are
// entries i and R/2 + i of the cache row of the token's position, read as float, and nothing is
// computed from the spec's frequencies (no attention factor either: the cache holds it). The spec
// still gives head_dim, rotary_dim (equal to the cache's), rotary_offset, the pairing (is_neox =
// half_split, !is_neox = interleaved; interleaved_to_half also works) and the numerics:
//   hf_compatible  c_i, s_i rounded to the activation dtype (`cos.to(x.dtype)`), then the 3-round
//                  rotation above: vLLM's native path and its CUDA kernel for 16-bit dtypes.
//   hf_fp32_apply  c_i, s_i rounded to the activation dtype, rotation in float32 rounded once.
//   accurate       c_i, s_i as float32 (no rounding to the activation dtype), rotation in float32
//                  (fused multiply-add) rounded once.
// ------------------------------------------------------------------------------------------------

/// Which elements of the rotary window form a rotation pair (drawn above).
enum class Pairing : std::uint8_t { half_split, interleaved, interleaved_to_half, half_split_2d };

/// Every Pairing, in enum order.
inline constexpr std::array<Pairing, 4> all_pairings = {Pairing::half_split, Pairing::interleaved,
                                                         Pairing::interleaved_to_half, Pairing::half_split_2d};

/// Where pair i of a rotary window of `half` pairs is read (a_i, b_i) and where a_i', b_i' are
/// written, in elements from the window's first element.
struct PairPlaces {
  std::int64_t read_a = 0;
  std::int64_t read_b = 0;
  std::int64_t write_a = 0;
  std::int64_t write_b = 0;
};

/// The pairings drawn above, as code: the one definition of the layouts, which the reference, the
/// CPU engine, the CLI's verifier and the tests all use (the GPU kernel's lanes move V consecutive
/// pairs laid out the same way). All zero for a value outside the enum (RopeSpec::validate
/// rejects it first).
constexpr PairPlaces pair_places(Pairing pairing, std::int64_t half, std::int64_t i) noexcept {
  switch (pairing) {
    case Pairing::half_split: return {i, i + half, i, i + half};
    case Pairing::interleaved: return {2 * i, 2 * i + 1, 2 * i, 2 * i + 1};
    case Pairing::interleaved_to_half: return {2 * i, 2 * i + 1, i, i + half};
    case Pairing::half_split_2d: {
      // Two half-split windows of q = half/2 pairs: pairs [0, q) in the first R/2 elements,
      // pairs [q, 2q) in the second.
      const std::int64_t q = half / 2;
      const std::int64_t a = i < q ? i : half + (i - q);
      return {a, a + q, a, a + q};
    }
  }
  return {};
}

/// How cos/sin and the rotation are rounded (described above).
enum class Numerics : std::uint8_t { hf_compatible, hf_fp32_apply, accurate };

/// Every Numerics, in enum order.
inline constexpr std::array<Numerics, 3> all_numerics = {Numerics::hf_compatible, Numerics::hf_fp32_apply,
                                                         Numerics::accurate};

/// Whose float32 arithmetic the hf numerics reproduce (docs/NUMERICS.md §3.4): the library that
/// computes transformers' `base ** exponent` (inv_freq), `cos` and `sin` on that device. Only the
/// hf numerics read it; `accurate` always uses the exact tables.
enum class HfArithmetic : std::uint8_t {
  engine,      ///< torch on the engine's own device: CpuEngine -> torch_cpu, GpuEngine -> torch_cuda (default)
  torch_cpu,   ///< torch 2.x on an x86-64 CPU (SLEEF and glibc powf, Intel MKL's vmsCos/vmsSin)
  torch_cuda,  ///< torch on an NVIDIA GPU (CUDA's float powf/cosf/sinf)
  exact,       ///< correctly rounded pow/cos/sin: identical bits on every engine (the behaviour before this option)
};

/// Every HfArithmetic, in enum order.
inline constexpr std::array<HfArithmetic, 4> all_hf_arithmetics = {HfArithmetic::engine, HfArithmetic::torch_cpu,
                                                                   HfArithmetic::torch_cuda, HfArithmetic::exact};

/// Per-head RMSNorm of Q and K before the rotation (Qwen3, Qwen3-MoE, Gemma 3, GLM-4.5 with
/// `use_qk_norm`): each head row x of Q (and of K) is normalised over `width` elements,
///
///     r  = 1 / sqrt(mean(x_j^2) + epsilon)                 (float32, as below)
///     rms:           y_j = round(w_j * round(x_j * r))     (Qwen3RMSNorm, Glm4MoeRMSNorm)
///     rms_one_plus:  y_j = round(x_j * r * (1 + w_j))      (Gemma3RMSNorm: float32, one rounding)
///
/// with round() to the activation dtype and w the call's weight of `width` elements (one for Q,
/// one for K, shared by every head; RopeArgs::norm / AppendArgs::norm). The rotation then acts on
/// y. `width` is the whole head, or the rotary window alone (QkNorm::rotary_only), whose
/// pass-through elements are then left as they are. Under the hf numerics the mean, the sum order
/// of its squares and the reciprocal square root are those of transformers' eager module on the
/// spec's hf_arithmetic (torch on the CPU, torch on CUDA, or exact: docs/NUMERICS.md §3.5), so a
/// normalised and rotated head has the bits of `q_norm` + `apply_rotary_pos_emb`; `accurate`
/// uses the exact arithmetic.
enum class QkNormKind : std::uint8_t {
  none,          ///< no normalisation (most models)
  rms,           ///< weight * (x * r) rounded twice: Qwen3, Qwen3-MoE, GLM-4.5 (Glm4Moe), Llama-style
  rms_one_plus,  ///< x * r * (1 + weight) in float32, rounded once: Gemma 3
};

/// The QK-norm stage of a spec (see QkNormKind).
struct QkNorm {
  QkNormKind kind = QkNormKind::none;
  double epsilon = 1e-6;     ///< config.json rms_norm_eps; added in float32 as torch does
  bool rotary_only = false;  ///< normalise the rotary window only (width R) instead of the whole head

  bool enabled() const noexcept { return kind != QkNormKind::none; }
};

/// Frequency scheme: how inv_freq and the attention factor are derived (docs/NUMERICS.md §5).
enum class Scaling : std::uint8_t {
  none,      ///< default theta: inv_freq[i] = 1 / theta^(2i/R)
  linear,    ///< position interpolation: default / factor
  dynamic,   ///< dynamic NTK: theta grows with the call's largest position beyond max_position_embeddings
  yarn,      ///< YaRN ramp between interpolation and extrapolation, with mscale attention factor
  longrope,  ///< LongRoPE per-frequency short/long factors, chosen per call
  llama3,    ///< Llama 3.1 low/high frequency smoothing
  table,     ///< caller-supplied inv_freq table
};

/// A frequency scheme as the library's scheme registry (one row per Scaling) describes it.
struct SchemeInfo {
  Scaling scaling = Scaling::none;
  std::string name;                     ///< to_string(scaling)
  std::string summary;                  ///< one line: how inv_freq and the attention factor are derived
  std::vector<std::string> rope_types;  ///< the config.json rope_type names that select it
  bool depends_on_call = false;  ///< the table is re-selected per call from the call's largest position
};

/// The entry of `scaling`; throws posenc::Error(invalid_argument) for a value outside the enum.
SchemeInfo scheme_info(Scaling scaling);

/// Parameters of the frequency schemes. Only the fields of the chosen scheme are read.
struct ScalingParams {
  double factor = 1.0;  ///< linear, dynamic, yarn, longrope (0: max_pos/original_max), llama3
  std::int64_t original_max_position_embeddings = 0;  ///< yarn, longrope, llama3
  std::int64_t max_position_embeddings = 0;           ///< dynamic (its L), longrope (default factor)
  double beta_fast = 32.0;                            ///< yarn
  double beta_slow = 1.0;                             ///< yarn
  double mscale = 0.0;          ///< yarn (DeepSeek); 0 = not given
  double mscale_all_dim = 0.0;  ///< yarn (DeepSeek); 0 = not given
  bool truncate = true;         ///< yarn: floor/ceil the correction range (gpt-oss sets false)
  double low_freq_factor = 1.0;   ///< llama3
  double high_freq_factor = 4.0;  ///< llama3
  std::vector<double> short_factor;  ///< longrope, R/2 entries
  std::vector<double> long_factor;   ///< longrope, R/2 entries
  std::vector<float> inv_freq;       ///< table, R/2 entries
};

/// Everything that defines the rotation. Build one directly, or from a model's config.json with
/// posenc::load_model_config (model_config.hpp).
struct RopeSpec {
  std::int64_t head_dim = 128;
  std::int64_t rotary_dim = 0;     ///< 0 means head_dim; must be even
  std::int64_t rotary_offset = 0;  ///< first element of the rotary window within a head
  Pairing pairing = Pairing::half_split;
  double theta = 10000.0;          ///< rope_theta (base)
  Scaling scaling = Scaling::none;
  ScalingParams params;
  std::optional<double> attention_factor;  ///< overrides the scheme's attention factor
  Numerics numerics = Numerics::hf_compatible;
  /// Whose pow/cos/sin the hf numerics reproduce; an engine refuses one it cannot (docs/NUMERICS.md §3.4).
  HfArithmetic hf_arithmetic = HfArithmetic::engine;
  /// M-RoPE: pairs per position stream (empty: a single stream). See "Multi-axis RoPE" above.
  std::vector<std::int64_t> mrope_section;
  bool mrope_interleaved = false;  ///< Qwen3-VL's interleaved assignment instead of contiguous
  /// Per-head RMSNorm of Q and K before the rotation (QkNorm); off by default.
  QkNorm qk_norm;
  /// Positions must lie in [0, position_limit). The CPU engine rejects others before writing;
  /// the GPU engine records them as a fault (gpu.hpp).
  std::int64_t position_limit = std::int64_t{1} << 31;

  /// rotary_dim, with 0 resolved to head_dim.
  std::int64_t rotary() const noexcept { return rotary_dim == 0 ? head_dim : rotary_dim; }

  /// The elements of a head the QK norm covers: [qk_norm_first(), + qk_norm_width()), the whole
  /// head or, with qk_norm.rotary_only, the rotary window. Its weights have qk_norm_width() elements.
  std::int64_t qk_norm_first() const noexcept { return qk_norm.rotary_only ? rotary_offset : 0; }
  std::int64_t qk_norm_width() const noexcept { return qk_norm.rotary_only ? rotary() : head_dim; }

  /// Position streams an apply call must pass: 2 for half_split_2d, mrope_section.size() for
  /// M-RoPE, else 1.
  std::int32_t position_streams() const noexcept {
    if (pairing == Pairing::half_split_2d) return 2;
    return mrope_section.empty() ? 1 : static_cast<std::int32_t>(mrope_section.size());
  }

  /// Dimension of the RoPE whose frequencies the scheme computes: R, or R/2 for half_split_2d
  /// (each half is a RoPE of R/2 dims). compute_frequencies returns frequency_dim()/2 values.
  std::int64_t frequency_dim() const noexcept {
    return pairing == Pairing::half_split_2d ? rotary() / 2 : rotary();
  }

  /// Throws posenc::Error naming the field, its value and the limit when the spec is inconsistent
  /// (odd or oversized rotary window, non-positive theta, wrong factor-list lengths, ...).
  void validate() const;

  /// Multi-line human-readable summary (used by `posenc info` and `posenc run`).
  std::string describe() const;
};

/// Largest head_dim posenc accepts (kernels keep one token's cos/sin row on chip).
inline constexpr std::int64_t max_head_dim = 1024;

const char* to_string(Pairing p) noexcept;
const char* to_string(Numerics n) noexcept;
const char* to_string(Scaling s) noexcept;
const char* to_string(HfArithmetic a) noexcept;
const char* to_string(QkNormKind k) noexcept;

/// The HfArithmetic named `name` ("engine", "torch_cpu", "torch_cuda", "exact"); nullopt for any
/// other text.
std::optional<HfArithmetic> parse_hf_arithmetic(std::string_view name) noexcept;

/// The frequency data of a spec: inv_freq (R/2 float32 values) and the attention factor.
struct FrequencyTable {
  std::vector<float> inv_freq;
  double attention_factor = 1.0;  ///< as the scheme computes it (HF keeps a Python float)
};

/// What each of the R/2 pairs of the rotary window uses: its inverse frequency and its position
/// stream. Single-stream specs give inv_freq = table.inv_freq and stream 0 everywhere;
/// half_split_2d repeats the R/4 frequencies for the second half (stream 1); M-RoPE assigns
/// streams by section. Both engines rotate pair i by  position[stream[i]] * inv_freq[i].
struct PairAxes {
  std::vector<float> inv_freq;
  std::vector<std::uint8_t> stream;
};
PairAxes pair_axes(const RopeSpec& spec, const FrequencyTable& table);

/// Computes the frequency table exactly as Hugging Face transformers 5.x does, in float32 with the
/// pow of spec.hf_arithmetic (docs/NUMERICS.md §3.4, §5): `engine` means torch_cpu here (the CPU
/// engine's table), `accurate` numerics the exact table. For torch_cuda it gives the init table,
/// which transformers builds on the CPU; a call-time table of dynamic/longrope beyond the
/// threshold comes from CUDA's powf, and asking for one throws Error(unsupported).
///
/// `seq_len` is the call's largest position + 1. It matters only for `dynamic` (theta grows when
/// seq_len > max_position_embeddings) and `longrope` (long factors when seq_len >
/// original_max_position_embeddings); absent, the table is the one HF builds at init.
FrequencyTable compute_frequencies(const RopeSpec& spec, std::optional<std::int64_t> seq_len = {});

}  // namespace posenc
