/* posenc.h: the stable C ABI of posenc (C99): opaque handles, status codes, thread-local error messages. */
#ifndef POSENC_POSENC_H
#define POSENC_POSENC_H

/*
 * Conventions (docs/C_API.md has the full guide):
 *
 * - Every function returns a posenc_status (POSENC_OK = 0) except three that cannot fail:
 *   posenc_status_name, posenc_last_error and the *_destroy functions (which accept NULL).
 *   Results come back through out-pointers, which are written only on success.
 * - On failure, posenc_last_error() returns a message naming the function, the offending value,
 *   its index where there is one and the limit it broke. The message is thread-local; a
 *   successful call clears it. Nothing a failed call was asked to write has been written.
 * - Handles are opaque and owned by the caller, who destroys them. A handle may be used from
 *   several threads at once where its functions take it as const (engines, specs, configs);
 *   a position tracker needs the caller's own locking.
 * - ABI growth. Structs that may gain fields start with `size_t struct_size`, which the caller
 *   sets to sizeof the struct of the posenc.h it compiled against (the posenc_*_make() helpers
 *   below do this and zero the rest). The library reads only struct_size bytes: fields a newer
 *   library has and an older caller lacks count as zero (absent); fields a newer caller has and
 *   this library lacks must be zero, else POSENC_ERROR_UNSUPPORTED names the byte. Output structs
 *   (posenc_*_info, posenc_counters) are filled up to their struct_size. Enum values are fixed
 *   numbers; new ones are only appended. New operations arrive as new functions.
 * - Element counts of caller arrays are size_t; tensor shapes, strides (in elements), positions
 *   and token counts are int64_t, checked in 64 bits.
 * - The library is libposenc.so (SONAME libposenc.so.<POSENC_ABI_VERSION>); pkg-config name
 *   `posenc`. It exports only the posenc_* functions declared here.
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define POSENC_API __attribute__((visibility("default")))
#else
#define POSENC_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions, status codes, errors
 * ------------------------------------------------------------------------------------------- */

#define POSENC_VERSION_MAJOR 0
#define POSENC_VERSION_MINOR 1
#define POSENC_VERSION_PATCH 0
/* Bumped only by an incompatible change of this ABI (it is the shared library's SONAME suffix). */
#define POSENC_ABI_VERSION 1

typedef int32_t posenc_status;
enum {
  POSENC_OK = 0,
  POSENC_ERROR_INVALID_ARGUMENT = 1, /* a shape, stride, dtype, size, enum value or NULL pointer */
  POSENC_ERROR_OUT_OF_RANGE = 2,     /* a position, slot or index outside its allowed range */
  POSENC_ERROR_OVERFLOW = 3,         /* a size or offset does not fit in 64 bits */
  POSENC_ERROR_CONFIG = 4,           /* a model configuration key is unknown, missing or contradictory */
  POSENC_ERROR_UNSUPPORTED = 5,      /* valid, but this build, device or library version cannot serve it */
  POSENC_ERROR_VENDOR = 6,           /* the CUDA/HIP runtime failed (the message carries its string) */
  POSENC_ERROR_IO = 7,               /* a file could not be read or has a bad format */
  POSENC_ERROR_OUT_OF_MEMORY = 8,    /* a host or device allocation failed (the message names it) */
  POSENC_ERROR_INTERNAL = 9          /* a bug in posenc: please report the message */
};

/* "ok", "invalid_argument", "out_of_range", "overflow", "config", "unsupported", "vendor", "io",
 * "out_of_memory", "internal"; "unknown" for any other value. Static storage. */
POSENC_API const char* posenc_status_name(posenc_status status);

/* The message of the last failed call on this thread ("" after a successful call). Valid until
 * the next posenc call on this thread. */
POSENC_API const char* posenc_last_error(void);

typedef struct posenc_version_info {
  size_t struct_size;
  int32_t major;
  int32_t minor;
  int32_t patch;
  int32_t abi;         /* POSENC_ABI_VERSION of the library */
  const char* version; /* "0.1.0" (static storage) */
  const char* backend; /* GPU backend compiled in: "cuda", "hip" or "none" (static storage) */
} posenc_version_info;

POSENC_API posenc_status posenc_get_version(posenc_version_info* out);

typedef struct posenc_gpu_info {
  size_t struct_size;
  const char* backend;    /* "cuda", "hip" or "none" (static storage) */
  int32_t device_count;   /* visible devices (0 without GPU support or without a device) */
  int32_t available;      /* 1 when a GPU engine can be created on device 0 */
  /* Why no GPU can be used ("" when available). Valid until the next posenc_get_gpu_info on this
   * thread. */
  const char* unavailable_reason;
} posenc_gpu_info;

POSENC_API posenc_status posenc_get_gpu_info(posenc_gpu_info* out);

/* ---------------------------------------------------------------------------------------------
 * Enumerations (fixed numbers; new values are only appended)
 * ------------------------------------------------------------------------------------------- */

enum { POSENC_DTYPE_F32 = 0, POSENC_DTYPE_F16 = 1, POSENC_DTYPE_BF16 = 2 };       /* activations */
enum { POSENC_INDEX_I32 = 0, POSENC_INDEX_I64 = 1 };                              /* position ids */
enum {                                                                           /* KV-cache elements */
  POSENC_CACHE_F32 = 0,
  POSENC_CACHE_F16 = 1,
  POSENC_CACHE_BF16 = 2,
  POSENC_CACHE_FP8_E4M3 = 3 /* OCP E4M3FN, saturating, with per-tensor scales */
};
enum {
  POSENC_LAYOUT_CONTIGUOUS = 0,
  POSENC_LAYOUT_PAGED_NHD = 1,
  POSENC_LAYOUT_PAGED_HND = 2,
  POSENC_LAYOUT_MLA = 3 /* one tensor (cache.k; cache.v NULL) [blocks, page, latent + head_dim]: [c_kv | k_pe] */
};
enum {                                  /* which elements of the rotary window form a pair */
  POSENC_PAIRING_HALF_SPLIT = 0,        /* NeoX / Llama rotate_half: (i, i + R/2) */
  POSENC_PAIRING_INTERLEAVED = 1,       /* GPT-J / GLM-4: (2i, 2i + 1) */
  POSENC_PAIRING_INTERLEAVED_TO_HALF = 2, /* DeepSeek-V3 rope_interleave: read adjacent, write split */
  POSENC_PAIRING_HALF_SPLIT_2D = 3      /* ChatGLM-6B 2-D: two half-split halves, two position streams */
};
enum { POSENC_NUMERICS_HF_COMPATIBLE = 0, POSENC_NUMERICS_HF_FP32_APPLY = 1, POSENC_NUMERICS_ACCURATE = 2 };
enum {                                   /* whose pow/cos/sin the hf numerics reproduce (docs/NUMERICS.md 3.4) */
  POSENC_HF_ARITHMETIC_ENGINE = 0,       /* torch on the engine's device: CPU engine torch_cpu, GPU engine torch_cuda */
  POSENC_HF_ARITHMETIC_TORCH_CPU = 1,    /* torch on an x86-64 CPU (SLEEF/glibc pow, Intel MKL cos/sin) */
  POSENC_HF_ARITHMETIC_TORCH_CUDA = 2,   /* torch on an NVIDIA GPU (CUDA's powf/cosf/sinf) */
  POSENC_HF_ARITHMETIC_EXACT = 3         /* correctly rounded pow/cos/sin: the same bits on every engine */
};

