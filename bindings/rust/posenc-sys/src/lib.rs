//! Raw FFI declarations of libposenc, the C ABI of posenc (`include/posenc/posenc.h`), written by
//! hand to mirror that header field for field. The safe API is the `posenc` crate.
//!
//! Every function returns a [`posenc_status`] (except [`posenc_status_name`],
//! [`posenc_last_error`] and the `*_destroy` functions); on failure [`posenc_last_error`] holds a
//! thread-local message naming the value, its index and the limit. Structs that may grow start
//! with `struct_size`, which callers set to `size_of` of the struct (see posenc.h, "ABI growth").
#![allow(non_camel_case_types)]

use std::marker::{PhantomData, PhantomPinned};
use std::mem::size_of;

pub use std::os::raw::{c_char, c_void};

// --- status codes, versions -------------------------------------------------------------------

pub type posenc_status = i32;
pub const POSENC_OK: posenc_status = 0;
pub const POSENC_ERROR_INVALID_ARGUMENT: posenc_status = 1;
pub const POSENC_ERROR_OUT_OF_RANGE: posenc_status = 2;
pub const POSENC_ERROR_OVERFLOW: posenc_status = 3;
pub const POSENC_ERROR_CONFIG: posenc_status = 4;
pub const POSENC_ERROR_UNSUPPORTED: posenc_status = 5;
pub const POSENC_ERROR_VENDOR: posenc_status = 6;
pub const POSENC_ERROR_IO: posenc_status = 7;
pub const POSENC_ERROR_OUT_OF_MEMORY: posenc_status = 8;
pub const POSENC_ERROR_INTERNAL: posenc_status = 9;

/// The posenc.h these declarations mirror.
pub const POSENC_VERSION_MAJOR: i32 = 0;
pub const POSENC_VERSION_MINOR: i32 = 1;
pub const POSENC_VERSION_PATCH: i32 = 0;
pub const POSENC_ABI_VERSION: i32 = 1;

// --- enumerations (fixed numbers) ---------------------------------------------------------------

