//! GLM position ids of every generation, M-RoPE streams and attention masks: posenc's own builders (posenc::glm) through the C ABI.
//!
//! Each builder returns a [`GlmPositions`]: the ids (stream-major [`PositionIds`], ready for an
//! engine call through [`PositionIds::positions`]), what the rules found in the tokens, and where
//! there is one the [`SequenceState`] a [`crate::PositionTracker`] continues the sequence from.
//! [`Mask`] builds attention masks from [`AttentionPattern`]s: per-row key ranges or the dense
//! additive mask. include/posenc/glm.hpp and docs/GLM.md hold the full rules.

use std::any::Any;
use std::os::raw::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use crate::tracker::{PositionIds, SequenceState};
use crate::{check, create, sys, Error, Result, Status};

/// "This generation has no such token."
pub const NO_TOKEN: i64 = sys::POSENC_GLM_NO_TOKEN;

c_enum!(
    /// The vocabularies whose special tokens [`SpecialTokens::of`] knows.
    Vocabulary {
        ChatGlm6b = sys::POSENC_GLM_TOKENS_CHATGLM_6B,
        ChatGlm6bFirstRelease = sys::POSENC_GLM_TOKENS_CHATGLM_6B_FIRST_RELEASE,
        Glm130b = sys::POSENC_GLM_TOKENS_GLM_130B,
        ChatGlm2 = sys::POSENC_GLM_TOKENS_CHATGLM2,
        Glm4 = sys::POSENC_GLM_TOKENS_GLM4,
    }
);
c_enum!(
    /// Which mask token fixes ChatGLM-6B's generation position when a prompt holds both.
    MaskTokenRule { MaskFirst = sys::POSENC_GLM_RULE_MASK_FIRST, GmaskFirst = sys::POSENC_GLM_RULE_GMASK_FIRST }
);
c_enum!(
    /// Where M-RoPE text after a vision block starts (transformers 4.x / 5.3+).
    NextTextStart {
        MaxPlusOne = sys::POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE,
        SpatialExtent = sys::POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT,
    }
);
c_enum!(
    /// How a video's patches appear in the tokens.
    VideoLayout { Whole = sys::POSENC_GLM_VIDEO_WHOLE, PerFrame = sys::POSENC_GLM_VIDEO_PER_FRAME }
);
c_enum!(
    /// The model families whose vision tokens [`VisionTokens::of`] knows.
    VisionFamily { Qwen2Vl = sys::POSENC_GLM_VISION_QWEN2_VL, Glm4v = sys::POSENC_GLM_VISION_GLM4V }
);
c_enum!(
    /// What a mask row that sees no key becomes.
    EmptyRows { Masked = sys::POSENC_GLM_EMPTY_ROWS_MASKED, AllVisible = sys::POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE }
);

/// The special token ids the position rules look for ([`NO_TOKEN`]: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub mask: i64,
    pub gmask: i64,
    pub smask: i64,
    pub sop: i64,
    pub eop: i64,
    pub begin_of_image: i64,
    pub end_of_image: i64,
}

impl SpecialTokens {
    pub fn of(vocabulary: Vocabulary) -> Result<SpecialTokens> {
        let mut raw = sys::posenc_glm_special_tokens::make();
        check(unsafe { sys::posenc_glm_special_tokens_get(vocabulary.to_raw(), &mut raw) })?;
        Ok(SpecialTokens {
            mask: raw.mask,
            gmask: raw.gmask,
            smask: raw.smask,
            sop: raw.sop,
            eop: raw.eop,
            begin_of_image: raw.begin_of_image,
            end_of_image: raw.end_of_image,
        })
    }

    fn to_raw(self) -> sys::posenc_glm_special_tokens {
        let mut raw = sys::posenc_glm_special_tokens::make();
        raw.mask = self.mask;
        raw.gmask = self.gmask;
        raw.smask = self.smask;
        raw.sop = self.sop;
        raw.eop = self.eop;
        raw.begin_of_image = self.begin_of_image;
        raw.end_of_image = self.end_of_image;
        raw
    }
}

