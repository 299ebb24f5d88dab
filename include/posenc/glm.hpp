// GLM position ids (every GLM generation, M-RoPE), attention patterns, batches and decode tracking.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "posenc/tensor.hpp"

// Everything here is host code in plain C++20. It produces position ids and attention patterns;
// it rotates nothing. The rotation engines consume the ids (one stream per token for 1-D RoPE,
// two or three streams for ChatGLM-6B 2-D RoPE and M-RoPE). docs/GLM.md is the newcomer's guide;
// section marks (§7.3, ...) refer to docs/NUMERICS.md, which states each generation's rules.
//
// Conventions used throughout:
// - Token ids, positions, lengths and indices are int64. Errors are posenc::Error naming the
//   offending value, its index and the limit it broke.
// - Multi-stream positions are a PositionIds: `streams` x `tokens` values in one buffer,
//   stream-major (stream s of token t at values[s * tokens + t]).
// - A padded batch of `batch` rows of `length` tokens is flattened row-major: token (b, t) is
//   token index b * length + t.
// - 0/1 masks (HF `attention_mask`, key padding) are uint8: 1 = real token, 0 = padding.

namespace posenc::glm {

using TokenId = std::int64_t;

/// "This generation has no such token."
inline constexpr TokenId no_token = -1;

// ------------------------------------------------------------------------------------------------
// Special tokens
// ------------------------------------------------------------------------------------------------

/// The special token ids the position rules look for. Member defaults are ChatGLM-6B's final
/// vocabulary; the factories give the other generations. The original GLM (THUDM/GLM: BERT
/// WordPiece, GPT-2 BPE and SentencePiece variants) has no single vocabulary: set its ids from
/// its tokenizer.
struct GlmSpecialTokens {
  TokenId mask = 130000;              ///< [MASK]  short blank (positions pinned to it)
  TokenId gmask = 130001;             ///< [gMASK] generation blank (left-to-right continuation)
  TokenId smask = 130002;             ///< [sMASK] sentence blank (pinned like [MASK])
  TokenId sop = 130004;               ///< <sop>   start of a piece (ChatGLM-6B's bos)
  TokenId eop = 130005;               ///< <eop>   end of a piece
  TokenId begin_of_image = no_token;  ///< glm-4v-9b <|begin_of_image|>
  TokenId end_of_image = no_token;    ///< glm-4v-9b <|end_of_image|>

  /// ChatGLM-6B final vocabulary: [MASK] 130000, [gMASK] 130001, [sMASK] 130002, <sop> 130004,
  /// <eop> 130005 (the first release's ids were these + 20000: 150000/150001/150004).
  static GlmSpecialTokens chatglm_6b() noexcept;
  /// ChatGLM-6B first release (icetk, 20000 image tokens first): [MASK] 150000, [gMASK] 150001,
  /// [sMASK] 150002, <sop> 150004, <eop> 150005.
  static GlmSpecialTokens chatglm_6b_first_release() noexcept;
  /// GLM-130B (icetk): [MASK] 150000, [gMASK] 150001, [sMASK] 150002, <sop> 150004, <eop> 150005.
  static GlmSpecialTokens glm_130b() noexcept;
  /// ChatGLM2-6B / ChatGLM3-6B (SentencePiece 64789 + specials): [MASK] 64789, [gMASK] 64790,
  /// [sMASK] 64791, sop 64792, eop 64793.
  static GlmSpecialTokens chatglm2() noexcept;
  /// GLM-4-9B / glm-4v-9b: [MASK] 151330, [gMASK] 151331, [sMASK] 151332, <sop> 151333,
  /// <eop> 151334, <|begin_of_image|> 151339, <|end_of_image|> 151340.
  static GlmSpecialTokens glm4() noexcept;

  /// Throws when two of the ids that are set (not no_token) are equal or one is below -1.
  void validate() const;
};

// ------------------------------------------------------------------------------------------------
// Multi-stream position ids
// ------------------------------------------------------------------------------------------------

/// Position ids of `tokens` tokens in 1, 2 or 3 streams, stored stream-major in one contiguous
/// buffer: stream s of token t lives at values()[s * tokens + t]. This is the layout the engines
/// take: 1 stream = ordinary RoPE positions; 2 = ChatGLM-6B / original GLM (position, block
/// position); 3 = M-RoPE (t, h, w). stream(s) is directly usable as a PositionsView.
class PositionIds {
 public:
  static constexpr int max_streams = 3;