/* The QK-norm stage before the rotation (posenc_spec_desc.qk_norm; docs/NUMERICS.md §3.6): each Q
 * and K head x becomes round(w * round(x * r)) (RMS: Qwen3, GLM-4.5) or round(x * r * (1 + w))
 * (RMS_ONE_PLUS: Gemma 3), r = 1/sqrt(mean(x^2) + epsilon), with the call's weights
 * (posenc_rope_args.q_norm_weight / k_norm_weight). */
enum { POSENC_QK_NORM_NONE = 0, POSENC_QK_NORM_RMS = 1, POSENC_QK_NORM_RMS_ONE_PLUS = 2 };
enum {
  POSENC_SCALING_NONE = 0,
  POSENC_SCALING_LINEAR = 1,
  POSENC_SCALING_DYNAMIC = 2,
  POSENC_SCALING_YARN = 3,
  POSENC_SCALING_LONGROPE = 4,
  POSENC_SCALING_LLAMA3 = 5,
  POSENC_SCALING_TABLE = 6
};

/* ---------------------------------------------------------------------------------------------
 * Model configurations and specs
 * ------------------------------------------------------------------------------------------- */

typedef struct posenc_config posenc_config; /* a parsed Hugging Face config.json */
typedef struct posenc_spec posenc_spec;     /* the complete definition of one rotation (immutable) */

/* Reads and parses a config.json file (POSENC_ERROR_IO when unreadable, POSENC_ERROR_CONFIG naming
 * the key for a bad one). */
POSENC_API posenc_status posenc_config_load(const char* path, posenc_config** out);
/* Parses `length` bytes of config.json text; `source` (may be NULL) labels messages. */
POSENC_API posenc_status posenc_config_parse(const char* json, size_t length, const char* source,
                                             posenc_config** out);
/* The configuration `posenc run` uses by default: GLM-4-9B-chat (THUDM/glm-4-9b-chat). */
POSENC_API posenc_status posenc_config_default(posenc_config** out);
POSENC_API void posenc_config_destroy(posenc_config* config);

typedef struct posenc_config_info {
  size_t struct_size;
  const char* model_type; /* "glm", "llama", ... (valid while the config lives) */
  const char* source;     /* the file path, or the label given to posenc_config_parse */
  int64_t num_attention_heads;
  int64_t num_key_value_heads;
  int64_t head_dim;
  int64_t max_position_embeddings;
  int64_t layer_type_count; /* specs in the config: 1 ("default") or one per layer type */
} posenc_config_info;

POSENC_API posenc_status posenc_config_get_info(const posenc_config* config, posenc_config_info* out);
/* The name of layer type `index` in [0, layer_type_count), in sorted order ("default",
 * "full_attention", "sliding_attention", ...). Valid while the config lives. */
POSENC_API posenc_status posenc_config_layer_type(const posenc_config* config, int64_t index,
                                                  const char** out);
/* The spec of `layer_type` (NULL means "default"); POSENC_ERROR_CONFIG names the types it has. */
POSENC_API posenc_status posenc_config_spec(const posenc_config* config, const char* layer_type,
                                            posenc_spec** out);

/* A plain spec without a config: default-theta RoPE (no scaling scheme; a scheme such as YaRN or
 * Llama 3 comes from a config, e.g. posenc_config_parse of a small JSON text). Zero fields take
 * the defaults in brackets. */
typedef struct posenc_spec_desc {
  size_t struct_size;
  int64_t head_dim;         /* required, even rotary window, <= 1024 */
  int64_t rotary_dim;       /* [head_dim] */
  int64_t rotary_offset;    /* [0] first element of the rotary window within a head */
  int32_t pairing;          /* [POSENC_PAIRING_HALF_SPLIT] */
  int32_t numerics;         /* [POSENC_NUMERICS_HF_COMPATIBLE] */
  double theta;             /* [10000] */
  double attention_factor;  /* [the scheme's: 1] multiplies cos and sin */
  int64_t position_limit;   /* [2^31] positions must lie in [0, position_limit) */
  /* Appended after the first version (a caller whose struct_size ends before it gets the default). */
  int32_t hf_arithmetic;    /* [POSENC_HF_ARITHMETIC_ENGINE] an engine refuses one it cannot reproduce */
  int32_t reserved;         /* must be 0 */
  /* Appended later: the QK-norm stage (all zero: none). */
  int32_t qk_norm;             /* [POSENC_QK_NORM_NONE] */
  int32_t qk_norm_rotary_only; /* [0] 1: normalise the rotary window only, not the whole head */
  double qk_norm_epsilon;      /* [0] the config's rms_norm_eps (typically 1e-6): set it with qk_norm */
} posenc_spec_desc;

POSENC_API posenc_status posenc_spec_create(const posenc_spec_desc* desc, posenc_spec** out);
/* A copy of `spec` with other numerics / another position limit / another HF arithmetic. */
POSENC_API posenc_status posenc_spec_with_numerics(const posenc_spec* spec, int32_t numerics,
                                                   posenc_spec** out);
POSENC_API posenc_status posenc_spec_with_position_limit(const posenc_spec* spec, int64_t position_limit,
                                                         posenc_spec** out);
POSENC_API posenc_status posenc_spec_with_hf_arithmetic(const posenc_spec* spec, int32_t hf_arithmetic,
                                                        posenc_spec** out);
POSENC_API void posenc_spec_destroy(posenc_spec* spec);

typedef struct posenc_spec_info {
  size_t struct_size;
  int64_t head_dim;
  int64_t rotary_dim; /* resolved (never 0) */
  int64_t rotary_offset;
  int32_t pairing;
  int32_t numerics;
  int32_t scaling;
  int32_t position_streams;  /* position streams an apply must pass: 1, 2 (2-D) or 3 (M-RoPE) */
  double theta;
  double attention_factor;   /* the override, else the scheme's (as compute_frequencies gives it) */
  int64_t position_limit;
  int64_t frequency_count;   /* entries posenc_spec_inv_freq writes */
  int64_t mrope_section_count; /* entries posenc_spec_mrope_section writes (0: single stream) */
  int32_t mrope_interleaved;
  int32_t reserved;
  /* Appended after the first version. */
  int32_t hf_arithmetic;     /* as given (POSENC_HF_ARITHMETIC_ENGINE stays ENGINE: each engine resolves it) */
  int32_t reserved2;
  /* Appended later: the QK-norm stage (config.json specs of Qwen3, Gemma 3, GLM-4.5 have one). */
  int32_t qk_norm;             /* POSENC_QK_NORM_* */
  int32_t qk_norm_rotary_only;
  double qk_norm_epsilon;
} posenc_spec_info;

POSENC_API posenc_status posenc_spec_get_info(const posenc_spec* spec, posenc_spec_info* out);
/* The init-time inv_freq table (float32, as transformers computes it: ENGINE means TORCH_CPU here;
 * TORCH_CUDA's init table is the CPU's too, transformers builds it there); `capacity` >= frequency_count. */