/// The tokens that stand for image and video patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionTokens {
    pub image: i64,
    pub video: i64,
}

impl VisionTokens {
    pub fn of(family: VisionFamily) -> Result<VisionTokens> {
        let mut raw = sys::posenc_glm_vision_tokens::make();
        check(unsafe { sys::posenc_glm_vision_tokens_get(family.to_raw(), &mut raw) })?;
        Ok(VisionTokens { image: raw.image, video: raw.video })
    }
}

/// A vision block as Hugging Face's grid_thw gives it (before the spatial merge).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VisionGrid {
    pub t: i64,
    pub h: i64,
    pub w: i64,
    pub spatial_merge_size: i64,
    /// t-id step between temporal patches.
    pub temporal_interval: i64,
    /// When > 0, Qwen2.5-VL 4.x's float rule replaces `temporal_interval`.
    pub seconds_per_grid: f32,
    pub tokens_per_second: f32,
}

impl VisionGrid {
    /// A t x h x w grid, merge 2, interval 1.
    pub fn new(t: i64, h: i64, w: i64) -> VisionGrid {
        let raw = sys::posenc_glm_vision_grid::make(t, h, w);
        VisionGrid {
            t,
            h,
            w,
            spatial_merge_size: raw.spatial_merge_size,
            temporal_interval: raw.temporal_interval,
            seconds_per_grid: 0.0,
            tokens_per_second: 0.0,
        }
    }

    fn to_raw(self) -> sys::posenc_glm_vision_grid {
        let mut raw = sys::posenc_glm_vision_grid::make(self.t, self.h, self.w);
        raw.spatial_merge_size = self.spatial_merge_size;
        raw.temporal_interval = self.temporal_interval;
        raw.seconds_per_grid = self.seconds_per_grid;
        raw.tokens_per_second = self.tokens_per_second;
        raw
    }
}

/// A piece of an M-RoPE sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MropeSegment {
    /// A run of text tokens.
    Text(i64),
    Vision(VisionGrid),
}

/// What a builder produced. Fields a builder does not set are 0 (`mask_token`: [`NO_TOKEN`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlmPositions {
    /// 1, 2 (position, block) or 3 (M-RoPE t, h, w) streams over all tokens of the call.
    pub ids: PositionIds,
    /// Rows of a left-padded batch (1 for a single sequence); token (b, t) is b * length + t.
    pub batch: i64,
    pub length: i64,
    /// batch * length, 1 = real token; `None`: all real.
    pub valid: Option<Vec<u8>>,
    /// The bidirectional prefix (ChatGLM-6B context_length, GLM-130B sop_index, blank infilling sep).
    pub prefix_len: i64,
    /// ChatGLM-6B, GLM-130B: the generation mask's index and token.
    pub mask_position: i64,
    pub mask_token: i64,
    /// GLM-130B: positions from <sop> on are pinned to the mask.
    pub pinned: bool,
    /// M-RoPE, glm-4v-9b: a later token at index n has position n + rope_delta.
    pub rope_delta: i64,
    /// Single sequences: the ids of the token after the last.
    pub next_position: i64,
    pub next_block: i64,
    /// glm-4v-9b.
    pub boi_index: i64,
    pub num_patches: i64,
    /// Blank infilling context: its mask indices; ChatGLM-6B batch: per row.
    pub mask_positions: Vec<i64>,
    /// ChatGLM-6B batch, per row: left pads, and the prefix_lm length in slots.
    pub pad_counts: Vec<i64>,
    pub prefix_lens: Vec<i64>,
    /// How a [`crate::PositionTracker`] continues this prompt (ChatGLM-6B, GLM-130B, M-RoPE and
    /// glm-4v-9b prompts).
    pub tracker_state: Option<SequenceState>,
}

