// RopeSpec: everything that defines a model's rotary position embedding, independent of hardware.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
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
// Numerics (see docs and DESIGN.md):
//   hf_compatible  reproduces Hugging Face transformers' eager arithmetic: inv_freq in float32,
//                  angle = fl32(inv_freq[i] * fl32(p)), cos/sin correctly rounded to float32 and
//                  multiplied by fl32(attention_factor), then rounded to the activation dtype;
//                  the two products are each rounded to the activation dtype before the add,
//                  and the sum is rounded again ("3-round", HF's `q*cos + rotate_half(q)*sin`).
//   hf_fp32_apply  as hf_compatible for cos/sin (rounded to the activation dtype), but the
//                  rotation is computed in float32 and rounded once (HF Cohere).
//   accurate       angle = inv_freq[i] * p evaluated exactly (double) and reduced accurately, cos
//                  and sin rounded once to float32, rotation in float32 rounded once to the
//                  activation dtype. Error against a float64 reference of the same inv_freq stays
//                  within a few float32 ulps for positions up to at least 2^20.
// ------------------------------------------------------------------------------------------------

/// Which elements of the rotary window form a rotation pair (drawn above).
enum class Pairing : std::uint8_t { half_split, interleaved, interleaved_to_half };

/// How cos/sin and the rotation are rounded (described above).
enum class Numerics : std::uint8_t { hf_compatible, hf_fp32_apply, accurate };

/// Frequency scheme: how inv_freq and the attention factor are derived (rope-semantics.md §2).
enum class Scaling : std::uint8_t {
  none,      ///< default theta: inv_freq[i] = 1 / theta^(2i/R)
  linear,    ///< position interpolation: default / factor
  dynamic,   ///< dynamic NTK: theta grows with the call's largest position beyond max_position_embeddings
  yarn,      ///< YaRN ramp between interpolation and extrapolation, with mscale attention factor
  longrope,  ///< LongRoPE per-frequency short/long factors, chosen per call
  llama3,    ///< Llama 3.1 low/high frequency smoothing
  table,     ///< caller-supplied inv_freq table
};

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
  /// Positions must lie in [0, position_limit). The CPU engine rejects others before writing;
  /// the GPU engine records them as a fault (gpu.hpp).
  std::int64_t position_limit = std::int64_t{1} << 31;

  /// rotary_dim, with 0 resolved to head_dim.
  std::int64_t rotary() const noexcept { return rotary_dim == 0 ? head_dim : rotary_dim; }

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

/// The frequency data of a spec: inv_freq (R/2 float32 values) and the attention factor.
struct FrequencyTable {
  std::vector<float> inv_freq;
  double attention_factor = 1.0;  ///< as the scheme computes it (HF keeps a Python float)
};

/// Computes the frequency table exactly as Hugging Face transformers 5.x does on the CPU
/// (float32 arithmetic, glibc-equivalent powf; rope-semantics.md §1.4, §2).
///
/// `seq_len` is the call's largest position + 1. It matters only for `dynamic` (theta grows when
/// seq_len > max_position_embeddings) and `longrope` (long factors when seq_len >
/// original_max_position_embeddings); absent, the table is the one HF builds at init.
FrequencyTable compute_frequencies(const RopeSpec& spec, std::optional<std::int64_t> seq_len = {});

}  // namespace posenc