POSENC_API posenc_status posenc_spec_inv_freq(const posenc_spec* spec, float* out, size_t capacity);
/* The M-RoPE pairs per stream; `capacity` >= mrope_section_count. */
POSENC_API posenc_status posenc_spec_mrope_section(const posenc_spec* spec, int64_t* out, size_t capacity);
/* A multi-line human-readable summary (as `posenc info` prints it); valid while the spec lives. */
POSENC_API posenc_status posenc_spec_describe(const posenc_spec* spec, const char** out);

/* ---------------------------------------------------------------------------------------------
 * Tensor views and call arguments (host memory for the CPU engine, device memory for the GPU)
 * ------------------------------------------------------------------------------------------- */

/* A [tokens, heads, head_dim] view, head_dim contiguous; strides in elements:
 *   element (t, h, d) at  data + (t * token_stride + h * head_stride + d) * element size.
 * data == NULL means "absent" (an optional K, an in-place call). */
typedef struct posenc_tensor {
  void* data;
  int32_t dtype;    /* POSENC_DTYPE_* */
  int32_t reserved; /* must be 0 */
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;
  int64_t token_stride;
  int64_t head_stride;
} posenc_tensor;

/* The read-only twin, for out-of-place sources and append inputs. */
typedef struct posenc_const_tensor {
  const void* data;
  int32_t dtype;
  int32_t reserved;
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;
  int64_t token_stride;
  int64_t head_stride;
} posenc_const_tensor;

/* Position ids, one per token and stream: stream s of token t at data[s * stream_stride + t].
 * Batches are flattened (a ragged batch, a padded batch and a decode step are all one position
 * per token). */
typedef struct posenc_positions {
  const void* data;
  int32_t type;     /* POSENC_INDEX_I32 or POSENC_INDEX_I64 */
  int32_t streams;  /* 1, or the spec's position_streams */
  int64_t count;    /* tokens */
  int64_t stream_stride; /* elements between streams (>= count when streams > 1) */
} posenc_positions;

/* A caller's cos/sin cache (vLLM's cos_sin_cache [rows, rotary_dim]): row p =
 * [cos_0 .. cos_{R/2-1} | sin_0 .. sin_{R/2-1}]. When present, it replaces the spec's frequency
 * scheme (theta, scaling and attention factor are ignored); positions must lie in [0, rows) (the
 * CPU engine refuses others before writing; the GPU engine rotates them by the identity and
 * posenc_gpu_engine_check reports the first). Single-stream pairings only. */
typedef struct posenc_cos_sin_cache {
  const void* data; /* NULL: absent */
  int32_t dtype;    /* POSENC_DTYPE_*, may differ from the activations' */
  int32_t reserved; /* must be 0 */
  int64_t rows;
  int64_t rotary_dim; /* must equal the spec's rotary_dim */
  int64_t row_stride; /* elements between rows (>= rotary_dim) */
} posenc_cos_sin_cache;

/* One apply: q is written; k too when present (K is optional). In place: leave q_src/k_src
 * absent. Out of place: q_src (and k_src when k is present) have q's (k's) dtype and shape, any
 * strides, and do not overlap a destination unless they are exactly the same view. Q and K may
 * have different head counts (GQA/MQA); both have positions.count tokens. */
typedef struct posenc_rope_args {
  size_t struct_size;
  posenc_tensor q;
  posenc_tensor k;
  posenc_const_tensor q_src;
  posenc_const_tensor k_src;
  posenc_positions positions;
  /* Appended after the first version (a caller whose struct_size ends before it has no cache). */
  posenc_cos_sin_cache cos_sin;
  /* Appended later: the QK-norm weights (head_dim, or rotary_dim with qk_norm_rotary_only, elements
   * of the activation dtype, in the engine's memory); required exactly when the spec has a QK norm
   * (k_norm_weight only with K), NULL otherwise. */
  const void* q_norm_weight;
  const void* k_norm_weight;
} posenc_rope_args;

/* A KV cache: two tensors K and V of one layout, dtype and shape (docs/C_API.md draws the
 * layouts): contiguous [blocks = batch, block_len = max_len, kv_heads, head_dim], paged NHD
 * [num_blocks, page_size, kv_heads, head_dim], paged HND [num_blocks, kv_heads, page_size, head_dim];
 * slot = block * block_len + offset. POSENC_LAYOUT_MLA (DeepSeek-V3 multi-head latent attention):
 * one tensor `k` [num_blocks, page_size, latent + head_dim] (`v` NULL, kv_heads 1), each slot's row
 * holding the latent (the append's V) then the rotated k_pe (its K); the latent's size is
 * posenc_append_args.cache_latent_dim. */
typedef struct posenc_kv_cache {
  void* k;
  void* v;
  int32_t dtype;  /* POSENC_CACHE_* */
  int32_t layout; /* POSENC_LAYOUT_* */
  int64_t kv_heads;
  int64_t head_dim;
  int64_t blocks;
  int64_t block_len;
  float k_scale;  /* fp8: the cache stores e4m3(x / scale); other dtypes require 1 */
  float v_scale;
} posenc_kv_cache;

/* One fused append: Q rotated (in place, or from q_src into q), K rotated and written with V into
 * the cache row of each token's slot, cast to the cache dtype; slots[i] (positions.count entries,
 * same memory space as the tensors) is token i's slot, -1 skips its K and V. */
typedef struct posenc_append_args {
  size_t struct_size;
  posenc_tensor q;
  posenc_const_tensor q_src;
  posenc_const_tensor k;
  posenc_const_tensor v;
  posenc_positions positions;
  const int64_t* slots;
  posenc_kv_cache cache;
  /* Appended after the first version, as in posenc_rope_args; must not overlap Q or the cache. */
  posenc_cos_sin_cache cos_sin;
  /* Appended later: POSENC_LAYOUT_MLA's latent elements per row (kv_lora_rank, a multiple of
   * head_dim; V is [tokens, 1, cache_latent_dim]); 0 for the other layouts. */
  int64_t cache_latent_dim;
  /* Appended later, as in posenc_rope_args: the QK-norm weights of Q and K. */
  const void* q_norm_weight;
  const void* k_norm_weight;
  /* Appended later: Q written quantized instead of back into q (fp8 serving: an fp8 attention
   * kernel reads it). q_out_data NULL: Q is written as before. Otherwise q's shape [tokens, heads,
   * head_dim] with these element strides, in q_out_dtype (POSENC_CACHE_*, equal to cache.dtype),
   * each element dtype(x / q_out_scale), saturating, x the rotated Q (the cast the cache applies to
   * K); q is then only read and q_src must be absent; q_out_scale finite and > 0 for fp8, 1 for the
   * other dtypes. */
  void* q_out_data;
  int64_t q_out_token_stride;
  int64_t q_out_head_stride;
  int32_t q_out_dtype;
  float q_out_scale;
  /* Appended later: per-head fp8 scales, NULL when absent (or before the caller's struct end).
   * cache_k_head_scales / cache_v_head_scales: kv_heads floats, head h of K (V) stored as
   * e4m3(x / scale[h]), with cache.k_scale (v_scale) then 1; q_out_head_scales: Q's heads floats
   * for q_out, with q_out_scale then 1. fp8 caches only, not POSENC_LAYOUT_MLA's cache; in the
   * engine's memory (host for the CPU engine, device for the GPU engine), each finite and > 0: the
   * CPU engine refuses the call naming the head, the GPU engine skips that head's rows and reports
   * it at posenc_gpu_engine_check. */
  const float* cache_k_head_scales;
  const float* cache_v_head_scales;
  const float* q_out_head_scales;
} posenc_append_args;