pub const POSENC_DTYPE_F32: i32 = 0;
pub const POSENC_DTYPE_F16: i32 = 1;
pub const POSENC_DTYPE_BF16: i32 = 2;
pub const POSENC_INDEX_I32: i32 = 0;
pub const POSENC_INDEX_I64: i32 = 1;
pub const POSENC_CACHE_F32: i32 = 0;
pub const POSENC_CACHE_F16: i32 = 1;
pub const POSENC_CACHE_BF16: i32 = 2;
pub const POSENC_CACHE_FP8_E4M3: i32 = 3;
pub const POSENC_LAYOUT_CONTIGUOUS: i32 = 0;
pub const POSENC_LAYOUT_PAGED_NHD: i32 = 1;
pub const POSENC_LAYOUT_PAGED_HND: i32 = 2;
/// One tensor (cache.k; cache.v null) [blocks, page, latent + head_dim]: [c_kv | k_pe] per slot.
pub const POSENC_LAYOUT_MLA: i32 = 3;
pub const POSENC_PAIRING_HALF_SPLIT: i32 = 0;
pub const POSENC_PAIRING_INTERLEAVED: i32 = 1;
pub const POSENC_PAIRING_INTERLEAVED_TO_HALF: i32 = 2;
pub const POSENC_PAIRING_HALF_SPLIT_2D: i32 = 3;
pub const POSENC_NUMERICS_HF_COMPATIBLE: i32 = 0;
pub const POSENC_NUMERICS_HF_FP32_APPLY: i32 = 1;
pub const POSENC_NUMERICS_ACCURATE: i32 = 2;
pub const POSENC_HF_ARITHMETIC_ENGINE: i32 = 0;
pub const POSENC_HF_ARITHMETIC_TORCH_CPU: i32 = 1;
pub const POSENC_HF_ARITHMETIC_TORCH_CUDA: i32 = 2;
pub const POSENC_HF_ARITHMETIC_EXACT: i32 = 3;
pub const POSENC_QK_NORM_NONE: i32 = 0;
pub const POSENC_QK_NORM_RMS: i32 = 1;
pub const POSENC_QK_NORM_RMS_ONE_PLUS: i32 = 2;
pub const POSENC_SCALING_NONE: i32 = 0;
pub const POSENC_SCALING_LINEAR: i32 = 1;
pub const POSENC_SCALING_DYNAMIC: i32 = 2;
pub const POSENC_SCALING_YARN: i32 = 3;
pub const POSENC_SCALING_LONGROPE: i32 = 4;
pub const POSENC_SCALING_LLAMA3: i32 = 5;
pub const POSENC_SCALING_TABLE: i32 = 6;
pub const POSENC_NEVER_PINNED: i64 = i64::MAX;
pub const POSENC_GLM_NO_TOKEN: i64 = -1;
pub const POSENC_GLM_TOKENS_CHATGLM_6B: i32 = 0;
pub const POSENC_GLM_TOKENS_CHATGLM_6B_FIRST_RELEASE: i32 = 1;
pub const POSENC_GLM_TOKENS_GLM_130B: i32 = 2;
pub const POSENC_GLM_TOKENS_CHATGLM2: i32 = 3;
pub const POSENC_GLM_TOKENS_GLM4: i32 = 4;
pub const POSENC_GLM_RULE_MASK_FIRST: i32 = 0;
pub const POSENC_GLM_RULE_GMASK_FIRST: i32 = 1;
pub const POSENC_GLM_SEGMENT_TEXT: i32 = 0;
pub const POSENC_GLM_SEGMENT_VISION: i32 = 1;
pub const POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE: i32 = 0;
pub const POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT: i32 = 1;
pub const POSENC_GLM_VIDEO_WHOLE: i32 = 0;
pub const POSENC_GLM_VIDEO_PER_FRAME: i32 = 1;
pub const POSENC_GLM_VISION_QWEN2_VL: i32 = 0;
pub const POSENC_GLM_VISION_GLM4V: i32 = 1;
pub const POSENC_GLM_PATTERN_CAUSAL: i32 = 0;
pub const POSENC_GLM_PATTERN_BIDIRECTIONAL: i32 = 1;
pub const POSENC_GLM_PATTERN_PREFIX_LM: i32 = 2;
pub const POSENC_GLM_PATTERN_LOCAL_WINDOW: i32 = 3;
pub const POSENC_GLM_PATTERN_GLOBAL_LOCAL: i32 = 4;
pub const POSENC_GLM_PATTERN_CUSTOM: i32 = 5;
pub const POSENC_GLM_EMPTY_ROWS_MASKED: i32 = 0;
pub const POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE: i32 = 1;

// --- opaque handles ------------------------------------------------------------------------------

macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}
opaque!(
    posenc_config,
    posenc_spec,
    posenc_cpu_engine,
    posenc_gpu_engine,
    posenc_position_tracker,
    posenc_gpu_position_tracker,
    posenc_glm_positions,
    posenc_glm_mask
);

// --- structs ------------------------------------------------------------------------------------