/// Copies `count` elements the library handed out (none for NULL).
///
/// # Safety
/// `p` is NULL or points at `count` initialized elements.
unsafe fn copy_out<T: Copy>(p: *const T, count: i64) -> Vec<T> {
    if p.is_null() || count <= 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(p, count as usize).to_vec()
    }
}

/// Runs a builder and copies its result out of the handle, which is destroyed on every path.
fn build(f: impl FnOnce(*mut *mut sys::posenc_glm_positions) -> sys::posenc_status) -> Result<GlmPositions> {
    struct Owned(*mut sys::posenc_glm_positions);
    impl Drop for Owned {
        fn drop(&mut self) {
            unsafe { sys::posenc_glm_positions_destroy(self.0) }
        }
    }
    let handle = Owned(create(f)?.as_ptr());
    let mut i = sys::posenc_glm_positions_info::make();
    check(unsafe { sys::posenc_glm_positions_get_info(handle.0, &mut i) })?;
    let mut raw_state = sys::posenc_sequence_state::make();
    let status = unsafe { sys::posenc_glm_positions_tracker_state(handle.0, &mut raw_state) };
    let tracker_state = match status {
        sys::POSENC_OK => Some(SequenceState::from_raw(&raw_state)),
        sys::POSENC_ERROR_INVALID_ARGUMENT => None, // this builder's results continue no sequence
        other => {
            check(other)?;
            None
        }
    };
    // SAFETY: the info's arrays hold the counts it states and live as long as the handle.
    unsafe {
        Ok(GlmPositions {
            ids: PositionIds {
                streams: i.streams,
                tokens: i.tokens,
                values: copy_out(i.values, i64::from(i.streams) * i.tokens),
            },
            batch: i.batch,
            length: i.length,
            valid: if i.valid.is_null() { None } else { Some(copy_out(i.valid, i.batch * i.length)) },
            prefix_len: i.prefix_len,
            mask_position: i.mask_position,
            mask_token: i.mask_token,
            pinned: i.pinned != 0,
            rope_delta: i.rope_delta,
            next_position: i.next_position,
            next_block: i.next_block,
            boi_index: i.boi_index,
            num_patches: i.num_patches,
            mask_positions: copy_out(i.mask_positions, i.mask_position_count),
            pad_counts: copy_out(i.pad_counts, if i.pad_counts.is_null() { 0 } else { i.batch }),
            prefix_lens: copy_out(i.prefix_lens, if i.prefix_lens.is_null() { 0 } else { i.batch }),
            tracker_state,
        })
    }
}

fn special_ptr(special: &Option<sys::posenc_glm_special_tokens>) -> *const sys::posenc_glm_special_tokens {
    special.as_ref().map_or(ptr::null(), |s| s as *const _)
}

/// A padded batch's mask must hold batch * length entries: the library reads that many.
fn check_mask_len(what: &str, mask: &[u8], batch: i64, length: i64) -> Result<()> {
    if batch < 0 || length < 0 {
        return Ok(()); // the library names the negative size
    }
    match batch.checked_mul(length) {
        Some(n) if n == mask.len() as i64 => Ok(()),
        Some(n) => Err(Error::new(
            Status::InvalidArgument,
            format!("{}: mask has {} entries; batch {} x length {} needs {}", what, mask.len(), batch, length, n),
        )),
        None => Err(Error::new(Status::Overflow, format!("{}: batch {} x length {} overflows i64", what, batch, length))),
    }
}

/// Plain 1-D positions past_len .. past_len + count - 1.
pub fn arange(past_len: i64, count: i64) -> Result<GlmPositions> {
    build(|out| unsafe { sys::posenc_glm_arange(past_len, count, out) })
}