  PositionIds() = default;
  /// `streams` in [1, 3], `tokens` >= 0; all values 0.
  PositionIds(int streams, std::int64_t tokens);
  /// Takes `values` (size must be streams * tokens) as the stream-major buffer.
  PositionIds(int streams, std::int64_t tokens, std::vector<std::int64_t> values);

  int streams() const noexcept { return streams_; }
  std::int64_t tokens() const noexcept { return tokens_; }
  const std::vector<std::int64_t>& values() const noexcept { return values_; }
  std::int64_t* data() noexcept { return values_.data(); }
  const std::int64_t* data() const noexcept { return values_.data(); }

  /// The `tokens` values of stream s (throws when s is not in [0, streams)).
  std::span<const std::int64_t> stream(int s) const;
  std::span<std::int64_t> stream(int s);
  /// Stream s as the int64 PositionsView an `apply` call takes.
  PositionsView view(int s) const;

  /// Value of stream s at token t, bounds-checked.
  std::int64_t at(int s, std::int64_t t) const;
  void set(int s, std::int64_t t, std::int64_t value);

  /// Appends `other`'s tokens after this one's (both must have the same stream count; an empty
  /// default-constructed PositionIds takes other's stream count).
  void append(const PositionIds& other);

  /// Throws Error(out_of_range) naming stream, token, value and limit for the first value
  /// outside [0, position_limit).
  void validate(std::int64_t position_limit) const;

  friend bool operator==(const PositionIds&, const PositionIds&) = default;

 private:
  int streams_ = 1;
  std::int64_t tokens_ = 0;
  std::vector<std::int64_t> values_;
};

/// Plain 1-D positions past_len, past_len+1, ..., past_len+count-1: an HF forward without
/// position_ids (pads counted), ChatGLM2/3/GLM-4 prefill and `stream_chat` with past_length.
PositionIds arange_positions(std::int64_t past_len, std::int64_t count);

/// Positions of a padded batch of `batch` rows of `length` tokens (token (b, t) is token index
/// b * length + t of `positions`), with the 0/1 validity mask of the same layout.
struct BatchPositions {
  std::int64_t batch = 0;
  std::int64_t length = 0;
  PositionIds positions;
  std::vector<std::uint8_t> valid;  ///< [batch * length], 1 = real token, 0 = padding

  /// Stream s of token (b, t), bounds-checked.
  std::int64_t at(int s, std::int64_t b, std::int64_t t) const;
};

// ------------------------------------------------------------------------------------------------
// Attention patterns
// ------------------------------------------------------------------------------------------------
//
// A pattern decides whether query q may attend to key k. q and k are key-slot indices in
// [0, k_len): with q_len queries over k_len keys (q_len <= k_len), query row r is slot
// q = k_len - q_len + r, i.e. the queries are the last q_len slots (a KV-cache offset of
// k_len - q_len). In a padded batch, slots count the padding.
//
//   causal         visible(q, k) = k <= q
//   bidirectional  visible(q, k) = true
//   prefix_lm      visible(q, k) = k < prefix_len || k <= q
//                  The prefix [0, prefix_len) is seen by every row (bidirectional among
//                  itself), the rest is causal. Original GLM blank infilling (prefix_len = sep =
//                  len(Part A)), GLM-130B (prefix = tokens before [sop]), ChatGLM-6B (prefix =
//                  tokens before <sop>). prefix_len must not exceed k_len: a bidirectional
//                  prefix has to be present in full.
//   local_window   visible(q, k) = q - window < k <= q         (window >= 1)
//                  A causal sliding window of `window` keys ending at the query itself. The
//                  earlier module used |q - k| <= window, which lets a query of a causal
//                  decoder see `window` future tokens. Positions are the ordinary positions:
//                  RoPE encodes relative distance q - k on its own, so no special ids are
//                  needed (the earlier module's `pos - window` ids were not relative positions).
//   global_local   visible(q, k) = k <= q && (is_global(q) || is_global(k) || q - k < window)
//                  Causal. A global slot sees every earlier slot and is seen by every later
//                  slot; other slots see a causal window of `window` keys (window >= 1; the
//                  earlier module divided by it and crashed on 0).
//   custom         visible(q, k) = predicate(q, k), evaluated for every (q, k) of the call.
//
// In a batch, padding applies on top, to keys and to the query rows sitting at padding slots:
//   visible_b(q, k) = valid[b][q] && valid[b][k] && pattern(q, k)
// A row that sees no key (every padding query row, and a real row whose keys are all padding)
// stays all-masked unless EmptyRows::all_visible is chosen. With masked this is the ChatGLM-6B
// tokenizer's `_pad` mask (padding rows and columns masked); with all_visible it is ChatGLM2/3's
// remote-code mask (padding query rows made all-visible so the softmax has no NaN rows).

enum class MaskPattern : std::uint8_t {
  causal,
  bidirectional,
  prefix_lm,
  local_window,
  global_local,
  custom,
};

const char* to_string(MaskPattern p) noexcept;

/// One attention pattern (semantics above). Build with the factories.
struct AttentionPattern {
  MaskPattern kind = MaskPattern::causal;
  std::int64_t prefix_len = 0;                 ///< prefix_lm
  std::int64_t window = 0;                     ///< local_window, global_local
  std::vector<std::int64_t> global_positions;  ///< global_local: key slots, any order
  std::function<bool(std::int64_t q, std::int64_t k)> predicate;  ///< custom