/// Implements `make()`: zeroed, with `struct_size` set (posenc.h's `*_make()` helpers).
macro_rules! make {
    ($($name:ident),*) => {$(
        impl $name {
            pub fn make() -> Self {
                // SAFETY: every field is an integer, a float, a raw pointer or an Option of a function
                // pointer: all-zero is valid (None for the function pointer).
                let mut value: Self = unsafe { std::mem::zeroed() };
                value.struct_size = size_of::<Self>();
                value
            }
        }
    )*};
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_version_info {
    pub struct_size: usize,
    pub major: i32,
    pub minor: i32,
    pub patch: i32,
    pub abi: i32,
    pub version: *const c_char,
    pub backend: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_gpu_info {
    pub struct_size: usize,
    pub backend: *const c_char,
    pub device_count: i32,
    pub available: i32,
    pub unavailable_reason: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_config_info {
    pub struct_size: usize,
    pub model_type: *const c_char,
    pub source: *const c_char,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub layer_type_count: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_spec_desc {
    pub struct_size: usize,
    pub head_dim: i64,
    pub rotary_dim: i64,
    pub rotary_offset: i64,
    pub pairing: i32,
    pub numerics: i32,
    pub theta: f64,
    pub attention_factor: f64,
    pub position_limit: i64,
    // Appended after the first version (a struct_size ending before it gives the default).
    pub hf_arithmetic: i32,
    pub reserved: i32,
    // Appended later: the QK-norm stage (POSENC_QK_NORM_*; all zero: none).
    pub qk_norm: i32,
    pub qk_norm_rotary_only: i32,
    pub qk_norm_epsilon: f64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_spec_info {
    pub struct_size: usize,
    pub head_dim: i64,
    pub rotary_dim: i64,
    pub rotary_offset: i64,
    pub pairing: i32,
    pub numerics: i32,
    pub scaling: i32,
    pub position_streams: i32,
    pub theta: f64,
    pub attention_factor: f64,
    pub position_limit: i64,
    pub frequency_count: i64,
    pub mrope_section_count: i64,
    pub mrope_interleaved: i32,
    pub reserved: i32,
    // Appended after the first version.
    pub hf_arithmetic: i32,
    pub reserved2: i32,
    // Appended later: the QK-norm stage.
    pub qk_norm: i32,
    pub qk_norm_rotary_only: i32,
    pub qk_norm_epsilon: f64,
}

/// posenc_tensor and its read-only twin posenc_const_tensor: the same fields, the data pointer
/// mutable or const.
macro_rules! tensor {
    ($name:ident, $data:ty) => {
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            pub data: $data,
            pub dtype: i32,
            pub reserved: i32,
            pub tokens: i64,
            pub heads: i64,
            pub head_dim: i64,
            pub token_stride: i64,
            pub head_stride: i64,
        }
    };
}
tensor!(posenc_tensor, *mut c_void);
tensor!(posenc_const_tensor, *const c_void);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_positions {
    pub data: *const c_void,
    pub type_: i32,
    pub streams: i32,
    pub count: i64,
    pub stream_stride: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_cos_sin_cache {
    pub data: *const c_void,
    pub dtype: i32,
    pub reserved: i32,
    pub rows: i64,
    pub rotary_dim: i64,
    pub row_stride: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_rope_args {
    pub struct_size: usize,
    pub q: posenc_tensor,
    pub k: posenc_tensor,
    pub q_src: posenc_const_tensor,
    pub k_src: posenc_const_tensor,
    pub positions: posenc_positions,
    pub cos_sin: posenc_cos_sin_cache,
    /// Appended later: the QK-norm weights of Q and K (null without a QK norm).
    pub q_norm_weight: *const c_void,
    pub k_norm_weight: *const c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_kv_cache {
    pub k: *mut c_void,
    pub v: *mut c_void,
    pub dtype: i32,
    pub layout: i32,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub blocks: i64,
    pub block_len: i64,
    pub k_scale: f32,
    pub v_scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_append_args {
    pub struct_size: usize,
    pub q: posenc_tensor,
    pub q_src: posenc_const_tensor,
    pub k: posenc_const_tensor,
    pub v: posenc_const_tensor,
    pub positions: posenc_positions,
    pub slots: *const i64,
    pub cache: posenc_kv_cache,
    pub cos_sin: posenc_cos_sin_cache,
    /// POSENC_LAYOUT_MLA's latent elements per row; 0 for the other layouts.
    pub cache_latent_dim: i64,
    /// The QK-norm weights of Q and K (null without a QK norm).
    pub q_norm_weight: *const c_void,
    pub k_norm_weight: *const c_void,
    /// Q written quantized (fp8 serving) instead of back into q; null: as before. q's shape with
    /// these element strides, dtype POSENC_CACHE_* equal to the cache's, and its scale.
    pub q_out_data: *mut c_void,
    pub q_out_token_stride: i64,
    pub q_out_head_stride: i64,
    pub q_out_dtype: i32,
    pub q_out_scale: f32,
    /// Per-head fp8 scales (null: absent): kv_heads floats for the cache's K and V, Q's heads for
    /// q_out; the per-tensor scale is then 1.
    pub cache_k_head_scales: *const f32,
    pub cache_v_head_scales: *const f32,
    pub q_out_head_scales: *const f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_counters {
    pub struct_size: usize,
    pub calls: i64,
    pub tokens: i64,
    pub bytes: i64,
    pub timed_calls: i64,
    pub device_ms: f64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_cpu_options {
    pub struct_size: usize,
    pub threads: i32,
    pub reserved: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_sequence_state {
    pub struct_size: usize,
    pub length: i64,
    pub rope_delta: i64,
    pub pin_from: i64,
    pub pin_value: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct posenc_step_entry {
    pub seq_id: i64,
    pub new_tokens: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_special_tokens {
    pub struct_size: usize,
    pub mask: i64,
    pub gmask: i64,
    pub smask: i64,
    pub sop: i64,
    pub eop: i64,
    pub begin_of_image: i64,
    pub end_of_image: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_positions_info {
    pub struct_size: usize,
    pub streams: i32,
    pub pinned: i32,
    pub tokens: i64,
    pub values: *const i64,
    pub batch: i64,
    pub length: i64,
    pub valid: *const u8,
    pub prefix_len: i64,
    pub mask_position: i64,
    pub mask_token: i64,
    pub rope_delta: i64,
    pub next_position: i64,
    pub next_block: i64,
    pub boi_index: i64,
    pub num_patches: i64,
    pub mask_position_count: i64,
    pub mask_positions: *const i64,
    pub pad_counts: *const i64,
    pub prefix_lens: *const i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_vision_grid {
    pub struct_size: usize,
    pub t: i64,
    pub h: i64,
    pub w: i64,
    pub spatial_merge_size: i64,
    pub temporal_interval: i64,
    pub seconds_per_grid: f32,
    pub tokens_per_second: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct posenc_glm_mrope_segment {
    pub kind: i32,
    pub reserved: i32,
    pub value: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_vision_tokens {
    pub struct_size: usize,
    pub image: i64,
    pub video: i64,
}

/// `posenc_glm_attention_pattern.predicate`: non-zero when query slot `q` sees key slot `k`.
pub type posenc_glm_predicate = Option<unsafe extern "C" fn(context: *mut c_void, q: i64, k: i64) -> i32>;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_attention_pattern {
    pub struct_size: usize,
    pub kind: i32,
    pub reserved: i32,
    pub prefix_len: i64,
    pub window: i64,
    pub global_positions: *const i64,
    pub global_count: usize,
    pub predicate: posenc_glm_predicate,
    pub context: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_mask_geometry {
    pub struct_size: usize,
    pub batch: i64,
    pub q_len: i64,
    pub k_len: i64,
    pub valid: *const u8,
    pub empty_rows: i32,
    pub reserved: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct posenc_glm_key_range {
    pub begin: i64,
    pub end: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct posenc_glm_mask_info {
    pub struct_size: usize,
    pub batch: i64,
    pub q_len: i64,
    pub k_len: i64,
    pub range_count: i64,
    pub row_offsets: *const i64,
    pub ranges: *const posenc_glm_key_range,
}

make!(
    posenc_version_info,
    posenc_gpu_info,
    posenc_config_info,
    posenc_spec_desc,
    posenc_spec_info,
    posenc_rope_args,
    posenc_append_args,
    posenc_counters,
    posenc_cpu_options,
    posenc_glm_special_tokens,
    posenc_glm_positions_info,
    posenc_glm_vision_tokens,
    posenc_glm_attention_pattern,
    posenc_glm_mask_geometry,
    posenc_glm_mask_info
);

impl posenc_glm_vision_grid {
    /// A t x h x w grid with posenc.h's defaults (posenc_glm_vision_grid_make): merge 2, interval 1.
    pub fn make(t: i64, h: i64, w: i64) -> Self {
        posenc_glm_vision_grid {
            struct_size: size_of::<Self>(),
            t,
            h,
            w,
            spatial_merge_size: 2,
            temporal_interval: 1,
            seconds_per_grid: 0.0,
            tokens_per_second: 0.0,
        }
    }
}

impl posenc_sequence_state {
    /// A fresh sequence: length 0, rope_delta 0, never pinned.
    pub fn make() -> Self {
        posenc_sequence_state {
            struct_size: size_of::<Self>(),
            length: 0,
            rope_delta: 0,
            pin_from: POSENC_NEVER_PINNED,
            pin_value: 0,
        }
    }
}

// --- functions ----------------------------------------------------------------------------------

extern "C" {
    pub fn posenc_status_name(status: posenc_status) -> *const c_char;
    pub fn posenc_last_error() -> *const c_char;
    pub fn posenc_get_version(out: *mut posenc_version_info) -> posenc_status;
    pub fn posenc_get_gpu_info(out: *mut posenc_gpu_info) -> posenc_status;

    pub fn posenc_config_load(path: *const c_char, out: *mut *mut posenc_config) -> posenc_status;
    pub fn posenc_config_parse(
        json: *const c_char,
        length: usize,
        source: *const c_char,
        out: *mut *mut posenc_config,
    ) -> posenc_status;
    pub fn posenc_config_default(out: *mut *mut posenc_config) -> posenc_status;
    pub fn posenc_config_destroy(config: *mut posenc_config);
    pub fn posenc_config_get_info(config: *const posenc_config, out: *mut posenc_config_info) -> posenc_status;
    pub fn posenc_config_layer_type(config: *const posenc_config, index: i64, out: *mut *const c_char)
        -> posenc_status;
    pub fn posenc_config_spec(
        config: *const posenc_config,
        layer_type: *const c_char,
        out: *mut *mut posenc_spec,
    ) -> posenc_status;

    pub fn posenc_spec_create(desc: *const posenc_spec_desc, out: *mut *mut posenc_spec) -> posenc_status;
    pub fn posenc_spec_with_numerics(spec: *const posenc_spec, numerics: i32, out: *mut *mut posenc_spec)
        -> posenc_status;
    pub fn posenc_spec_with_position_limit(
        spec: *const posenc_spec,
        position_limit: i64,
        out: *mut *mut posenc_spec,
    ) -> posenc_status;
    pub fn posenc_spec_with_hf_arithmetic(
        spec: *const posenc_spec,
        hf_arithmetic: i32,
        out: *mut *mut posenc_spec,
    ) -> posenc_status;
    pub fn posenc_spec_destroy(spec: *mut posenc_spec);
    pub fn posenc_spec_get_info(spec: *const posenc_spec, out: *mut posenc_spec_info) -> posenc_status;
    pub fn posenc_spec_inv_freq(spec: *const posenc_spec, out: *mut f32, capacity: usize) -> posenc_status;
    pub fn posenc_spec_mrope_section(spec: *const posenc_spec, out: *mut i64, capacity: usize) -> posenc_status;
    pub fn posenc_spec_describe(spec: *const posenc_spec, out: *mut *const c_char) -> posenc_status;

    pub fn posenc_cpu_engine_create(
        spec: *const posenc_spec,
        options: *const posenc_cpu_options,
        out: *mut *mut posenc_cpu_engine,
    ) -> posenc_status;
    pub fn posenc_cpu_engine_destroy(engine: *mut posenc_cpu_engine);
    pub fn posenc_cpu_engine_apply(engine: *const posenc_cpu_engine, args: *const posenc_rope_args) -> posenc_status;
    pub fn posenc_cpu_engine_append(engine: *const posenc_cpu_engine, args: *const posenc_append_args)
        -> posenc_status;
    pub fn posenc_cpu_engine_threads(engine: *const posenc_cpu_engine, out: *mut i32) -> posenc_status;
    pub fn posenc_cpu_engine_set_counters(engine: *const posenc_cpu_engine, on: i32) -> posenc_status;
    pub fn posenc_cpu_engine_get_counters(engine: *const posenc_cpu_engine, out: *mut posenc_counters)
        -> posenc_status;
    pub fn posenc_cpu_engine_reset_counters(engine: *const posenc_cpu_engine) -> posenc_status;
    pub fn posenc_apply_reference(spec: *const posenc_spec, args: *const posenc_rope_args) -> posenc_status;
    pub fn posenc_append_reference(spec: *const posenc_spec, args: *const posenc_append_args) -> posenc_status;

    pub fn posenc_gpu_engine_create(spec: *const posenc_spec, device: i32, out: *mut *mut posenc_gpu_engine)
        -> posenc_status;
    pub fn posenc_gpu_engine_destroy(engine: *mut posenc_gpu_engine);
    pub fn posenc_gpu_engine_apply(
        engine: *const posenc_gpu_engine,
        args: *const posenc_rope_args,
        stream: *mut c_void,
    ) -> posenc_status;
    pub fn posenc_gpu_engine_append(
        engine: *const posenc_gpu_engine,
        args: *const posenc_append_args,
        stream: *mut c_void,
    ) -> posenc_status;
    pub fn posenc_gpu_engine_check(engine: *const posenc_gpu_engine, stream: *mut c_void) -> posenc_status;
    pub fn posenc_gpu_engine_set_counters(engine: *const posenc_gpu_engine, on: i32, device_timing: i32)
        -> posenc_status;
    pub fn posenc_gpu_engine_get_counters(engine: *const posenc_gpu_engine, out: *mut posenc_counters)
        -> posenc_status;
    pub fn posenc_gpu_engine_reset_counters(engine: *const posenc_gpu_engine) -> posenc_status;

    pub fn posenc_position_tracker_create(
        streams: i32,
        position_limit: i64,
        out: *mut *mut posenc_position_tracker,
    ) -> posenc_status;
    pub fn posenc_position_tracker_destroy(tracker: *mut posenc_position_tracker);
    pub fn posenc_position_tracker_add(
        tracker: *mut posenc_position_tracker,
        seq_id: i64,
        state: *const posenc_sequence_state,
    ) -> posenc_status;
    pub fn posenc_position_tracker_remove(tracker: *mut posenc_position_tracker, seq_id: i64) -> posenc_status;
    pub fn posenc_position_tracker_contains(
        tracker: *const posenc_position_tracker,
        seq_id: i64,
        out: *mut i32,
    ) -> posenc_status;
    pub fn posenc_position_tracker_get_state(
        tracker: *const posenc_position_tracker,
        seq_id: i64,
        out: *mut posenc_sequence_state,
    ) -> posenc_status;
    pub fn posenc_position_tracker_pin(tracker: *mut posenc_position_tracker, seq_id: i64, pin_value: i64)
        -> posenc_status;
    pub fn posenc_position_tracker_size(tracker: *const posenc_position_tracker, out: *mut i64) -> posenc_status;
    pub fn posenc_position_tracker_streams(tracker: *const posenc_position_tracker, out: *mut i32)
        -> posenc_status;
    pub fn posenc_position_tracker_slot(tracker: *const posenc_position_tracker, seq_id: i64, out: *mut i64)
        -> posenc_status;
    pub fn posenc_position_tracker_step(
        tracker: *mut posenc_position_tracker,
        entries: *const posenc_step_entry,
        entry_count: usize,
        positions: *mut i64,
        capacity: usize,
        tokens: *mut i64,
    ) -> posenc_status;
    pub fn posenc_position_tracker_peek(
        tracker: *const posenc_position_tracker,
        entries: *const posenc_step_entry,
        entry_count: usize,
        positions: *mut i64,
        capacity: usize,
        tokens: *mut i64,
    ) -> posenc_status;

    pub fn posenc_gpu_position_tracker_create(
        host: *const posenc_position_tracker,
        device: i32,
        max_tokens: i64,
        out: *mut *mut posenc_gpu_position_tracker,
    ) -> posenc_status;
    pub fn posenc_gpu_position_tracker_destroy(tracker: *mut posenc_gpu_position_tracker);
    pub fn posenc_gpu_position_tracker_step(
        tracker: *mut posenc_gpu_position_tracker,
        slots: *const i32,
        new_tokens: *const i32,
        entry_count: usize,
        total_tokens: i64,
        positions: *mut i64,
        stream: *mut c_void,
    ) -> posenc_status;
    pub fn posenc_gpu_position_tracker_positions(
        tracker: *const posenc_gpu_position_tracker,
        positions: *const i64,
        total_tokens: i64,
        out: *mut posenc_positions,
    ) -> posenc_status;
    pub fn posenc_gpu_position_tracker_check(tracker: *const posenc_gpu_position_tracker, stream: *mut c_void)
        -> posenc_status;
    pub fn posenc_gpu_position_tracker_lengths(
        tracker: *const posenc_gpu_position_tracker,
        out: *mut i64,
        capacity: usize,
        stream: *mut c_void,
    ) -> posenc_status;
    pub fn posenc_gpu_position_tracker_streams(tracker: *const posenc_gpu_position_tracker, out: *mut i32)
        -> posenc_status;
    pub fn posenc_gpu_position_tracker_slots(tracker: *const posenc_gpu_position_tracker, out: *mut i64)
        -> posenc_status;
    pub fn posenc_gpu_position_tracker_max_tokens(tracker: *const posenc_gpu_position_tracker, out: *mut i64)
        -> posenc_status;

    pub fn posenc_glm_special_tokens_get(vocabulary: i32, out: *mut posenc_glm_special_tokens) -> posenc_status;
    pub fn posenc_glm_vision_tokens_get(family: i32, out: *mut posenc_glm_vision_tokens) -> posenc_status;
    pub fn posenc_glm_positions_destroy(positions: *mut posenc_glm_positions);
    pub fn posenc_glm_positions_get_info(
        positions: *const posenc_glm_positions,
        out: *mut posenc_glm_positions_info,
    ) -> posenc_status;
    pub fn posenc_glm_positions_view(positions: *const posenc_glm_positions, out: *mut posenc_positions)
        -> posenc_status;
    pub fn posenc_glm_positions_tracker_state(
        positions: *const posenc_glm_positions,
        out: *mut posenc_sequence_state,
    ) -> posenc_status;
    pub fn posenc_glm_arange(past_len: i64, count: i64, out: *mut *mut posenc_glm_positions) -> posenc_status;
    pub fn posenc_glm_left_padded_arange(
        lengths: *const i64,
        batch: usize,
        pad_fill: i64,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_positions_from_attention_mask(
        mask: *const u8,
        batch: i64,
        length: i64,
        pad_fill: i64,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_next_positions_from_attention_mask(
        mask: *const u8,
        batch: i64,
        length: i64,
        new_tokens: i64,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_chatglm6b_positions(
        tokens: *const i64,
        count: usize,
        special: *const posenc_glm_special_tokens,
        rule: i32,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_chatglm6b_batch(
        tokens: *const i64,
        lengths: *const i64,
        batch: usize,
        special: *const posenc_glm_special_tokens,
        rule: i32,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_glm130b_positions(
        tokens: *const i64,
        count: usize,
        special: *const posenc_glm_special_tokens,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_blank_infilling_context(
        tokens: *const i64,
        count: usize,
        special: *const posenc_glm_special_tokens,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_blank_infilling_generation(
        mask_position: i64,
        first_block: i64,
        count: i64,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_mrope_positions(
        segments: *const posenc_glm_mrope_segment,
        segment_count: usize,
        grids: *const posenc_glm_vision_grid,
        grid_count: usize,
        rule: i32,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_mrope_positions_from_tokens(
        tokens: *const i64,
        count: usize,
        vision: *const posenc_glm_vision_tokens,
        image_grids: *const posenc_glm_vision_grid,
        image_grid_count: usize,
        video_grids: *const posenc_glm_vision_grid,
        video_grid_count: usize,
        rule: i32,
        video_layout: i32,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_mrope_decode_positions(
        past_len: i64,
        rope_delta: i64,
        count: i64,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_glm4v_remote_positions(
        tokens: *const i64,
        count: usize,
        num_patches: i64,
        special: *const posenc_glm_special_tokens,
        out: *mut *mut posenc_glm_positions,
    ) -> posenc_status;
    pub fn posenc_glm_mask_create(
        patterns: *const posenc_glm_attention_pattern,
        pattern_count: usize,
        geometry: *const posenc_glm_mask_geometry,
        out: *mut *mut posenc_glm_mask,
    ) -> posenc_status;
    pub fn posenc_glm_mask_destroy(mask: *mut posenc_glm_mask);
    pub fn posenc_glm_mask_get_info(mask: *const posenc_glm_mask, out: *mut posenc_glm_mask_info) -> posenc_status;
    pub fn posenc_glm_mask_dense(mask: *const posenc_glm_mask, out: *mut f32, capacity: usize) -> posenc_status;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    /// The layouts of posenc.h version 1 on LP64 targets (tests/capi/test_capi.c checks the same
    /// numbers on the C side): a mismatch here is a binding bug.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn layouts_match_posenc_h() {
        assert_eq!(size_of::<posenc_tensor>(), 56);
        assert_eq!(size_of::<posenc_const_tensor>(), 56);
        assert_eq!(size_of::<posenc_positions>(), 32);
        assert_eq!(size_of::<posenc_cos_sin_cache>(), 40);
        assert_eq!(size_of::<posenc_kv_cache>(), 64);
        assert_eq!(size_of::<posenc_rope_args>(), 320);
        assert_eq!(size_of::<posenc_append_args>(), 456);
        assert_eq!(size_of::<posenc_version_info>(), 40);
        assert_eq!(size_of::<posenc_gpu_info>(), 32);
        assert_eq!(size_of::<posenc_config_info>(), 64);
        assert_eq!(size_of::<posenc_spec_desc>(), 88);
        assert_eq!(size_of::<posenc_spec_info>(), 120);
        assert_eq!(size_of::<posenc_counters>(), 48);
        assert_eq!(size_of::<posenc_cpu_options>(), 16);
        assert_eq!(size_of::<posenc_sequence_state>(), 40);
        assert_eq!(size_of::<posenc_step_entry>(), 16);
        assert_eq!(align_of::<posenc_rope_args>(), 8);
        assert_eq!(size_of::<posenc_glm_special_tokens>(), 64);
        assert_eq!(size_of::<posenc_glm_positions_info>(), 152);
        assert_eq!(size_of::<posenc_glm_vision_grid>(), 56);
        assert_eq!(size_of::<posenc_glm_mrope_segment>(), 16);
        assert_eq!(size_of::<posenc_glm_vision_tokens>(), 24);
        assert_eq!(size_of::<posenc_glm_attention_pattern>(), 64);
        assert_eq!(size_of::<posenc_glm_mask_geometry>(), 48);
        assert_eq!(size_of::<posenc_glm_key_range>(), 16);
        assert_eq!(size_of::<posenc_glm_mask_info>(), 56);
        // Appended fields sit where posenc.h puts them (offsetof; Rust 1.63 has no offset_of!).
        fn offset<S, F>(base: &S, field: &F) -> usize {
            field as *const F as usize - base as *const S as usize
        }
        let (desc, info) = (posenc_spec_desc::make(), posenc_spec_info::make());
        assert_eq!(offset(&desc, &desc.hf_arithmetic), 64);
        assert_eq!(offset(&info, &info.hf_arithmetic), 96);
    }

    #[test]
    fn library_reports_this_headers_version() {
        let mut info = posenc_version_info::make();
        let status = unsafe { posenc_get_version(&mut info) };
        assert_eq!(status, POSENC_OK);
        assert_eq!(
            (info.major, info.minor, info.patch, info.abi),
            (POSENC_VERSION_MAJOR, POSENC_VERSION_MINOR, POSENC_VERSION_PATCH, POSENC_ABI_VERSION)
        );
    }

    #[test]
    fn failures_leave_a_message() {
        let status = unsafe { posenc_get_version(std::ptr::null_mut()) };
        assert_eq!(status, POSENC_ERROR_INVALID_ARGUMENT);
        let message = unsafe { std::ffi::CStr::from_ptr(posenc_last_error()) };
        assert_eq!(message.to_bytes(), b"posenc_get_version: out is NULL");
    }
}