/* What an engine has done since its counters were enabled or reset. */
typedef struct posenc_counters {
  size_t struct_size;
  int64_t calls;       /* apply and append calls */
  int64_t tokens;      /* tokens rotated */
  int64_t bytes;       /* bytes read and written (an upper bound for appends) */
  int64_t timed_calls; /* GPU with device timing: calls whose device time is collected */
  double device_ms;    /* ... and their sum in milliseconds; 0 on the CPU */
} posenc_counters;

/* ---------------------------------------------------------------------------------------------
 * Engines
 * ------------------------------------------------------------------------------------------- */

typedef struct posenc_cpu_engine posenc_cpu_engine;
typedef struct posenc_gpu_engine posenc_gpu_engine;

typedef struct posenc_cpu_options {
  size_t struct_size;
  int32_t threads;  /* worker threads; 0 = all hardware threads */
  int32_t reserved; /* must be 0 */
} posenc_cpu_options;

/* The spec is copied; `options` may be NULL (defaults). */
POSENC_API posenc_status posenc_cpu_engine_create(const posenc_spec* spec, const posenc_cpu_options* options,
                                                  posenc_cpu_engine** out);
POSENC_API void posenc_cpu_engine_destroy(posenc_cpu_engine* engine);
/* Validates everything first (nothing is written on failure), then rotates on all threads. */
POSENC_API posenc_status posenc_cpu_engine_apply(const posenc_cpu_engine* engine, const posenc_rope_args* args);
/* Validates everything first (slots in [-1, slots), no slot twice), then rotates and appends. */
POSENC_API posenc_status posenc_cpu_engine_append(const posenc_cpu_engine* engine,
                                                  const posenc_append_args* args);
POSENC_API posenc_status posenc_cpu_engine_threads(const posenc_cpu_engine* engine, int32_t* out);
/* Counters are off by default; `on` is 0 or 1. */
POSENC_API posenc_status posenc_cpu_engine_set_counters(const posenc_cpu_engine* engine, int32_t on);
POSENC_API posenc_status posenc_cpu_engine_get_counters(const posenc_cpu_engine* engine, posenc_counters* out);
POSENC_API posenc_status posenc_cpu_engine_reset_counters(const posenc_cpu_engine* engine);

/* The definition every engine is tested against: plain scalar loops, one thread (host memory). */
POSENC_API posenc_status posenc_apply_reference(const posenc_spec* spec, const posenc_rope_args* args);
POSENC_API posenc_status posenc_append_reference(const posenc_spec* spec, const posenc_append_args* args);

/* GPU engine on device `device` (POSENC_ERROR_UNSUPPORTED naming the reason where there is no GPU
 * or no GPU support). Streams are the vendor's (cudaStream_t / hipStream_t) passed as void*; NULL
 * is the legacy default stream. apply/append validate on the host and launch once on `stream`:
 * they allocate, copy and wait for nothing. Positions and slots are device memory and are not
 * read on the host: a position outside [0, position_limit) or a slot outside [-1, slots) is
 * recorded on the device, and posenc_gpu_engine_check (which synchronizes `stream`) reports the
 * first one as POSENC_ERROR_OUT_OF_RANGE with its token index, value and limit. */
POSENC_API posenc_status posenc_gpu_engine_create(const posenc_spec* spec, int32_t device,
                                                  posenc_gpu_engine** out);
POSENC_API void posenc_gpu_engine_destroy(posenc_gpu_engine* engine);
POSENC_API posenc_status posenc_gpu_engine_apply(const posenc_gpu_engine* engine, const posenc_rope_args* args,
                                                 void* stream);
POSENC_API posenc_status posenc_gpu_engine_append(const posenc_gpu_engine* engine,
                                                  const posenc_append_args* args, void* stream);
POSENC_API posenc_status posenc_gpu_engine_check(const posenc_gpu_engine* engine, void* stream);
/* `on`, `device_timing`: 0 or 1. With device timing, each call records events around its launch. */
POSENC_API posenc_status posenc_gpu_engine_set_counters(const posenc_gpu_engine* engine, int32_t on,
                                                        int32_t device_timing);
POSENC_API posenc_status posenc_gpu_engine_get_counters(const posenc_gpu_engine* engine, posenc_counters* out);
POSENC_API posenc_status posenc_gpu_engine_reset_counters(const posenc_gpu_engine* engine);

/* ---------------------------------------------------------------------------------------------
 * Continuous batching: the position tracker (host)
 *
 * A token at absolute index n of a sequence (n tokens precede it) gets
 *   position(n) = n < pin_from ? n + rope_delta : pin_value
 *   block(n)    = n < pin_from ? 0 : n - pin_from + 1        (stream 1 of 2-stream trackers)
 * and a 3-stream tracker writes position(n) to all three axes. Plain decoders: rope_delta 0,
 * never pinned. A step lists (seq_id, new_tokens) entries; its output token o_e + j (o_e = the
 * new_tokens of the entries before e) is token lengths[seq] + j of that sequence. Positions are
 * written stream-major with stream stride = the step's total tokens; then each sequence's length
 * grows by its new_tokens. A step that fails changes nothing.
 * ------------------------------------------------------------------------------------------- */

typedef struct posenc_position_tracker posenc_position_tracker;

#define POSENC_NEVER_PINNED INT64_MAX

typedef struct posenc_sequence_state {
  size_t struct_size;
  int64_t length;     /* tokens already in the sequence (its KV cache) */
  int64_t rope_delta;
  int64_t pin_from;   /* POSENC_NEVER_PINNED: never */
  int64_t pin_value;
} posenc_sequence_state;

typedef struct posenc_step_entry {
  int64_t seq_id;
  int64_t new_tokens; /* >= 1: a prefill chunk, or 1 for a decode step */
} posenc_step_entry;

/* `streams` 1, 2 or 3; positions must lie in [0, position_limit) (e.g. the spec's). */
POSENC_API posenc_status posenc_position_tracker_create(int32_t streams, int64_t position_limit,
                                                        posenc_position_tracker** out);
POSENC_API void posenc_position_tracker_destroy(posenc_position_tracker* tracker);
/* `state` NULL: a new, empty, never-pinned sequence. */
POSENC_API posenc_status posenc_position_tracker_add(posenc_position_tracker* tracker, int64_t seq_id,
                                                     const posenc_sequence_state* state);
POSENC_API posenc_status posenc_position_tracker_remove(posenc_position_tracker* tracker, int64_t seq_id);
POSENC_API posenc_status posenc_position_tracker_contains(const posenc_position_tracker* tracker,
                                                          int64_t seq_id, int32_t* out);