  static AttentionPattern causal();
  static AttentionPattern bidirectional();
  static AttentionPattern prefix_lm(std::int64_t prefix_len);
  static AttentionPattern local_window(std::int64_t window);
  static AttentionPattern global_local(std::vector<std::int64_t> global_positions,
                                       std::int64_t window);
  static AttentionPattern custom(std::function<bool(std::int64_t q, std::int64_t k)> predicate);
};

/// Half-open range [begin, end) of visible key slots.
struct KeyRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  friend bool operator==(const KeyRange&, const KeyRange&) = default;
};

/// The compact form a kernel can consume without a dense matrix (CSR-like): row i
/// (= b * q_len + r) sees the keys of ranges[row_offsets[i] .. row_offsets[i+1]). Ranges of a row
/// are sorted, non-empty, disjoint and non-adjacent (merged).
struct MaskRanges {
  std::int64_t batch = 1;
  std::int64_t q_len = 0;
  std::int64_t k_len = 0;
  std::vector<std::int64_t> row_offsets;  ///< batch * q_len + 1 entries, row_offsets[0] = 0
  std::vector<KeyRange> ranges;

  std::int64_t rows() const noexcept { return batch * q_len; }
  /// The ranges of query row r of sequence b (bounds-checked).
  std::span<const KeyRange> row(std::int64_t b, std::int64_t r) const;
  /// Whether query row r of sequence b sees key slot k (binary search; bounds-checked).
  bool visible(std::int64_t b, std::int64_t r, std::int64_t k) const;
};

/// Dense additive mask [batch, q_len, k_len], row-major: 0.0f = visible, -inf = masked.
struct DenseMask {
  std::int64_t batch = 1;
  std::int64_t q_len = 0;
  std::int64_t k_len = 0;
  std::vector<float> values;

  float at(std::int64_t b, std::int64_t r, std::int64_t k) const;
};

/// What a row that sees no key becomes.
enum class EmptyRows : std::uint8_t {
  masked,       ///< stays all -inf / no ranges (the caller discards padding rows)
  all_visible,  ///< sees every key slot, padding included (ChatGLM2/3 remote code)
};

/// Shape of a batched mask call.
struct MaskGeometry {
  std::int64_t batch = 1;
  std::int64_t q_len = 0;
  std::int64_t k_len = 0;
  /// Padding, [batch * k_len] 0/1 per key slot (1 = real token; e.g. BatchPositions::valid).
  /// It masks padding keys and the query rows at padding slots. Empty: no padding.
  std::vector<std::uint8_t> valid;
  EmptyRows empty_rows = EmptyRows::masked;
};

/// Largest dense mask (elements) and largest number of custom-predicate calls one call may
/// make: 2^30 floats are 4 GiB, beyond any sensible host-side mask.
inline constexpr std::int64_t max_dense_mask_elements = std::int64_t{1} << 30;
inline constexpr std::int64_t max_predicate_calls = std::int64_t{1} << 32;