/// ChatGLM2/3 / GLM-4 tokenizer padding: rows left-padded to the longest, real tokens 0 .. n-1.
pub fn left_padded_arange(lengths: &[i64], pad_fill: i64) -> Result<GlmPositions> {
    build(|out| unsafe { sys::posenc_glm_left_padded_arange(lengths.as_ptr(), lengths.len(), pad_fill, out) })
}

/// Hugging Face position ids from a 0/1 attention mask `[batch * length]`: cumsum - 1, pads `pad_fill`.
pub fn positions_from_attention_mask(mask: &[u8], batch: i64, length: i64, pad_fill: i64) -> Result<GlmPositions> {
    check_mask_len("positions_from_attention_mask", mask, batch, length)?;
    build(|out| unsafe { sys::posenc_glm_positions_from_attention_mask(mask.as_ptr(), batch, length, pad_fill, out) })
}

/// The positions of the next `new_tokens` tokens of each row after `mask` (decode).
pub fn next_positions_from_attention_mask(mask: &[u8], batch: i64, length: i64, new_tokens: i64) -> Result<GlmPositions> {
    check_mask_len("next_positions_from_attention_mask", mask, batch, length)?;
    build(|out| unsafe {
        sys::posenc_glm_next_positions_from_attention_mask(mask.as_ptr(), batch, length, new_tokens, out)
    })
}

/// ChatGLM-6B's 2-D ids of `prompt [gMASK] <sop> ...` (`special` None: ChatGLM-6B's vocabulary).
pub fn chatglm6b_positions(tokens: &[i64], special: Option<&SpecialTokens>, rule: MaskTokenRule) -> Result<GlmPositions> {
    let raw = special.map(|s| s.to_raw());
    build(|out| unsafe {
        sys::posenc_glm_chatglm6b_positions(tokens.as_ptr(), tokens.len(), special_ptr(&raw), rule.to_raw(), out)
    })
}

/// A left-padded ChatGLM-6B batch as its tokenizer builds it.
pub fn chatglm6b_batch<R: AsRef<[i64]>>(
    rows: &[R],
    special: Option<&SpecialTokens>,
    rule: MaskTokenRule,
) -> Result<GlmPositions> {
    let lengths: Vec<i64> = rows.iter().map(|r| r.as_ref().len() as i64).collect();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.as_ref().iter().copied()).collect();
    let raw = special.map(|s| s.to_raw());
    build(|out| unsafe {
        sys::posenc_glm_chatglm6b_batch(
            flat.as_ptr(),
            lengths.as_ptr(),
            lengths.len(),
            special_ptr(&raw),
            rule.to_raw(),
            out,
        )
    })
}

/// GLM-130B's 1-D ids, pinned at a [MASK]/[sMASK] from <sop> on (`special` None: GLM-130B's).
pub fn glm130b_positions(tokens: &[i64], special: Option<&SpecialTokens>) -> Result<GlmPositions> {
    let raw = special.map(|s| s.to_raw());
    build(|out| unsafe { sys::posenc_glm_glm130b_positions(tokens.as_ptr(), tokens.len(), special_ptr(&raw), out) })
}

/// The original GLM's inference context: (arange, 0), sep = its length, its mask indices.
pub fn blank_infilling_context(tokens: &[i64], special: &SpecialTokens) -> Result<GlmPositions> {
    let raw = special.to_raw();
    build(|out| unsafe { sys::posenc_glm_blank_infilling_context(tokens.as_ptr(), tokens.len(), &raw, out) })
}

/// Generating into the mask at `mask_position`: blocks first_block, first_block + 1, ...
pub fn blank_infilling_generation(mask_position: i64, first_block: i64, count: i64) -> Result<GlmPositions> {
    build(|out| unsafe { sys::posenc_glm_blank_infilling_generation(mask_position, first_block, count, out) })
}