POSENC_API posenc_status posenc_position_tracker_get_state(const posenc_position_tracker* tracker,
                                                           int64_t seq_id, posenc_sequence_state* out);
/* Re-pins a sequence from its current length (its block position restarts at 1). */
POSENC_API posenc_status posenc_position_tracker_pin(posenc_position_tracker* tracker, int64_t seq_id,
                                                     int64_t pin_value);
POSENC_API posenc_status posenc_position_tracker_size(const posenc_position_tracker* tracker, int64_t* out);
POSENC_API posenc_status posenc_position_tracker_streams(const posenc_position_tracker* tracker, int32_t* out);
/* The sequence's slot in [0, size): its index in the tracker's state arrays, which is its slot in a
 * device tracker made from this one (posenc_gpu_position_tracker_create). Slots follow the order
 * of add; remove moves the last slot's sequence into the freed one. */
POSENC_API posenc_status posenc_position_tracker_slot(const posenc_position_tracker* tracker, int64_t seq_id,
                                                      int64_t* out);
/* One step: writes streams * tokens int64 positions to `positions` (`capacity` values; the
 * step's tokens are the sum of new_tokens) and the token count to `tokens`, then commits the
 * lengths. */
POSENC_API posenc_status posenc_position_tracker_step(posenc_position_tracker* tracker,
                                                      const posenc_step_entry* entries, size_t entry_count,
                                                      int64_t* positions, size_t capacity, int64_t* tokens);
/* The same positions without committing. */
POSENC_API posenc_status posenc_position_tracker_peek(const posenc_position_tracker* tracker,
                                                      const posenc_step_entry* entries, size_t entry_count,
                                                      int64_t* positions, size_t capacity, int64_t* tokens);

/* ---------------------------------------------------------------------------------------------
 * Continuous batching on the device: the GPU position tracker
 *
 * The host tracker's rule run on the device (include/posenc/gpu.hpp, gpu::GpuPositionTracker): each
 * slot's state (length, rope_delta, pin_from, pin_value) lives in device memory, and a step turns
 * a device-side list of (slot, new_tokens) entries into the step's positions on a stream, without
 * a host round trip, so a scheduler on the device (or a captured graph) feeds the GPU engine
 * directly. Slots are the host tracker's (posenc_position_tracker_slot) at creation; the device
 * copy then lives on its own (sequences added to the host tracker later are not seen).
 *
 * Differences from the host step: entries name slots, not sequence ids; positions are written
 * stream-major with stream stride max_tokens (not the step's tokens); and the device cannot
 * refuse a bad entry before writing. A slot outside [0, slots), a slot repeated within the step,
 * new_tokens < 1 or a position outside [0, position_limit) is recorded on the device instead: that
 * entry writes nothing and keeps its length, the others proceed. Entries adding up to more than
 * max_tokens write nothing at all; a sum other than total_tokens is recorded too.
 * posenc_gpu_position_tracker_check reports the first fault (POSENC_ERROR_OUT_OF_RANGE or
 * POSENC_ERROR_INVALID_ARGUMENT naming the entry, the value and the limit). Without a GPU or GPU
 * support, create fails as posenc_gpu_engine_create does (POSENC_ERROR_UNSUPPORTED naming the
 * reason posenc_get_gpu_info gives).
 * ------------------------------------------------------------------------------------------- */

typedef struct posenc_gpu_position_tracker posenc_gpu_position_tracker;

/* Uploads `host`'s slots to device `device` (synchronizes; the host tracker is only read).
 * `max_tokens` in [1, INT32_MAX] bounds one step's tokens and is the stream stride of its output. */
POSENC_API posenc_status posenc_gpu_position_tracker_create(const posenc_position_tracker* host, int32_t device,
                                                            int64_t max_tokens, posenc_gpu_position_tracker** out);
POSENC_API void posenc_gpu_position_tracker_destroy(posenc_gpu_position_tracker* tracker);
/* One step on `stream` (NULL: the legacy default stream): `slots` and `new_tokens` are device
 * arrays of `entry_count` int32 values (at most 4096 entries); `total_tokens` (at most max_tokens)
 * is the sum of new_tokens the caller planned, which sizes the launch (the device recomputes it);
 * `positions` is a device buffer of streams * max_tokens int64 values. One launch: it allocates,
 * copies and waits for nothing. An empty step (entry_count 0) launches nothing. */
POSENC_API posenc_status posenc_gpu_position_tracker_step(posenc_gpu_position_tracker* tracker, const int32_t* slots,
                                                          const int32_t* new_tokens, size_t entry_count,
                                                          int64_t total_tokens, int64_t* positions, void* stream);
/* The view of a step's `total_tokens` positions in `positions` (int64, the tracker's streams,
 * stream_stride max_tokens) as posenc_rope_args / posenc_append_args take it. */
POSENC_API posenc_status posenc_gpu_position_tracker_positions(const posenc_gpu_position_tracker* tracker,
                                                               const int64_t* positions, int64_t total_tokens,
                                                               posenc_positions* out);
/* Synchronizes `stream`, then reports the first bad entry recorded since the last check (and
 * clears it), or a fault of the launch. */
POSENC_API posenc_status posenc_gpu_position_tracker_check(const posenc_gpu_position_tracker* tracker, void* stream);
/* Copies the device lengths of the `slots` slots into `out` (`capacity` values; synchronizes
 * `stream`: for tests and monitoring, not the hot path). */
POSENC_API posenc_status posenc_gpu_position_tracker_lengths(const posenc_gpu_position_tracker* tracker, int64_t* out,
                                                             size_t capacity, void* stream);
POSENC_API posenc_status posenc_gpu_position_tracker_streams(const posenc_gpu_position_tracker* tracker, int32_t* out);
POSENC_API posenc_status posenc_gpu_position_tracker_slots(const posenc_gpu_position_tracker* tracker, int64_t* out);
POSENC_API posenc_status posenc_gpu_position_tracker_max_tokens(const posenc_gpu_position_tracker* tracker,
                                                                int64_t* out);

/* ---------------------------------------------------------------------------------------------
 * GLM position ids and attention masks (host; docs/GLM.md is the guide, include/posenc/glm.hpp
 * the full contracts)
 *
 * Builders compute the position ids each GLM generation's own code computes (ChatGLM-6B's 2-D
 * (position, block) ids, GLM-130B's pinned ids, the original GLM's blank infilling, ChatGLM2/3
 * and GLM-4's padded batches, M-RoPE (t, h, w) streams for GLM-4.1V / GLM-4.5V and Qwen-VL,
 * glm-4v-9b's image expansion) and return them in a posenc_glm_positions handle; an engine call
 * takes them as they are (posenc_glm_positions_view). Masks are built from attention patterns
 * into a posenc_glm_mask handle: per-row visible key ranges, or the dense additive mask.
 *
 * Arrays of structs that start with struct_size (grids, patterns): every element has the same
 * struct_size, and element i starts struct_size * i bytes after the first.
 * ------------------------------------------------------------------------------------------- */

/* "This generation has no such token." */
#define POSENC_GLM_NO_TOKEN ((int64_t)-1)