/// Visible key ranges of one sequence: q_len queries (the last q_len slots) over k_len keys.
MaskRanges mask_ranges(const AttentionPattern& pattern, std::int64_t q_len, std::int64_t k_len);
/// Batched: `patterns` holds one pattern shared by all sequences or one per sequence.
MaskRanges mask_ranges(std::span<const AttentionPattern> patterns, const MaskGeometry& geometry);

/// The dense additive mask, expanded from mask_ranges (so the two agree by construction).
DenseMask dense_mask(const AttentionPattern& pattern, std::int64_t q_len, std::int64_t k_len);
DenseMask dense_mask(std::span<const AttentionPattern> patterns, const MaskGeometry& geometry);
/// Expands ranges to the dense additive mask (checks the element limit).
DenseMask to_dense(const MaskRanges& ranges);

// ------------------------------------------------------------------------------------------------
// Original GLM: blank infilling (§7.1)
// ------------------------------------------------------------------------------------------------

/// Which mask token replaces a span in Part A.
enum class BlankKind : std::uint8_t { mask, smask, gmask };

/// A span of the text to blank out: tokens [start, start + length).
struct BlankSpan {
  std::int64_t start = 0;
  std::int64_t length = 0;
  BlankKind kind = BlankKind::mask;
};

/// One pretraining sample (GLM `make_block_data`). Layout: Part A (the text with each span
/// replaced by one mask token), then Part B (for each span in the chosen order: <sop> + span).
struct BlankInfillingSample {
  std::vector<TokenId> tokens;  ///< Part A then Part B
  /// Next-token targets: Part A repeats its own tokens (loss_mask 0); each Part B block
  /// `<sop> s1 .. sn` has targets `s1 .. sn <eop>` (loss_mask 1).
  std::vector<TokenId> targets;
  std::vector<std::uint8_t> loss_mask;
  /// 2 streams. Stream 0: Part A token = its index in Part A; Part B tokens of span j = the
  /// index of span j's mask in Part A. Stream 1 (block position): 0 in Part A, 1 .. length+1
  /// within each Part B block.
  PositionIds positions;
  std::int64_t sep = 0;                      ///< len(Part A); the mask is prefix_lm(sep)
  std::vector<std::int64_t> mask_positions;  ///< per input span: index of its mask in Part A
  std::vector<std::int64_t> block_starts;    ///< per Part B block, in order: index of its <sop>

  AttentionPattern attention() const { return AttentionPattern::prefix_lm(sep); }
};

/// Builds a blank-infilling sample. `spans` in any order (at least one; each non-empty, inside
/// the text, none overlapping); `part_b_order` lists span indices in Part B order (a
/// permutation; empty = the order of `spans`). Uses tokens.mask/smask/gmask, sop and eop.
BlankInfillingSample make_blank_infilling(std::span<const TokenId> text,
                                          std::span<const BlankSpan> spans,
                                          std::span<const std::int64_t> part_b_order,
                                          const GlmSpecialTokens& tokens);

/// Inference on a context that contains mask tokens (GLM `generate_samples.py`): the context
/// is processed once with positions arange(len), block 0 and sep = len.
struct BlankInfillingContext {
  PositionIds positions;                     ///< 2 streams: arange, 0
  std::int64_t sep = 0;                      ///< len(context)
  std::vector<std::int64_t> mask_positions;  ///< sorted indices of [MASK]/[sMASK]/[gMASK]
};

/// Throws when the context holds no mask token (the message names the ids searched for).
BlankInfillingContext blank_infilling_context(std::span<const TokenId> context,
                                              const GlmSpecialTokens& tokens);

/// Generating into the mask at `mask_position`: `count` tokens (<sop> first, then the generated
/// ones) all at position mask_position, block positions first_block, first_block+1, ...
/// (first_block = 1 for the <sop>; a decode step continues with the next block).
PositionIds blank_infilling_generation(std::int64_t mask_position, std::int64_t first_block,
                                       std::int64_t count);

// ------------------------------------------------------------------------------------------------
// GLM-130B (§7.2)
// ------------------------------------------------------------------------------------------------

/// 1-D positions of a GLM-130B input `context + <sop> + generated...`.
struct Glm130bPositions {
  PositionIds positions;           ///< 1 stream
  std::int64_t sop_index = 0;      ///< first <sop>; the bidirectional prefix is [0, sop_index)
  std::int64_t mask_position = 0;  ///< index of the generation mask in the context
  TokenId mask_token = no_token;   ///< which mask was chosen
  bool pinned = false;             ///< [MASK]/[sMASK]: positions from <sop> on = mask_position

