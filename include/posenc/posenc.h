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
enum { POSENC_LAYOUT_CONTIGUOUS = 0, POSENC_LAYOUT_PAGED_NHD = 1, POSENC_LAYOUT_PAGED_HND = 2 };
enum {                                  /* which elements of the rotary window form a pair */
  POSENC_PAIRING_HALF_SPLIT = 0,        /* NeoX / Llama rotate_half: (i, i + R/2) */
  POSENC_PAIRING_INTERLEAVED = 1,       /* GPT-J / GLM-4: (2i, 2i + 1) */
  POSENC_PAIRING_INTERLEAVED_TO_HALF = 2, /* DeepSeek-V3 rope_interleave: read adjacent, write split */
  POSENC_PAIRING_HALF_SPLIT_2D = 3      /* ChatGLM-6B 2-D: two half-split halves, two position streams */
};
enum { POSENC_NUMERICS_HF_COMPATIBLE = 0, POSENC_NUMERICS_HF_FP32_APPLY = 1, POSENC_NUMERICS_ACCURATE = 2 };
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
} posenc_spec_desc;

POSENC_API posenc_status posenc_spec_create(const posenc_spec_desc* desc, posenc_spec** out);
/* A copy of `spec` with other numerics / another position limit. */
POSENC_API posenc_status posenc_spec_with_numerics(const posenc_spec* spec, int32_t numerics,
                                                   posenc_spec** out);
POSENC_API posenc_status posenc_spec_with_position_limit(const posenc_spec* spec, int64_t position_limit,
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
} posenc_spec_info;

POSENC_API posenc_status posenc_spec_get_info(const posenc_spec* spec, posenc_spec_info* out);
/* The init-time inv_freq table (float32, as transformers computes it); `capacity` >= frequency_count. */
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
} posenc_rope_args;

/* A KV cache: two tensors K and V of one layout, dtype and shape (docs/C_API.md draws the
 * layouts): contiguous [blocks = batch, block_len = max_len, kv_heads, head_dim], paged NHD
 * [num_blocks, page_size, kv_heads, head_dim], paged HND [num_blocks, kv_heads, page_size, head_dim];
 * slot = block * block_len + offset. */
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
#undef POSENC_DEFINE_MAKE

/* A fresh sequence: length 0, rope_delta 0, never pinned. */
static inline posenc_sequence_state posenc_sequence_state_make(void) {
  posenc_sequence_state state;
  memset(&state, 0, sizeof state);
  state.struct_size = sizeof state;
  state.pin_from = POSENC_NEVER_PINNED;
  return state;
}

/* A dense [tokens, heads, head_dim] view (token_stride = heads * head_dim). */
static inline posenc_tensor posenc_tensor_contiguous(void* data, int32_t dtype, int64_t tokens, int64_t heads,
                                                     int64_t head_dim) {
  posenc_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.tokens = tokens;
  t.heads = heads;
  t.head_dim = head_dim;
  t.token_stride = heads * head_dim;
  t.head_stride = head_dim;
  return t;
}

static inline posenc_const_tensor posenc_const_tensor_contiguous(const void* data, int32_t dtype, int64_t tokens,
                                                                 int64_t heads, int64_t head_dim) {
  posenc_const_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.tokens = tokens;
  t.heads = heads;
  t.head_dim = head_dim;
  t.token_stride = heads * head_dim;
  t.head_stride = head_dim;
  return t;
}

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