/* The special token ids the position rules look for (no token: POSENC_GLM_NO_TOKEN). */
typedef struct posenc_glm_special_tokens {
  size_t struct_size;
  int64_t mask;           /* [MASK]  short blank (positions pinned to it) */
  int64_t gmask;          /* [gMASK] generation blank (left-to-right continuation) */
  int64_t smask;          /* [sMASK] sentence blank */
  int64_t sop;            /* <sop>   start of a piece */
  int64_t eop;            /* <eop>   end of a piece */
  int64_t begin_of_image; /* glm-4v-9b <|begin_of_image|> */
  int64_t end_of_image;   /* glm-4v-9b <|end_of_image|> */
} posenc_glm_special_tokens;

enum {                                            /* vocabularies of posenc_glm_special_tokens_get */
  POSENC_GLM_TOKENS_CHATGLM_6B = 0,               /* [MASK] 130000 .. <eop> 130005 */
  POSENC_GLM_TOKENS_CHATGLM_6B_FIRST_RELEASE = 1, /* the same + 20000 (icetk with image tokens) */
  POSENC_GLM_TOKENS_GLM_130B = 2,                 /* [MASK] 150000 .. <eop> 150005 */
  POSENC_GLM_TOKENS_CHATGLM2 = 3,                 /* ChatGLM2-6B / ChatGLM3-6B: [MASK] 64789 .. eop 64793 */
  POSENC_GLM_TOKENS_GLM4 = 4                      /* GLM-4-9B / glm-4v-9b: [MASK] 151330 .., images 151339/151340 */
};
POSENC_API posenc_status posenc_glm_special_tokens_get(int32_t vocabulary, posenc_glm_special_tokens* out);

/* Which mask token fixes ChatGLM-6B's generation position when a prompt holds both. */
enum {
  POSENC_GLM_RULE_MASK_FIRST = 0, /* the tokenizer's rule: [MASK] if present, else [gMASK] */
  POSENC_GLM_RULE_GMASK_FIRST = 1 /* the model-side fallback when position_ids are not supplied */
};

/* The result of a builder. */
typedef struct posenc_glm_positions posenc_glm_positions;

/* What a builder produced. Pointers live as long as the handle. Fields a builder does not set
 * are 0 (NULL), except mask_token (POSENC_GLM_NO_TOKEN). */
typedef struct posenc_glm_positions_info {
  size_t struct_size;
  int32_t streams;       /* 1, 2 (position, block) or 3 (M-RoPE t, h, w) */
  int32_t pinned;        /* GLM-130B: 1 when the positions from <sop> on are pinned to mask_position */
  int64_t tokens;        /* tokens, all rows of a batch together */
  const int64_t* values; /* streams * tokens: stream s of token i at values[s * tokens + i] */
  /* Batches (left-padded rows; a single sequence is batch 1, length tokens): token (b, t) is
   * token index b * length + t. */
  int64_t batch;
  int64_t length;
  const uint8_t* valid; /* batch * length, 1 = real token, 0 = padding; NULL: all real */
  /* What the rules found in the tokens. */
  int64_t prefix_len;    /* the bidirectional prefix (prefix_lm): ChatGLM-6B context_length (its
                            <sop>), GLM-130B sop_index, blank infilling sep */
  int64_t mask_position; /* ChatGLM-6B, GLM-130B: index of the generation mask */
  int64_t mask_token;    /* ... and which token it is */
  int64_t rope_delta;    /* M-RoPE, glm-4v-9b: a later token at index n has position n + rope_delta */
  int64_t next_position; /* single sequences: the position of the token after the last (not set by
                            blank_infilling_context, whose continuation depends on the mask chosen) */
  int64_t next_block;    /* ChatGLM-6B, blank infilling generation: its block position */
  int64_t boi_index;     /* glm-4v-9b: index of <|begin_of_image|> */
  int64_t num_patches;   /* glm-4v-9b: image embeddings the placeholder expanded to */
  /* Lists: blank infilling context: the sorted indices of its mask tokens; ChatGLM-6B batch: per
   * row (batch entries) the mask position (unpadded), the left pads and the prefix_lm length in
   * slots (pads + context_length). */
  int64_t mask_position_count;
  const int64_t* mask_positions;
  const int64_t* pad_counts;
  const int64_t* prefix_lens;
} posenc_glm_positions_info;

POSENC_API void posenc_glm_positions_destroy(posenc_glm_positions* positions);
POSENC_API posenc_status posenc_glm_positions_get_info(const posenc_glm_positions* positions,
                                                       posenc_glm_positions_info* out);
/* The ids as an engine call takes them (int64, `streams` streams, stream_stride = tokens). */
POSENC_API posenc_status posenc_glm_positions_view(const posenc_glm_positions* positions, posenc_positions* out);
/* The tracker state that continues this prompt (posenc_position_tracker_add): ChatGLM-6B (pinned
 * at the mask from <sop> on), GLM-130B, M-RoPE and glm-4v-9b prompts; POSENC_ERROR_INVALID_ARGUMENT
 * for the other builders' results. */
POSENC_API posenc_status posenc_glm_positions_tracker_state(const posenc_glm_positions* positions,
                                                            posenc_sequence_state* out);

/* Plain 1-D positions past_len .. past_len + count - 1 (ChatGLM2/3 and GLM-4 prefill, and every
 * decoder without special rules). */
POSENC_API posenc_status posenc_glm_arange(int64_t past_len, int64_t count, posenc_glm_positions** out);
/* ChatGLM2/3 / GLM-4 tokenizer padding: rows of lengths[b] tokens left-padded to the longest,
 * real tokens 0 .. n-1, pads pad_fill (the tokenizer uses 0). */
POSENC_API posenc_status posenc_glm_left_padded_arange(const int64_t* lengths, size_t batch, int64_t pad_fill,
                                                       posenc_glm_positions** out);
/* Hugging Face position ids of a padded batch from its 0/1 attention mask [batch * length]:
 * cumsum(mask) - 1 per row, padding pad_fill (generate() uses 1 up to transformers 5.0, 0 later). */
POSENC_API posenc_status posenc_glm_positions_from_attention_mask(const uint8_t* mask, int64_t batch, int64_t length,
                                                                  int64_t pad_fill, posenc_glm_positions** out);
/* The positions of the next new_tokens tokens of each row after `mask` (decode): count(real) + i;
 * [batch, new_tokens], all valid. */
POSENC_API posenc_status posenc_glm_next_positions_from_attention_mask(const uint8_t* mask, int64_t batch,
                                                                       int64_t length, int64_t new_tokens,
                                                                       posenc_glm_positions** out);
/* ChatGLM-6B prompt `... [gMASK] <sop> ...`: 2 streams, position = arange pinned at the mask from
 * <sop> on, block = 0 before <sop>, 1, 2, ... from it. `special` NULL: ChatGLM-6B's vocabulary;
 * `rule` POSENC_GLM_RULE_MASK_FIRST or POSENC_GLM_RULE_GMASK_FIRST. */
POSENC_API posenc_status posenc_glm_chatglm6b_positions(const int64_t* tokens, size_t count,
                                                        const posenc_glm_special_tokens* special, int32_t rule,
                                                        posenc_glm_positions** out);