  /// Position of the next token when `tokens_so_far` tokens exist: mask_position when pinned,
  /// else tokens_so_far.
  std::int64_t next_position(std::int64_t tokens_so_far) const;
  AttentionPattern attention() const { return AttentionPattern::prefix_lm(sop_index); }
};

/// GLM-130B generate.py: the generation mask is the first [MASK] in the context if any, else the
/// first [sMASK], else the first [gMASK]. Positions are arange; with [MASK]/[sMASK] those from
/// the <sop> index on are pinned to the mask position; with [gMASK] they continue. Throws when
/// there is no <sop> or no mask token before it.
Glm130bPositions glm130b_positions(std::span<const TokenId> tokens,
                                   const GlmSpecialTokens& special = GlmSpecialTokens::glm_130b());

// ------------------------------------------------------------------------------------------------
// ChatGLM-6B (§7.3): 2-D RoPE ids (position, block)
// ------------------------------------------------------------------------------------------------

/// Which mask token fixes the generation position when a prompt holds both.
enum class MaskTokenRule : std::uint8_t {
  /// The tokenizer (`_pad` / `get_position_ids` via the tokenizer): [MASK] if present, else
  /// [gMASK]. This is what the model sees whenever the tokenizer supplies position_ids.
  mask_first,
  /// The model-side fallback (`prepare_inputs_for_generation`, only when position_ids are not
  /// supplied): [gMASK] if present, else [MASK]. Disagrees with mask_first when both occur.
  gmask_first,
};

struct Position2d {
  std::int64_t position = 0;
  std::int64_t block = 0;
  friend bool operator==(const Position2d&, const Position2d&) = default;
};

/// ChatGLM-6B positions of `prompt [gMASK] <sop> generated...`.
struct ChatGlm6bPositions {
  /// 2 streams. position = arange with positions from context_length on set to mask_position;
  /// block = 0 before <sop>, 1, 2, ... from <sop> on.
  PositionIds positions;
  std::int64_t context_length = 0;  ///< index of the first <sop>; prefix is [0, context_length)
  std::int64_t mask_position = 0;
  TokenId mask_token = no_token;

  /// The ids of the token after the last one (decode: position unchanged, block + 1).
  Position2d next() const;
  AttentionPattern attention() const { return AttentionPattern::prefix_lm(context_length); }
};

/// Throws when there is no <sop> or no [MASK]/[gMASK] before it (names the ids searched for).
ChatGlm6bPositions chatglm6b_positions(
    std::span<const TokenId> tokens,
    const GlmSpecialTokens& special = GlmSpecialTokens::chatglm_6b(),
    MaskTokenRule rule = MaskTokenRule::mask_first);

/// One decode step: position unchanged, block + 1 (`_update_model_kwargs_for_generation`).
Position2d chatglm6b_decode_step(Position2d last);

/// A left-padded ChatGLM-6B batch as the tokenizer's `_pad` builds it: each row is
/// `pads + sequence`, pads get position 0 and block 0, and validity 0.
struct ChatGlm6bBatch {
  BatchPositions padded;                     ///< 2 streams over [batch * length]
  std::vector<std::int64_t> pad_counts;      ///< left pads per row
  std::vector<std::int64_t> prefix_lens;     ///< pads + context_length: prefix_lm per row in slots
  std::vector<std::int64_t> mask_positions;  ///< per row, unpadded

  /// One prefix_lm pattern per row, for mask_ranges with MaskGeometry::valid = padded.valid.
  std::vector<AttentionPattern> attention() const;
};

ChatGlm6bBatch chatglm6b_batch(std::span<const std::vector<TokenId>> sequences,
                               const GlmSpecialTokens& special = GlmSpecialTokens::chatglm_6b(),
                               MaskTokenRule rule = MaskTokenRule::mask_first);

// ------------------------------------------------------------------------------------------------
// ChatGLM2/3, GLM-4 and HF-native decoders (§7.4)
// ------------------------------------------------------------------------------------------------

/// HF `generate()` pad-slot fill value: 1 up to transformers v5.0, 0 from v5.3.
inline constexpr std::int64_t hf_pad_fill_v4 = 1;
inline constexpr std::int64_t hf_pad_fill_v5 = 0;