/// M-RoPE (t, h, w) ids of one sequence from its text runs and vision blocks.
pub fn mrope_positions(segments: &[MropeSegment], rule: NextTextStart) -> Result<GlmPositions> {
    let mut grids = Vec::new();
    let raw_segments: Vec<sys::posenc_glm_mrope_segment> = segments
        .iter()
        .map(|s| match s {
            MropeSegment::Text(n) => sys::posenc_glm_mrope_segment { kind: sys::POSENC_GLM_SEGMENT_TEXT, reserved: 0, value: *n },
            MropeSegment::Vision(g) => {
                grids.push(g.to_raw());
                sys::posenc_glm_mrope_segment {
                    kind: sys::POSENC_GLM_SEGMENT_VISION,
                    reserved: 0,
                    value: grids.len() as i64 - 1,
                }
            }
        })
        .collect();
    build(|out| unsafe {
        sys::posenc_glm_mrope_positions(
            raw_segments.as_ptr(),
            raw_segments.len(),
            grids.as_ptr(),
            grids.len(),
            rule.to_raw(),
            out,
        )
    })
}

/// The same from token ids: runs of vision tokens consume the grids in order.
pub fn mrope_positions_from_tokens(
    tokens: &[i64],
    vision: &VisionTokens,
    image_grids: &[VisionGrid],
    video_grids: &[VisionGrid],
    rule: NextTextStart,
    video_layout: VideoLayout,
) -> Result<GlmPositions> {
    let mut raw_vision = sys::posenc_glm_vision_tokens::make();
    raw_vision.image = vision.image;
    raw_vision.video = vision.video;
    let images: Vec<_> = image_grids.iter().map(|g| g.to_raw()).collect();
    let videos: Vec<_> = video_grids.iter().map(|g| g.to_raw()).collect();
    build(|out| unsafe {
        sys::posenc_glm_mrope_positions_from_tokens(
            tokens.as_ptr(),
            tokens.len(),
            &raw_vision,
            images.as_ptr(),
            images.len(),
            videos.as_ptr(),
            videos.len(),
            rule.to_raw(),
            video_layout.to_raw(),
            out,
        )
    })
}

/// M-RoPE decode: `count` tokens after `past_len`, all axes past_len + rope_delta + i.
pub fn mrope_decode_positions(past_len: i64, rope_delta: i64, count: i64) -> Result<GlmPositions> {
    build(|out| unsafe { sys::posenc_glm_mrope_decode_positions(past_len, rope_delta, count, out) })
}

/// glm-4v-9b (remote code): the image placeholder expands to `num_patches` ids at boi + 1.
pub fn glm4v_remote_positions(tokens: &[i64], num_patches: i64, special: Option<&SpecialTokens>) -> Result<GlmPositions> {
    let raw = special.map(|s| s.to_raw());
    build(|out| unsafe {
        sys::posenc_glm_glm4v_remote_positions(tokens.as_ptr(), tokens.len(), num_patches, special_ptr(&raw), out)
    })
}

// ------------------------------------------------------------------------------------------------
// Attention masks
// ------------------------------------------------------------------------------------------------

/// Whether query slot q may attend to key slot k (q_len queries are the last q_len of k_len slots).
pub enum AttentionPattern<'a> {
    /// k <= q
    Causal,
    Bidirectional,
    /// k < prefix_len || k <= q
    PrefixLm(i64),
    /// q - window < k <= q
    LocalWindow(i64),
    /// k <= q && (global(q) || global(k) || q - k < window)
    GlobalLocal { global_positions: Vec<i64>, window: i64 },
    /// Called for every (q, k) of the call; a panic in it is resumed after the library returns.
    Custom(&'a dyn Fn(i64, i64) -> bool),
}

/// The shape of a mask call; `valid` (batch * k_len, 1 = real token) masks padding.
#[derive(Clone, Copy, Debug)]
pub struct MaskGeometry<'a> {
    pub batch: i64,
    pub q_len: i64,
    pub k_len: i64,
    pub valid: Option<&'a [u8]>,
    pub empty_rows: EmptyRows,
}