/* A left-padded ChatGLM-6B batch as its tokenizer builds it: `tokens` holds the rows one after
 * the other, row b has lengths[b] tokens; pads get position 0, block 0, validity 0. */
POSENC_API posenc_status posenc_glm_chatglm6b_batch(const int64_t* tokens, const int64_t* lengths, size_t batch,
                                                    const posenc_glm_special_tokens* special, int32_t rule,
                                                    posenc_glm_positions** out);
/* GLM-130B `context <sop> generated...`: 1-D arange; with a [MASK]/[sMASK] generation mask the
 * positions from <sop> on are pinned to it. `special` NULL: GLM-130B's vocabulary. */
POSENC_API posenc_status posenc_glm_glm130b_positions(const int64_t* tokens, size_t count,
                                                      const posenc_glm_special_tokens* special,
                                                      posenc_glm_positions** out);
/* The original GLM's inference on a context holding mask tokens: 2 streams (arange, 0), sep =
 * count, the mask indices as mask_positions. `special` is required (the original GLM has no single
 * vocabulary). */
POSENC_API posenc_status posenc_glm_blank_infilling_context(const int64_t* tokens, size_t count,
                                                            const posenc_glm_special_tokens* special,
                                                            posenc_glm_positions** out);
/* Generating into the mask at mask_position: `count` tokens at position mask_position, blocks
 * first_block, first_block + 1, ... (1 for the <sop>). */
POSENC_API posenc_status posenc_glm_blank_infilling_generation(int64_t mask_position, int64_t first_block,
                                                               int64_t count, posenc_glm_positions** out);

/* M-RoPE (GLM-4.1V / GLM-4.5V, Qwen2-VL, Qwen2.5-VL, Qwen3-VL). */

/* A vision block as Hugging Face's grid_thw gives it (before the spatial merge): t temporal
 * patches of an h x w grid; the language model sees t * (h / merge) * (w / merge) tokens.
 * posenc_glm_vision_grid_make sets the defaults. */
typedef struct posenc_glm_vision_grid {
  size_t struct_size;
  int64_t t;                  /* [1] */
  int64_t h;
  int64_t w;
  int64_t spatial_merge_size; /* [2] */
  int64_t temporal_interval;  /* [1] t-id step between temporal patches */
  float seconds_per_grid;     /* [0] when > 0, Qwen2.5-VL 4.x's float rule replaces temporal_interval: */
  float tokens_per_second;    /*     t-id = start + int64(float32(float32(ti) * seconds_per_grid) * tokens_per_second) */
} posenc_glm_vision_grid;

/* A piece of an M-RoPE sequence: a run of text tokens or one vision block. */
enum { POSENC_GLM_SEGMENT_TEXT = 0, POSENC_GLM_SEGMENT_VISION = 1 };
typedef struct posenc_glm_mrope_segment {
  int32_t kind;     /* POSENC_GLM_SEGMENT_* */
  int32_t reserved; /* must be 0 */
  int64_t value;    /* text: its tokens (>= 1); vision: the index of its grid in `grids` */
} posenc_glm_mrope_segment;

/* Where the text after a vision block starts. */
enum {
  POSENC_GLM_NEXT_TEXT_MAX_PLUS_ONE = 0,  /* transformers 4.x: max(ids so far) + 1 */
  POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT = 1 /* transformers 5.3+: block start + max(H', W') */
};
/* How a video's patches appear in the tokens. */
enum {
  POSENC_GLM_VIDEO_WHOLE = 0,    /* one block of t * H' * W' tokens (Qwen2-VL, Qwen2.5-VL) */
  POSENC_GLM_VIDEO_PER_FRAME = 1 /* t frame groups of H' * W' tokens, text between them allowed
                                    (GLM-4.1V / GLM-4.5V with transformers 5.3+, Qwen3-VL) */
};

/* The tokens that stand for vision patches. */
typedef struct posenc_glm_vision_tokens {
  size_t struct_size;
  int64_t image;
  int64_t video;
} posenc_glm_vision_tokens;
enum {
  POSENC_GLM_VISION_QWEN2_VL = 0, /* image 151655, video 151656 (also Qwen2.5-VL, Qwen3-VL) */
  POSENC_GLM_VISION_GLM4V = 1     /* GLM-4.1V / GLM-4.5V: image 151343, video 151344 */
};
POSENC_API posenc_status posenc_glm_vision_tokens_get(int32_t family, posenc_glm_vision_tokens* out);

/* 3-stream ids of one sequence from its segments: text advances all axes by 1; a vision block
 * starting at s gets t-id s + temporal offset, h-id s + i, w-id s + j; `rule` places the text after
 * it. Sets rope_delta and next_position. */
POSENC_API posenc_status posenc_glm_mrope_positions(const posenc_glm_mrope_segment* segments, size_t segment_count,
                                                    const posenc_glm_vision_grid* grids, size_t grid_count,
                                                    int32_t rule, posenc_glm_positions** out);
/* The same from the token ids: runs of vision->image / vision->video tokens consume image_grids /
 * video_grids in order, each run exactly its grid's tokens (the message names the index of a run
 * that is not, and grids that run out or are left over). */
POSENC_API posenc_status posenc_glm_mrope_positions_from_tokens(
    const int64_t* tokens, size_t count, const posenc_glm_vision_tokens* vision,
    const posenc_glm_vision_grid* image_grids, size_t image_grid_count, const posenc_glm_vision_grid* video_grids,
    size_t video_grid_count, int32_t rule, int32_t video_layout, posenc_glm_positions** out);
/* Decode: `count` tokens after past_len tokens, all three axes past_len + rope_delta + i. */
POSENC_API posenc_status posenc_glm_mrope_decode_positions(int64_t past_len, int64_t rope_delta, int64_t count,
                                                           posenc_glm_positions** out);
/* glm-4v-9b (remote code): the placeholder between <|begin_of_image|> and <|end_of_image|> becomes
 * num_patches embeddings, all at position boi_index + 1; 1 stream of count - 1 + num_patches ids.
 * `special` NULL: GLM-4's vocabulary. */
POSENC_API posenc_status posenc_glm_glm4v_remote_positions(const int64_t* tokens, size_t count, int64_t num_patches,
                                                           const posenc_glm_special_tokens* special,
                                                           posenc_glm_positions** out);

/* Attention masks. Query row r of q_len queries over k_len keys is key slot k_len - q_len + r (a
 * KV-cache offset); slots count padding. */
enum {
  POSENC_GLM_PATTERN_CAUSAL = 0,        /* visible(q, k) = k <= q */
  POSENC_GLM_PATTERN_BIDIRECTIONAL = 1, /* true */
  POSENC_GLM_PATTERN_PREFIX_LM = 2,     /* k < prefix_len || k <= q (prefix_len <= k_len) */
  POSENC_GLM_PATTERN_LOCAL_WINDOW = 3,  /* q - window < k <= q (window >= 1) */
  POSENC_GLM_PATTERN_GLOBAL_LOCAL = 4,  /* k <= q && (global(q) || global(k) || q - k < window) */
  POSENC_GLM_PATTERN_CUSTOM = 5         /* predicate(context, q, k) != 0 */
};