/// position = cumsum(mask) - 1 per row, padded slots = pad_fill. `mask` is [batch * length] 0/1.
/// Example: [[0,0,1,1,1],[1,1,1,1,1]] -> [[f,f,0,1,2],[0,1,2,3,4]].
BatchPositions positions_from_attention_mask(std::span<const std::uint8_t> mask, std::int64_t batch,
                                             std::int64_t length, std::int64_t pad_fill);

/// The positions of the next `new_tokens` tokens of each row after `mask`: count(real) + i.
/// Decode after the example above: [[3],[5]]. Result is [batch, new_tokens], all valid.
BatchPositions next_positions_from_attention_mask(std::span<const std::uint8_t> mask,
                                                  std::int64_t batch, std::int64_t length,
                                                  std::int64_t new_tokens = 1);

/// ChatGLM2/3 / GLM-4 tokenizer `_pad`: rows of the given lengths, left-padded to the longest,
/// real tokens 0..n-1, pads = pad_fill (the tokenizer uses 0).
BatchPositions left_padded_arange(std::span<const std::int64_t> lengths, std::int64_t pad_fill = 0);

// ------------------------------------------------------------------------------------------------
// M-RoPE: GLM-4.1V / GLM-4.5V, Qwen2-VL / Qwen2.5-VL / Qwen3-VL (§7.5)
// ------------------------------------------------------------------------------------------------

/// Where the text after a vision block starts.
enum class NextTextStart : std::uint8_t {
  max_plus_one,    ///< transformers 4.x: max(all ids so far) + 1 (includes the temporal extent)
  spatial_extent,  ///< transformers v5.3+: block start + max(H', W') (ignores T)
};

/// A vision block as HF's grid_thw gives it (before the spatial merge): `t` temporal patches of
/// an h x w patch grid; the LLM sees t * (h/merge) * (w/merge) tokens in (t, i, j) row-major order.
struct VisionGrid {
  std::int64_t t = 1;
  std::int64_t h = 0;
  std::int64_t w = 0;
  std::int64_t spatial_merge_size = 2;
  /// t-id of temporal index ti = start + ti * temporal_interval (Qwen2-VL: 1; Qwen2.5-VL v5.15
  /// video: tokens_per_second * int(second_per_grid_t)).
  std::int64_t temporal_interval = 1;
  /// When > 0, replaces temporal_interval by Qwen2.5-VL 4.x's float rule:
  /// t-id = start + int64(float32(float32(ti) * seconds_per_grid) * tokens_per_second).
  /// Both rates must be finite and not negative; an offset past int64 is Error(overflow).
  float seconds_per_grid = 0.0f;
  float tokens_per_second = 0.0f;

  /// t * (h / merge) * (w / merge); throws on a bad grid.
  std::int64_t llm_tokens() const;
};

/// A piece of an M-RoPE sequence: a run of text tokens or one vision block.
struct MropeSegment {
  bool is_vision = false;
  std::int64_t text_tokens = 0;  ///< text run length (>= 1) when !is_vision
  VisionGrid grid;               ///< when is_vision

  static MropeSegment text(std::int64_t n);
  static MropeSegment vision(const VisionGrid& grid);
};

/// 3-stream (t, h, w) ids of one unpadded sequence.
struct MropePositions {
  PositionIds positions;           ///< 3 streams
  std::int64_t rope_delta = 0;     ///< max(ids) + 1 - tokens (HF v5 convention, unpadded length)
  std::int64_t next_position = 0;  ///< where text would continue: tokens + rope_delta
};

/// Text runs advance by 1 on all axes; a vision block starting at s gets t-id s + temporal
/// offset, h-id s + i, w-id s + j; the next text starts per `rule`.
MropePositions mrope_positions(std::span<const MropeSegment> segments, NextTextStart rule);

/// The tokens that stand for vision patches in the LLM input.
struct VisionTokens {
  TokenId image = 151655;                   ///< Qwen2-VL <|image_pad|>
  TokenId video = 151656;                   ///< Qwen2-VL <|video_pad|>
  static VisionTokens qwen2_vl() noexcept;  ///< image 151655, video 151656 (also 2.5-VL, 3-VL)
  static VisionTokens glm4v() noexcept;     ///< GLM-4.1V / 4.5V: image 151343, video 151344
};