impl<'a> MaskGeometry<'a> {
    /// One sequence, no padding.
    pub fn new(q_len: i64, k_len: i64) -> MaskGeometry<'a> {
        MaskGeometry { batch: 1, q_len, k_len, valid: None, empty_rows: EmptyRows::Masked }
    }
}

/// Visible key slots [begin, end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub begin: i64,
    pub end: i64,
}

/// An attention mask: row i = b * q_len + r sees the key slots of its ranges (sorted, disjoint,
/// not adjacent).
pub struct Mask {
    raw: NonNull<sys::posenc_glm_mask>,
    pub batch: i64,
    pub q_len: i64,
    pub k_len: i64,
    pub row_offsets: Vec<i64>,
    pub ranges: Vec<KeyRange>,
}

// SAFETY: a mask is immutable after creation; the C ABI allows concurrent use of const handles.
unsafe impl Send for Mask {}
unsafe impl Sync for Mask {}

impl Drop for Mask {
    fn drop(&mut self) {
        unsafe { sys::posenc_glm_mask_destroy(self.raw.as_ptr()) }
    }
}

/// A custom pattern's closure as the library calls it, and the panic it raised.
struct Predicate<'a> {
    f: &'a dyn Fn(i64, i64) -> bool,
    panic: Option<Box<dyn Any + Send>>,
}

unsafe extern "C" fn call_predicate(context: *mut c_void, q: i64, k: i64) -> i32 {
    // SAFETY: the context is a Predicate that Mask::new keeps alive and unaliased during the call.
    let p = &mut *(context as *mut Predicate);
    if p.panic.is_some() {
        return 0;
    }
    match panic::catch_unwind(AssertUnwindSafe(|| (p.f)(q, k))) {
        Ok(visible) => i32::from(visible),
        Err(payload) => {
            p.panic = Some(payload); // no unwinding through the library
            0
        }
    }
}