typedef struct posenc_glm_attention_pattern {
  size_t struct_size;
  int32_t kind;     /* POSENC_GLM_PATTERN_* */
  int32_t reserved; /* must be 0 */
  int64_t prefix_len;
  int64_t window;
  const int64_t* global_positions; /* global_local: key slots, any order */
  size_t global_count;
  /* custom: called for every (q, k) of the call, on the calling thread; it must not unwind. */
  int32_t (*predicate)(void* context, int64_t q, int64_t k);
  void* context;
} posenc_glm_attention_pattern;

/* What a row that sees no key becomes. */
enum {
  POSENC_GLM_EMPTY_ROWS_MASKED = 0,     /* stays all masked (the caller discards padding rows) */
  POSENC_GLM_EMPTY_ROWS_ALL_VISIBLE = 1 /* sees every key slot (ChatGLM2/3 remote code) */
};

typedef struct posenc_glm_mask_geometry {
  size_t struct_size;
  int64_t batch; /* [1] when 0 */
  int64_t q_len;
  int64_t k_len;
  /* NULL: no padding; else [batch * k_len] 0/1 per key slot (e.g. posenc_glm_positions_info.valid):
   * it masks padding keys and the query rows at padding slots. */
  const uint8_t* valid;
  int32_t empty_rows; /* POSENC_GLM_EMPTY_ROWS_* */
  int32_t reserved;   /* must be 0 */
} posenc_glm_mask_geometry;

typedef struct posenc_glm_mask posenc_glm_mask;

typedef struct posenc_glm_key_range {
  int64_t begin;
  int64_t end;
} posenc_glm_key_range;

/* Row i = b * q_len + r sees the key slots of ranges[row_offsets[i] .. row_offsets[i + 1]), which
 * are sorted, non-empty, disjoint and not adjacent. Pointers live as long as the handle. */
typedef struct posenc_glm_mask_info {
  size_t struct_size;
  int64_t batch;
  int64_t q_len;
  int64_t k_len;
  int64_t range_count;
  const int64_t* row_offsets; /* batch * q_len + 1 entries */
  const posenc_glm_key_range* ranges;
} posenc_glm_mask_info;

/* `patterns`: one for every row of the batch, or `batch` of them (one per sequence). */
POSENC_API posenc_status posenc_glm_mask_create(const posenc_glm_attention_pattern* patterns, size_t pattern_count,
                                                const posenc_glm_mask_geometry* geometry, posenc_glm_mask** out);
POSENC_API void posenc_glm_mask_destroy(posenc_glm_mask* mask);
POSENC_API posenc_status posenc_glm_mask_get_info(const posenc_glm_mask* mask, posenc_glm_mask_info* out);
/* The dense additive mask [batch, q_len, k_len], row-major: 0.0f visible, -INFINITY masked;
 * `capacity` >= batch * q_len * k_len (at most 2^30 elements). */
POSENC_API posenc_status posenc_glm_mask_dense(const posenc_glm_mask* mask, float* out, size_t capacity);

/* ---------------------------------------------------------------------------------------------
 * Helpers (inline, compiled into the caller): initialized structs and plain views
 * ------------------------------------------------------------------------------------------- */

#define POSENC_DEFINE_MAKE(type)              \
  static inline type type##_make(void) {      \
    type value;                               \
    memset(&value, 0, sizeof value);          \
    value.struct_size = sizeof value;         \
    return value;                             \
  }
POSENC_DEFINE_MAKE(posenc_version_info)
POSENC_DEFINE_MAKE(posenc_gpu_info)
POSENC_DEFINE_MAKE(posenc_config_info)
POSENC_DEFINE_MAKE(posenc_spec_desc)
POSENC_DEFINE_MAKE(posenc_spec_info)
POSENC_DEFINE_MAKE(posenc_rope_args)
POSENC_DEFINE_MAKE(posenc_append_args)
POSENC_DEFINE_MAKE(posenc_counters)
POSENC_DEFINE_MAKE(posenc_cpu_options)
POSENC_DEFINE_MAKE(posenc_glm_special_tokens)
POSENC_DEFINE_MAKE(posenc_glm_positions_info)
POSENC_DEFINE_MAKE(posenc_glm_vision_tokens)
POSENC_DEFINE_MAKE(posenc_glm_mask_geometry)
POSENC_DEFINE_MAKE(posenc_glm_mask_info)
#undef POSENC_DEFINE_MAKE

/* A fresh sequence: length 0, rope_delta 0, never pinned. */
static inline posenc_sequence_state posenc_sequence_state_make(void) {
  posenc_sequence_state state;
  memset(&state, 0, sizeof state);
  state.struct_size = sizeof state;
  state.pin_from = POSENC_NEVER_PINNED;
  return state;
}

/* A t x h x w vision grid with the defaults: spatial merge 2, temporal interval 1. */
static inline posenc_glm_vision_grid posenc_glm_vision_grid_make(int64_t t, int64_t h, int64_t w) {
  posenc_glm_vision_grid grid;
  memset(&grid, 0, sizeof grid);
  grid.struct_size = sizeof grid;
  grid.t = t;
  grid.h = h;
  grid.w = w;
  grid.spatial_merge_size = 2;
  grid.temporal_interval = 1;
  return grid;
}

/* An attention pattern of one kind (its parameters zero: set prefix_len, window, ... after). */
static inline posenc_glm_attention_pattern posenc_glm_pattern_make(int32_t kind) {
  posenc_glm_attention_pattern pattern;
  memset(&pattern, 0, sizeof pattern);
  pattern.struct_size = sizeof pattern;
  pattern.kind = kind;
  return pattern;
}

/* A dense [tokens, heads, head_dim] view (token_stride = heads * head_dim):
 *   posenc_tensor       posenc_tensor_contiguous(void* data, int32_t dtype, int64_t tokens, int64_t heads,
 *                                                int64_t head_dim);
 *   posenc_const_tensor posenc_const_tensor_contiguous(const void* data, ...the same...); */
#define POSENC_DEFINE_CONTIGUOUS(type, data_type)                                                   \
  static inline type type##_contiguous(data_type data, int32_t dtype, int64_t tokens, int64_t heads, \
                                       int64_t head_dim) {                                          \
    type t;                                                                                         \
    memset(&t, 0, sizeof t);                                                                        \
    t.data = data;                                                                                  \
    t.dtype = dtype;                                                                                \
    t.tokens = tokens;                                                                              \
    t.heads = heads;                                                                                \
    t.head_dim = head_dim;                                                                          \
    t.token_stride = heads * head_dim;                                                              \
    t.head_stride = head_dim;                                                                       \
    return t;                                                                                       \
  }
POSENC_DEFINE_CONTIGUOUS(posenc_tensor, void*)
POSENC_DEFINE_CONTIGUOUS(posenc_const_tensor, const void*)
#undef POSENC_DEFINE_CONTIGUOUS

/* One stream of `count` positions. */
static inline posenc_positions posenc_positions_1d(const void* data, int32_t type, int64_t count) {
  posenc_positions p;
  memset(&p, 0, sizeof p);
  p.data = data;
  p.type = type;
  p.streams = 1;
  p.count = count;
  p.stream_stride = count;
  return p;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* POSENC_POSENC_H */