/// How a video's patches appear in the token sequence.
enum class VideoLayout : std::uint8_t {
  whole,      ///< one block of t * H' * W' tokens (Qwen2-VL, Qwen2.5-VL)
  per_frame,  ///< t separate frame groups of H' * W' tokens, each a t = 1 block, text may sit
              ///< between them (GLM-4.1V/4.5V v5.3+, Qwen3-VL)
};

/// Scans `tokens` for runs of image/video tokens and consumes `image_grids` / `video_grids` in
/// order; each run must hold exactly its grid's token count. Throws naming the index when a run
/// is too short, when grids run out, or when grids are left over.
MropePositions mrope_positions_from_tokens(std::span<const TokenId> tokens,
                                           const VisionTokens& vision,
                                           std::span<const VisionGrid> image_grids,
                                           std::span<const VisionGrid> video_grids,
                                           NextTextStart rule,
                                           VideoLayout video_layout = VideoLayout::whole);

/// Decode ids: `count` tokens after `past_len` tokens, all three axes = past_len + rope_delta + i.
PositionIds mrope_decode_positions(std::int64_t past_len, std::int64_t rope_delta,
                                   std::int64_t count);

/// glm-4v-9b (remote code): the single placeholder between <|begin_of_image|> and
/// <|end_of_image|> expands to `num_patches` embeddings that all take position boi + 1;
/// <|end_of_image|> and the text after it keep their original positions.
struct Glm4vRemotePositions {
  PositionIds positions;       ///< 1 stream, tokens - 1 + num_patches entries
  std::int64_t boi_index = 0;  ///< index of <|begin_of_image|> (same in input and output)
  std::int64_t num_patches = 0;
  /// Decode: next position = tokens_in_cache + rope_delta (= original token count).
  std::int64_t rope_delta = 0;
};

/// Throws when <|begin_of_image|> is missing or <|end_of_image|> is not exactly two after it.
Glm4vRemotePositions glm4v_remote_positions(
    std::span<const TokenId> tokens, std::int64_t num_patches,
    const GlmSpecialTokens& special = GlmSpecialTokens::glm4());

// ------------------------------------------------------------------------------------------------
// Continuous batching: PositionTracker
// ------------------------------------------------------------------------------------------------

/// `pin_from` value meaning "never pinned".
inline constexpr std::int64_t never_pinned = std::numeric_limits<std::int64_t>::max();

/// The per-sequence state. One rule covers every scheme: a token at absolute index n (n tokens
/// precede it in the sequence) gets
///
///   position(n) = n < pin_from ? n + rope_delta : pin_value
///   block(n)    = n < pin_from ? 0 : n - pin_from + 1          (stream 1 of 2-stream trackers)
///
/// and a 3-stream tracker writes position(n) to all three axes (M-RoPE text / decode).
///   plain decoders                 rope_delta 0, never pinned
///   M-RoPE after a vision prefill  length = prompt tokens, rope_delta from mrope_positions
///   glm-4v-9b after its prefill    rope_delta = 1 - num_patches
///   ChatGLM-6B                     pin_from = context_length, pin_value = mask_position
///   GLM-130B with [MASK]/[sMASK]   pin_from = sop_index, pin_value = mask_position
///   blank-infilling generation     pin_from = where <sop> goes, pin_value = the mask position
struct SequenceState {
  std::int64_t length = 0;  ///< tokens already in the sequence (KV cache)
  std::int64_t rope_delta = 0;
  std::int64_t pin_from = never_pinned;
  std::int64_t pin_value = 0;
  friend bool operator==(const SequenceState&, const SequenceState&) = default;
};

SequenceState tracker_state(const ChatGlm6bPositions& prompt);
SequenceState tracker_state(const Glm130bPositions& prompt);
SequenceState tracker_state(const MropePositions& prompt);
SequenceState tracker_state(const Glm4vRemotePositions& prompt);

/// One entry of a step: `new_tokens` tokens for sequence `seq_id` (a prefill chunk, or 1).
struct StepEntry {
  std::int64_t seq_id = 0;
  std::int64_t new_tokens = 1;
};