impl Mask {
    /// `patterns`: one shared by all sequences, or one per sequence.
    pub fn new(patterns: &[AttentionPattern<'_>], geometry: &MaskGeometry<'_>) -> Result<Mask> {
        let batch = if geometry.batch == 0 { 1 } else { geometry.batch };
        if let Some(valid) = geometry.valid {
            if batch > 0 && geometry.k_len > 0 && batch.checked_mul(geometry.k_len) != Some(valid.len() as i64) {
                return Err(Error::new(
                    Status::InvalidArgument,
                    format!("Mask: valid has {} entries; batch {} x k_len {} needs them all", valid.len(), batch, geometry.k_len),
                ));
            }
        }
        let mut predicates: Vec<Predicate> = patterns
            .iter()
            .filter_map(|p| match p {
                AttentionPattern::Custom(f) => Some(Predicate { f: *f, panic: None }),
                _ => None,
            })
            .collect();
        let mut next_predicate = predicates.as_mut_ptr();
        let raw_patterns: Vec<sys::posenc_glm_attention_pattern> = patterns
            .iter()
            .map(|p| {
                let mut raw = sys::posenc_glm_attention_pattern::make();
                match p {
                    AttentionPattern::Causal => raw.kind = sys::POSENC_GLM_PATTERN_CAUSAL,
                    AttentionPattern::Bidirectional => raw.kind = sys::POSENC_GLM_PATTERN_BIDIRECTIONAL,
                    AttentionPattern::PrefixLm(n) => {
                        raw.kind = sys::POSENC_GLM_PATTERN_PREFIX_LM;
                        raw.prefix_len = *n;
                    }
                    AttentionPattern::LocalWindow(w) => {
                        raw.kind = sys::POSENC_GLM_PATTERN_LOCAL_WINDOW;
                        raw.window = *w;
                    }
                    AttentionPattern::GlobalLocal { global_positions, window } => {
                        raw.kind = sys::POSENC_GLM_PATTERN_GLOBAL_LOCAL;
                        raw.global_positions = global_positions.as_ptr();
                        raw.global_count = global_positions.len();
                        raw.window = *window;
                    }
                    AttentionPattern::Custom(_) => {
                        raw.kind = sys::POSENC_GLM_PATTERN_CUSTOM;
                        raw.predicate = Some(call_predicate);
                        raw.context = next_predicate as *mut c_void;
                        // The custom patterns' predicates, in order (the vector is not resized).
                        next_predicate = unsafe { next_predicate.add(1) };
                    }
                }
                raw
            })
            .collect();
        let mut raw_geometry = sys::posenc_glm_mask_geometry::make();
        raw_geometry.batch = geometry.batch;
        raw_geometry.q_len = geometry.q_len;
        raw_geometry.k_len = geometry.k_len;
        raw_geometry.valid = geometry.valid.map_or(ptr::null(), |v| v.as_ptr());
        raw_geometry.empty_rows = geometry.empty_rows.to_raw();
        let created = create(|out| unsafe {
            sys::posenc_glm_mask_create(raw_patterns.as_ptr(), raw_patterns.len(), &raw_geometry, out)
        });
        if let Some(payload) = predicates.iter_mut().find_map(|p| p.panic.take()) {
            if let Ok(raw) = created {
                unsafe { sys::posenc_glm_mask_destroy(raw.as_ptr()) }
            }
            panic::resume_unwind(payload);
        }
        let raw = created?;
        let mut info = sys::posenc_glm_mask_info::make();
        if let Err(e) = check(unsafe { sys::posenc_glm_mask_get_info(raw.as_ptr(), &mut info) }) {
            unsafe { sys::posenc_glm_mask_destroy(raw.as_ptr()) }
            return Err(e);
        }
        // SAFETY: the info's arrays hold rows + 1 offsets and range_count ranges while the handle lives.
        let (row_offsets, ranges) = unsafe {
            (
                copy_out(info.row_offsets, info.batch * info.q_len + 1),
                copy_out(info.ranges, info.range_count).into_iter().map(|r| KeyRange { begin: r.begin, end: r.end }).collect(),
            )
        };
        Ok(Mask { raw, batch: info.batch, q_len: info.q_len, k_len: info.k_len, row_offsets, ranges })
    }

    /// The visible ranges of query row `r` of sequence `b` (None outside the mask).
    pub fn row(&self, b: i64, r: i64) -> Option<&[KeyRange]> {
        if b < 0 || b >= self.batch || r < 0 || r >= self.q_len {
            return None;
        }
        let i = (b * self.q_len + r) as usize;
        Some(&self.ranges[self.row_offsets[i] as usize..self.row_offsets[i + 1] as usize])
    }

    /// Whether query row `r` of sequence `b` sees key slot `k`.
    pub fn visible(&self, b: i64, r: i64, k: i64) -> bool {
        self.row(b, r).map_or(false, |ranges| ranges.iter().any(|x| x.begin <= k && k < x.end))
    }

    /// The dense additive mask [batch, q_len, k_len]: 0.0 visible, -inf masked.
    pub fn dense(&self) -> Result<Vec<f32>> {
        let elements = self
            .batch
            .checked_mul(self.q_len)
            .and_then(|n| n.checked_mul(self.k_len))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::new(Status::Overflow, "Mask::dense: batch x q_len x k_len overflows".to_string()))?;
        let mut values: Vec<f32> = Vec::new();
        values.try_reserve_exact(elements).map_err(|_| {
            Error::new(Status::OutOfMemory, format!("Mask::dense: no memory for {} elements", elements))
        })?;
        values.resize(elements, 0.0);
        check(unsafe { sys::posenc_glm_mask_dense(self.raw.as_ptr(), values.as_mut_ptr(), values.len()) })?;
        Ok(values)
    }
}