/// Host-side position bookkeeping for continuous batching.
///
/// Step contract (what a device mirror must reproduce): for entries e = 0..E-1 in the given
/// order, let o_e = sum of new_tokens of entries before e and s = slot_of(seq_id_e). Output token
/// o_e + j (j = 0..new_tokens_e - 1) is token n = lengths[s] + j of that sequence and gets
/// position(n) / block(n) of SequenceState's rule, written stream-major into a PositionIds of
/// sum(new_tokens) tokens. Every value must lie in [0, position_limit). Then lengths[s] +=
/// new_tokens_e. A step that throws changes nothing.
///
/// State is five parallel arrays indexed by slot (seq_ids, lengths, rope_deltas, pin_froms,
/// pin_values) so a device copy is a plain memcpy. add_sequence appends a slot; remove_sequence
/// moves the last slot into the freed one (slot_of changes for that one sequence).
class PositionTracker {
 public:
  /// `streams` 1 (plain, GLM-130B), 2 (ChatGLM-6B, blank infilling) or 3 (M-RoPE);
  /// `position_limit` > 0 (the model's max positions, e.g. RopeSpec::position_limit).
  PositionTracker(int streams, std::int64_t position_limit);

  int streams() const noexcept { return streams_; }
  std::int64_t position_limit() const noexcept { return position_limit_; }
  std::int64_t size() const noexcept { return static_cast<std::int64_t>(seq_ids_.size()); }

  /// Throws when seq_id is already tracked or the state is invalid (negative length, pin_from
  /// negative).
  void add_sequence(std::int64_t seq_id, const SequenceState& state = {});
  /// Throws when seq_id is not tracked.
  void remove_sequence(std::int64_t seq_id);
  bool contains(std::int64_t seq_id) const noexcept;
  std::int64_t slot_of(std::int64_t seq_id) const;
  SequenceState state(std::int64_t seq_id) const;
  /// Re-pins a sequence from its current length (blank infilling: the next span); its block
  /// position restarts at 1.
  void pin(std::int64_t seq_id, std::int64_t pin_value);

  /// Positions of the step, then commits the lengths. Throws (changing nothing) on an unknown or
  /// repeated seq_id, new_tokens < 1, or any position outside [0, position_limit); every id is
  /// checked before the output is allocated, so a refused step allocates nothing of its size.
  PositionIds step(std::span<const StepEntry> entries);
  /// The same positions without committing.
  PositionIds peek(std::span<const StepEntry> entries) const;

  std::span<const std::int64_t> seq_ids() const noexcept { return seq_ids_; }
  std::span<const std::int64_t> lengths() const noexcept { return lengths_; }
  std::span<const std::int64_t> rope_deltas() const noexcept { return rope_deltas_; }
  std::span<const std::int64_t> pin_froms() const noexcept { return pin_froms_; }
  std::span<const std::int64_t> pin_values() const noexcept { return pin_values_; }

 private:
  int streams_;
  std::int64_t position_limit_;
  std::vector<std::int64_t> seq_ids_;
  std::vector<std::int64_t> lengths_;
  std::vector<std::int64_t> rope_deltas_;
  std::vector<std::int64_t> pin_froms_;
  std::vector<std::int64_t> pin_values_;
  std::unordered_map<std::int64_t, std::int64_t> slots_;
};

// ------------------------------------------------------------------------------------------------
// What a model type implies (for `posenc info`)
// ------------------------------------------------------------------------------------------------

/// A short description of one GLM generation's position handling.
struct GlmScheme {
  std::string generation;       ///< "ChatGLM-6B", "GLM-4 (HF glm)", ...
  std::string position_scheme;  ///< e.g. "2-D (position, block): position pinned at the mask ..."
  std::string mask_pattern;     ///< e.g. "prefix-LM: bidirectional before <sop>, causal after"
  std::string rotation;         ///< pairing and rotary window
  int streams = 1;              ///< position streams the engines take
  MaskPattern mask = MaskPattern::causal;
};

/// The scheme a config's model_type implies. "chatglm" is ChatGLM-6B when position_encoding_2d
/// (its config key) is true, else ChatGLM2/3 / GLM-4 remote code. Known: glm (HF GLM-4-9B-hf),
/// glm4, glm4_moe, glm4v, glm4v_moe, glm4_moe_lite, glm_moe_dsa, chatglm, glm-130b,
/// glm-blank-infilling (the original GLM). Throws Error(config) naming the value otherwise.
GlmScheme glm_scheme_for(std::string_view model_type, bool position_encoding_2d = false);

}  // namespace posenc::glm
