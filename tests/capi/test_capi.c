/* test_capi.c: the C ABI (posenc.h) exercised from C99: success paths against float64 and the reference, every error path, ABI growth. */
#include <posenc/posenc.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef POSENC_CONFIGS_DIR
#error "POSENC_CONFIGS_DIR must name the repository's configs/ directory"
#endif

/* ---------------------------------------------------------------------------------------------
 * A small harness: every check counts; a failure prints the line, the call and the last error.
 * ------------------------------------------------------------------------------------------- */

static int checks = 0;
static int failures = 0;

#define CHECK(cond)                                                                                   \
  do {                                                                                                \
    ++checks;                                                                                         \
    if (!(cond)) {                                                                                    \
      ++failures;                                                                                     \
      fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: \"%s\")\n", __FILE__, __LINE__, #cond,   \
              posenc_last_error());                                                                   \
    }                                                                                                 \
  } while (0)

#define CHECK_OK(call)                                                                                \
  do {                                                                                                \
    const posenc_status status_ = (call);                                                             \
    ++checks;                                                                                         \
    if (status_ != POSENC_OK) {                                                                       \
      ++failures;                                                                                     \
      fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,                       \
              posenc_status_name(status_), posenc_last_error());                                      \
    } else if (posenc_last_error()[0] != '\0') {                                                      \
      ++failures;                                                                                     \
      fprintf(stderr, "%s:%d: %s succeeded but left the error \"%s\"\n", __FILE__, __LINE__, #call,   \
              posenc_last_error());                                                                   \
    }                                                                                                 \
  } while (0)

/* The call must return `want`, with a message that starts with the called function's name and
 * contains every fragment. */
static void expect_error(const char* file, int line, const char* call_text, posenc_status got, posenc_status want,
                         const char* const* fragments) {
  const char* message = posenc_last_error();
  size_t name_length = strcspn(call_text, "(");
  ++checks;
  if (got != want) {
    ++failures;
    fprintf(stderr, "%s:%d: %s returned %s, expected %s (message: \"%s\")\n", file, line, call_text,
            posenc_status_name(got), posenc_status_name(want), message);
    return;
  }
  if (strncmp(message, call_text, name_length) != 0 || message[name_length] != ':') {
    ++failures;
    fprintf(stderr, "%s:%d: the message of %.*s does not start with its name: \"%s\"\n", file, line,
            (int)name_length, call_text, message);
  }
  for (; *fragments != NULL; ++fragments) {
    if (strstr(message, *fragments) == NULL) {
      ++failures;
      fprintf(stderr, "%s:%d: the message of %.*s lacks \"%s\": \"%s\"\n", file, line, (int)name_length, call_text,
              *fragments, message);
    }
  }
}

#define CHECK_ERR(call, want, ...)                                                                    \
  do {                                                                                                \
    const char* const fragments_[] = {__VA_ARGS__, NULL};                                             \
    expect_error(__FILE__, __LINE__, #call, (call), (want), fragments_);                              \
  } while (0)

/* Random values in [-1, 1) (never all zeros), and bfloat16 conversions (round to nearest even). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static void fill_random(float* data, size_t count) {
  size_t i;
  for (i = 0; i < count; ++i) data[i] = (float)uniform();
}
static uint16_t bf16_from_float(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* ---------------------------------------------------------------------------------------------
 * Versions, status names, GPU query
 * ------------------------------------------------------------------------------------------- */

static void test_version_and_status(void) {
  posenc_version_info info = posenc_version_info_make();
  posenc_gpu_info gpu = posenc_gpu_info_make();
  posenc_version_info small = posenc_version_info_make();
  CHECK_OK(posenc_get_version(&info));
  CHECK(info.major == POSENC_VERSION_MAJOR && info.minor == POSENC_VERSION_MINOR && info.patch == POSENC_VERSION_PATCH);
  CHECK(info.abi == POSENC_ABI_VERSION);
  CHECK(info.version != NULL && strcmp(info.version, "0.1.0") == 0);
  CHECK(info.backend != NULL && (strcmp(info.backend, "cuda") == 0 || strcmp(info.backend, "hip") == 0 ||
                                 strcmp(info.backend, "none") == 0));

  CHECK_OK(posenc_get_gpu_info(&gpu));
  CHECK(strcmp(gpu.backend, info.backend) == 0);
  CHECK(gpu.unavailable_reason != NULL);
  if (gpu.available) {
    CHECK(gpu.device_count > 0 && gpu.unavailable_reason[0] == '\0');
  } else {
    CHECK(strlen(gpu.unavailable_reason) > 0);
    if (strcmp(gpu.backend, "none") == 0) CHECK(gpu.device_count == 0 && strstr(gpu.unavailable_reason, "without GPU"));
  }

  CHECK_ERR(posenc_get_version(NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  small.struct_size = 0;
  CHECK_ERR(posenc_get_version(&small), POSENC_ERROR_INVALID_ARGUMENT, "out->struct_size is 0",
            "sizeof(posenc_version_info)", "posenc_version_info_make()");
  CHECK_ERR(posenc_get_gpu_info(NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");

  CHECK(strcmp(posenc_status_name(POSENC_OK), "ok") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_INVALID_ARGUMENT), "invalid_argument") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_OUT_OF_RANGE), "out_of_range") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_OVERFLOW), "overflow") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_CONFIG), "config") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_UNSUPPORTED), "unsupported") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_VENDOR), "vendor") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_IO), "io") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_OUT_OF_MEMORY), "out_of_memory") == 0);
  CHECK(strcmp(posenc_status_name(POSENC_ERROR_INTERNAL), "internal") == 0);
  CHECK(strcmp(posenc_status_name(12345), "unknown") == 0);

  /* A successful call clears the previous failure's message. */
  CHECK(posenc_get_version(NULL) != POSENC_OK && posenc_last_error()[0] != '\0');
  CHECK_OK(posenc_get_version(&info));
}

/* ---------------------------------------------------------------------------------------------
 * ABI: the struct layouts of this posenc.h (LP64), and growth in both directions
 * ------------------------------------------------------------------------------------------- */

/* What a caller compiled against a newer posenc.h would pass: this version's struct, then a
 * field this library does not know. */
typedef struct future_version_info {
  posenc_version_info known;
  int64_t future_field;
} future_version_info;

typedef struct future_rope_args {
  posenc_rope_args known;
  int64_t future_field;
} future_rope_args;

static void test_abi_layout(void) {
  future_version_info future;
  if (sizeof(void*) == 8) {
    /* The ABI 1 layouts on LP64 targets: a change here breaks every compiled caller. The call
     * structs' first version ended at `positions` / `cache`; `cos_sin` was appended since. */
    CHECK(sizeof(posenc_tensor) == 56 && sizeof(posenc_const_tensor) == 56);
    CHECK(sizeof(posenc_positions) == 32 && sizeof(posenc_cos_sin_cache) == 40);
    CHECK(sizeof(posenc_kv_cache) == 64);
    CHECK(sizeof(posenc_rope_args) == 8 + 4 * 56 + 32 + 40 + 16);
    CHECK(offsetof(posenc_rope_args, positions) == 232 && offsetof(posenc_rope_args, cos_sin) == 264);
    CHECK(offsetof(posenc_rope_args, q_norm_weight) == 304 && offsetof(posenc_rope_args, k_norm_weight) == 312);
    CHECK(sizeof(posenc_append_args) == 8 + 4 * 56 + 32 + 8 + 64 + 40 + 8 + 16 + 32 + 24);
    CHECK(offsetof(posenc_append_args, q_out_data) == 400 && offsetof(posenc_append_args, q_out_scale) == 428);
    CHECK(offsetof(posenc_append_args, cache) == 272 && offsetof(posenc_append_args, cos_sin) == 336);
    CHECK(offsetof(posenc_append_args, cache_latent_dim) == 376 && offsetof(posenc_append_args, q_norm_weight) == 384);
    CHECK(sizeof(posenc_version_info) == 40 && sizeof(posenc_gpu_info) == 32);
    CHECK(sizeof(posenc_config_info) == 64 && sizeof(posenc_spec_desc) == 88);
    CHECK(offsetof(posenc_spec_desc, hf_arithmetic) == 64 && offsetof(posenc_spec_info, hf_arithmetic) == 96);
    CHECK(offsetof(posenc_spec_desc, qk_norm) == 72 && offsetof(posenc_spec_info, qk_norm) == 104);
    CHECK(sizeof(posenc_spec_info) == 120 && sizeof(posenc_counters) == 48);
    CHECK(sizeof(posenc_cpu_options) == 16 && sizeof(posenc_sequence_state) == 40);
    CHECK(sizeof(posenc_step_entry) == 16);
    /* Appended with the GLM builders (their first version). */
    CHECK(sizeof(posenc_glm_special_tokens) == 64 && sizeof(posenc_glm_positions_info) == 152);
    CHECK(sizeof(posenc_glm_vision_grid) == 56 && sizeof(posenc_glm_mrope_segment) == 16);
    CHECK(sizeof(posenc_glm_vision_tokens) == 24 && sizeof(posenc_glm_attention_pattern) == 64);
    CHECK(sizeof(posenc_glm_mask_geometry) == 48 && sizeof(posenc_glm_key_range) == 16);
    CHECK(sizeof(posenc_glm_mask_info) == 56);
  }

  /* A newer caller's output struct: filled up to what this library knows, the rest untouched. */
  memset(&future, 0, sizeof future);
  future.known.struct_size = sizeof future;
  future.future_field = 0x5a5a5a5a;
  CHECK_OK(posenc_get_version(&future.known));
  CHECK(future.known.struct_size == sizeof future && future.known.abi == POSENC_ABI_VERSION);
  CHECK(future.future_field == 0x5a5a5a5a);

  /* Implausible and misaligned sizes. */
  future.known.struct_size = 100000;
  CHECK_ERR(posenc_get_version(&future.known), POSENC_ERROR_INVALID_ARGUMENT, "struct_size is 100000",
            "above the limit 4096");
  future.known.struct_size = sizeof(posenc_version_info) + 4;
  CHECK_ERR(posenc_get_version(&future.known), POSENC_ERROR_INVALID_ARGUMENT, "not a multiple of",
            "alignment 8");
}

/* ---------------------------------------------------------------------------------------------
 * Configs and specs
 * ------------------------------------------------------------------------------------------- */

static void test_config(void) {
  posenc_config* config = NULL;
  posenc_config* gemma = NULL;
  posenc_config* text = NULL;
  posenc_config* untouched = (posenc_config*)&checks; /* a failed call must not write it */
  posenc_spec* spec = NULL;
  posenc_config_info info = posenc_config_info_make();
  posenc_spec_info spec_info = posenc_spec_info_make();
  const char* name = NULL;
  const char* description = NULL;
  float inv_freq[64];
  int64_t i;
  const char* llama3 =
      "{\"model_type\": \"llama\", \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"hidden_size\": 4096,"
      " \"max_position_embeddings\": 131072, \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\","
      " \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
      " \"original_max_position_embeddings\": 8192}}";
  const char* bad_key = "{\"model_type\": \"llama\", \"num_attention_heads\": 32, \"hidden_size\": 4096,"
                        " \"rope_scaling\": {\"rope_type\": \"warp\", \"factor\": 2.0}}";

  /* The embedded default: GLM-4-9B-chat (remote code: kv_channels 128, rope_ratio 500). */
  CHECK_OK(posenc_config_default(&config));
  CHECK_OK(posenc_config_get_info(config, &info));
  CHECK(strcmp(info.model_type, "chatglm") == 0 && strstr(info.source, "glm-4-9b-chat") != NULL);
  CHECK(info.num_attention_heads == 32 && info.num_key_value_heads == 2 && info.head_dim == 128);
  CHECK(info.layer_type_count == 1);
  CHECK_OK(posenc_config_layer_type(config, 0, &name));
  CHECK(strcmp(name, "default") == 0);
  CHECK_OK(posenc_config_spec(config, NULL, &spec));
  CHECK_OK(posenc_spec_get_info(spec, &spec_info));
  CHECK(spec_info.head_dim == 128 && spec_info.rotary_dim == 64 && spec_info.rotary_offset == 0);
  CHECK(spec_info.pairing == POSENC_PAIRING_INTERLEAVED && spec_info.scaling == POSENC_SCALING_NONE);
  CHECK(spec_info.theta == 5000000.0 && spec_info.attention_factor == 1.0);
  CHECK(spec_info.position_streams == 1 && spec_info.frequency_count == 32 && spec_info.mrope_section_count == 0);
  CHECK_OK(posenc_spec_inv_freq(spec, inv_freq, 32));
  /* inv_freq[i] = 1 / theta^(2i/64), computed in float32 as transformers does: within 2 ulps. */
  for (i = 0; i < 32; ++i) {
    const double want = 1.0 / pow(5000000.0, (double)(2 * i) / 64.0);
    CHECK(fabs(inv_freq[i] - want) <= 2.0 * want * 1.1920929e-7);
  }
  CHECK_OK(posenc_spec_mrope_section(spec, NULL, 0)); /* a single stream: nothing to write */
  CHECK_OK(posenc_spec_describe(spec, &description));
  CHECK(strstr(description, "interleaved") != NULL);
  CHECK_ERR(posenc_spec_inv_freq(spec, inv_freq, 31), POSENC_ERROR_INVALID_ARGUMENT, "capacity 31", "32 inv_freq");
  CHECK_ERR(posenc_spec_inv_freq(spec, NULL, 32), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_spec_describe(spec, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_spec_get_info(NULL, &spec_info), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  posenc_spec_destroy(spec);
  spec = NULL;

  /* A layer-typed config from a file: one spec per attention layer type. */
  CHECK_OK(posenc_config_load(POSENC_CONFIGS_DIR "/gemma-3-4b.json", &gemma));
  CHECK_OK(posenc_config_get_info(gemma, &info));
  CHECK(strcmp(info.model_type, "gemma3") == 0 && info.layer_type_count == 2);
  CHECK_OK(posenc_config_layer_type(gemma, 0, &name));
  CHECK(strcmp(name, "full_attention") == 0);
  CHECK_OK(posenc_config_layer_type(gemma, 1, &name));
  CHECK(strcmp(name, "sliding_attention") == 0);
  CHECK_OK(posenc_config_spec(gemma, "sliding_attention", &spec));
  CHECK_OK(posenc_spec_get_info(spec, &spec_info));
  CHECK(spec_info.theta == 10000.0 && spec_info.scaling == POSENC_SCALING_NONE);
  posenc_spec_destroy(spec);
  CHECK_OK(posenc_config_spec(gemma, "full_attention", &spec));
  CHECK_OK(posenc_spec_get_info(spec, &spec_info));
  CHECK(spec_info.theta == 1000000.0 && spec_info.scaling == POSENC_SCALING_LINEAR);
  posenc_spec_destroy(spec);
  spec = NULL;
  CHECK_ERR(posenc_config_layer_type(gemma, 2, &name), POSENC_ERROR_OUT_OF_RANGE, "index 2 is outside [0, 2)");
  CHECK_ERR(posenc_config_layer_type(gemma, -1, &name), POSENC_ERROR_OUT_OF_RANGE, "index -1");
  CHECK_ERR(posenc_config_spec(gemma, NULL, &spec), POSENC_ERROR_CONFIG, "default", "full_attention");
  CHECK_ERR(posenc_config_spec(gemma, "chunked", &spec), POSENC_ERROR_CONFIG, "chunked");
  CHECK(spec == NULL);

  /* Text: a Llama 3.1 scheme, and a bad one. */
  CHECK_OK(posenc_config_parse(llama3, strlen(llama3), "llama3-text", &text));
  CHECK_OK(posenc_config_get_info(text, &info));
  CHECK(strcmp(info.source, "llama3-text") == 0 && info.head_dim == 128 && info.num_key_value_heads == 8);
  CHECK_OK(posenc_config_spec(text, "default", &spec));
  CHECK_OK(posenc_spec_get_info(spec, &spec_info));
  CHECK(spec_info.scaling == POSENC_SCALING_LLAMA3 && spec_info.theta == 500000.0);
  posenc_spec_destroy(spec);
  spec = NULL;
  CHECK_ERR(posenc_config_parse(bad_key, strlen(bad_key), NULL, &untouched), POSENC_ERROR_CONFIG, "warp", "<text>");
  CHECK_ERR(posenc_config_parse("{\"model_type\": ", 15, "cut", &untouched), POSENC_ERROR_CONFIG, "cut");
  CHECK_ERR(posenc_config_parse(llama3, (size_t)1 << 40, NULL, &untouched), POSENC_ERROR_CONFIG,
            "length 1099511627776", "config text limit");
  CHECK_ERR(posenc_config_parse(NULL, 0, NULL, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "json is NULL");
  CHECK_ERR(posenc_config_parse(llama3, strlen(llama3), NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_config_load("/nonexistent/posenc-config.json", &untouched), POSENC_ERROR_IO,
            "/nonexistent/posenc-config.json");
  CHECK_ERR(posenc_config_load(NULL, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "path is NULL");
  CHECK_ERR(posenc_config_load(POSENC_CONFIGS_DIR "/gemma-3-4b.json", NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "out is NULL");
  CHECK_ERR(posenc_config_default(NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_config_get_info(NULL, &info), POSENC_ERROR_INVALID_ARGUMENT, "config is NULL");
  CHECK_ERR(posenc_config_get_info(text, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_config_layer_type(NULL, 0, &name), POSENC_ERROR_INVALID_ARGUMENT, "config is NULL");
  CHECK_ERR(posenc_config_layer_type(text, 0, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_config_spec(NULL, NULL, &spec), POSENC_ERROR_INVALID_ARGUMENT, "config is NULL");
  CHECK_ERR(posenc_config_spec(text, NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK(untouched == (posenc_config*)&checks);

  posenc_config_destroy(config);
  posenc_config_destroy(gemma);
  posenc_config_destroy(text);
  posenc_config_destroy(NULL);
}

static void test_spec_create(void) {
  posenc_spec_desc desc = posenc_spec_desc_make();
  posenc_spec* spec = NULL;
  posenc_spec* other = NULL;
  posenc_spec_info info = posenc_spec_info_make();
  posenc_spec_desc old = posenc_spec_desc_make();

  desc.head_dim = 64; /* every other field zero: the defaults */
  CHECK_OK(posenc_spec_create(&desc, &spec));
  CHECK_OK(posenc_spec_get_info(spec, &info));
  CHECK(info.head_dim == 64 && info.rotary_dim == 64 && info.pairing == POSENC_PAIRING_HALF_SPLIT);
  CHECK(info.numerics == POSENC_NUMERICS_HF_COMPATIBLE && info.theta == 10000.0 && info.attention_factor == 1.0);
  CHECK(info.position_limit == (int64_t)1 << 31 && info.frequency_count == 32);

  CHECK_OK(posenc_spec_with_numerics(spec, POSENC_NUMERICS_ACCURATE, &other));
  CHECK_OK(posenc_spec_get_info(other, &info));
  CHECK(info.numerics == POSENC_NUMERICS_ACCURATE && info.head_dim == 64);
  posenc_spec_destroy(other);
  CHECK_OK(posenc_spec_with_position_limit(spec, 100, &other));
  CHECK_OK(posenc_spec_get_info(other, &info));
  CHECK(info.position_limit == 100);
  posenc_spec_destroy(other);
  other = NULL;

  /* hf_arithmetic: ENGINE by default (also for a caller of the first, 64-byte posenc_spec_desc),
   * kept as given; a TORCH_CUDA spec has the CPU's init table, and the CPU engine refuses it. */
  CHECK(info.hf_arithmetic == POSENC_HF_ARITHMETIC_ENGINE);
  {
    posenc_spec_desc first = desc;
    posenc_spec_info first_info = posenc_spec_info_make();
    posenc_cpu_engine* cpu = NULL;
    float inv_freq[32];
    first.struct_size = offsetof(posenc_spec_desc, hf_arithmetic);
    CHECK_OK(posenc_spec_create(&first, &other));
    first_info.struct_size = offsetof(posenc_spec_info, hf_arithmetic);
    first_info.hf_arithmetic = 77; /* beyond the caller's struct_size: left alone */
    CHECK_OK(posenc_spec_get_info(other, &first_info));
    CHECK(first_info.hf_arithmetic == 77 && first_info.head_dim == 64);
    posenc_spec_destroy(other);
    CHECK_OK(posenc_spec_with_hf_arithmetic(spec, POSENC_HF_ARITHMETIC_EXACT, &other));
    CHECK_OK(posenc_spec_get_info(other, &info));
    CHECK(info.hf_arithmetic == POSENC_HF_ARITHMETIC_EXACT);
    posenc_spec_destroy(other);
    CHECK_OK(posenc_spec_with_hf_arithmetic(spec, POSENC_HF_ARITHMETIC_TORCH_CUDA, &other));
    CHECK_OK(posenc_spec_get_info(other, &info));
    CHECK(info.hf_arithmetic == POSENC_HF_ARITHMETIC_TORCH_CUDA && info.frequency_count == 32);
    CHECK_OK(posenc_spec_inv_freq(other, inv_freq, 32)); /* the init table: torch's CPU one */
    CHECK(inv_freq[0] == 1.0f && inv_freq[31] > 0.0f && inv_freq[31] < inv_freq[30]);
    CHECK_ERR(posenc_cpu_engine_create(other, NULL, &cpu), POSENC_ERROR_UNSUPPORTED, "torch_cuda", "NVIDIA GPU");
    posenc_spec_destroy(other);
    CHECK_ERR(posenc_spec_with_hf_arithmetic(spec, 4, &other), POSENC_ERROR_INVALID_ARGUMENT, "hf_arithmetic is 4");
    desc.hf_arithmetic = 9;
    CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "desc->hf_arithmetic is 9");
    desc.hf_arithmetic = POSENC_HF_ARITHMETIC_TORCH_CPU;
    desc.reserved = 1;
    CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "reserved is 1");
    desc.reserved = 0;
    CHECK_OK(posenc_spec_create(&desc, &other));
    posenc_spec_destroy(other);
    desc.hf_arithmetic = 0;
    other = NULL;
  }

  desc.rotary_dim = 32;
  desc.rotary_offset = 16;
  desc.pairing = POSENC_PAIRING_INTERLEAVED;
  desc.theta = 500000.0;
  desc.attention_factor = 0.5;
  CHECK_OK(posenc_spec_create(&desc, &other));
  CHECK_OK(posenc_spec_get_info(other, &info));
  CHECK(info.rotary_dim == 32 && info.rotary_offset == 16 && info.pairing == POSENC_PAIRING_INTERLEAVED);
  CHECK(info.theta == 500000.0 && info.attention_factor == 0.5 && info.frequency_count == 16);
  posenc_spec_destroy(other);
  other = NULL;

  desc = posenc_spec_desc_make();
  desc.head_dim = 63;
  CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "63");
  desc.head_dim = 64;
  desc.pairing = 9;
  CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "desc->pairing is 9",
            "POSENC_PAIRING_HALF_SPLIT (0)");
  desc.pairing = 0;
  desc.numerics = -1;
  CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "desc->numerics is -1");
  desc.numerics = 0;
  desc.theta = -1.0;
  CHECK_ERR(posenc_spec_create(&desc, &other), POSENC_ERROR_INVALID_ARGUMENT, "theta");
  desc.theta = 0.0;
  CHECK_ERR(posenc_spec_create(NULL, &other), POSENC_ERROR_INVALID_ARGUMENT, "desc is NULL");
  CHECK_ERR(posenc_spec_create(&desc, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  old = desc;
  old.struct_size = 0;
  CHECK_ERR(posenc_spec_create(&old, &other), POSENC_ERROR_INVALID_ARGUMENT, "desc->struct_size is 0, below 64");
  CHECK(other == NULL);

  CHECK_ERR(posenc_spec_with_numerics(spec, 3, &other), POSENC_ERROR_INVALID_ARGUMENT, "numerics is 3");
  CHECK_ERR(posenc_spec_with_numerics(NULL, 0, &other), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_spec_with_numerics(spec, 0, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_spec_with_position_limit(spec, 0, &other), POSENC_ERROR_INVALID_ARGUMENT, "position_limit");
  CHECK_ERR(posenc_spec_with_position_limit(NULL, 10, &other), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_spec_with_position_limit(spec, 10, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_spec_mrope_section(NULL, NULL, 0), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_spec_describe(NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_spec_inv_freq(NULL, NULL, 0), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK(other == NULL);
  posenc_spec_destroy(spec);
  posenc_spec_destroy(NULL);
}

static void test_mrope_spec(void) {
  posenc_config* config = NULL;
  posenc_spec* spec = NULL;
  posenc_spec_info info = posenc_spec_info_make();
  int64_t section[3] = {0, 0, 0};
  CHECK_OK(posenc_config_load(POSENC_CONFIGS_DIR "/qwen2-vl-7b.json", &config));
  CHECK_OK(posenc_config_spec(config, NULL, &spec));
  CHECK_OK(posenc_spec_get_info(spec, &info));
  CHECK(info.position_streams == 3 && info.mrope_section_count == 3 && info.mrope_interleaved == 0);
  CHECK_OK(posenc_spec_mrope_section(spec, section, 3));
  CHECK(section[0] == 16 && section[1] == 24 && section[2] == 24);
  CHECK_ERR(posenc_spec_mrope_section(spec, section, 2), POSENC_ERROR_INVALID_ARGUMENT, "capacity 2",
            "3 M-RoPE sections");
  CHECK_ERR(posenc_spec_mrope_section(spec, NULL, 3), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  posenc_spec_destroy(spec);
  posenc_config_destroy(config);
}

/* ---------------------------------------------------------------------------------------------
 * The CPU engine
 * ------------------------------------------------------------------------------------------- */

enum { T = 5, HQ = 4, HK = 2, D = 64 };

static posenc_spec* plain_spec(int32_t numerics, int64_t position_limit) {
  posenc_spec_desc desc = posenc_spec_desc_make();
  posenc_spec* spec = NULL;
  desc.head_dim = D;
  desc.numerics = numerics;
  desc.position_limit = position_limit;
  CHECK_OK(posenc_spec_create(&desc, &spec));
  return spec;
}

/* A float32 call on T tokens, in place until the caller adds sources: Q [T, HQ, D], K [T, HK, D]
 * (none when `k` is NULL). */
static posenc_rope_args f32_rope_args(float* q, float* k, const int64_t* positions) {
  posenc_rope_args args = posenc_rope_args_make();
  args.q = posenc_tensor_contiguous(q, POSENC_DTYPE_F32, T, HQ, D);
  if (k != NULL) args.k = posenc_tensor_contiguous(k, POSENC_DTYPE_F32, T, HK, D);
  args.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, T);
  return args;
}

/* A float32 cos/sin cache of `rows` rows over the whole head (rotary_dim D). */
static posenc_cos_sin_cache f32_cos_sin(const float* table, int64_t rows) {
  posenc_cos_sin_cache cache;
  memset(&cache, 0, sizeof cache);
  cache.data = table;
  cache.dtype = POSENC_DTYPE_F32;
  cache.rows = rows;
  cache.rotary_dim = D;
  cache.row_stride = D;
  return cache;
}

/* Max error of a half-split rotation of `in` into `out` ([tokens, heads, D]) against float64, in
 * units of float32 ulps at the pair's magnitude. */
static double max_ulps_f32(const posenc_spec* spec, const float* in, const float* out, int64_t tokens, int64_t heads,
                           const int64_t* positions) {
  float inv_freq[D / 2];
  double worst = 0.0;
  int64_t t, h, i;
  CHECK_OK(posenc_spec_inv_freq(spec, inv_freq, D / 2));
  for (t = 0; t < tokens; ++t) {
    for (h = 0; h < heads; ++h) {
      const float* x = in + (t * heads + h) * D;
      const float* y = out + (t * heads + h) * D;
      for (i = 0; i < D / 2; ++i) {
        const double angle = (double)inv_freq[i] * (double)positions[t];
        const double a = x[i], b = x[i + D / 2];
        const double ulp = (fabs(a) + fabs(b)) * 1.1920928955078125e-07 + 1e-30;
        const double ea = fabs(y[i] - (a * cos(angle) - b * sin(angle))) / ulp;
        const double eb = fabs(y[i + D / 2] - (b * cos(angle) + a * sin(angle))) / ulp;
        if (ea > worst) worst = ea;
        if (eb > worst) worst = eb;
      }
    }
  }
  return worst;
}

static void test_cpu_apply(void) {
  posenc_spec* accurate = plain_spec(POSENC_NUMERICS_ACCURATE, 1000);
  posenc_spec* hf = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_cpu_options options = posenc_cpu_options_make();
  posenc_cpu_engine* engine = NULL;
  posenc_cpu_engine* hf_engine = NULL;
  posenc_rope_args args = posenc_rope_args_make();
  posenc_counters counters = posenc_counters_make();
  static float q_in[T * HQ * D], k_in[T * HK * D], q[T * HQ * D], k[T * HK * D], q_out[T * HQ * D];
  static uint16_t qb[T * HQ * D], kb[T * HK * D], qb_ref[T * HQ * D], kb_ref[T * HK * D];
  int64_t positions[T] = {0, 7, 999, 123, 1};
  int32_t positions32[T] = {0, 7, 999, 123, 1};
  int32_t threads = 0;
  size_t i;

  fill_random(q_in, T * HQ * D);
  fill_random(k_in, T * HK * D);
  options.threads = 2;
  CHECK_OK(posenc_cpu_engine_create(accurate, &options, &engine));
  CHECK_OK(posenc_cpu_engine_threads(engine, &threads));
  CHECK(threads == 2);

  /* f32, accurate numerics, GQA (4 query heads, 2 KV heads), int64 positions: float64 within 4 ulps. */
  memcpy(q, q_in, sizeof q);
  memcpy(k, k_in, sizeof k);
  args = f32_rope_args(q, k, positions);
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK(max_ulps_f32(accurate, q_in, q, T, HQ, positions) <= 4.0);
  CHECK(max_ulps_f32(accurate, k_in, k, T, HK, positions) <= 4.0);
  CHECK(memcmp(q, q_in, sizeof q) != 0);

  /* int32 positions give the same bits. */
  memcpy(q_out, q, sizeof q);
  memcpy(q, q_in, sizeof q);
  memcpy(k, k_in, sizeof k);
  args.positions = posenc_positions_1d(positions32, POSENC_INDEX_I32, T);
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK(memcmp(q, q_out, sizeof q) == 0);

  /* Out of place, Q only: every element of the poisoned destination written, same bits. */
  memset(q, 0xff, sizeof q); /* NaN everywhere */
  args = f32_rope_args(q, NULL, positions);
  args.q_src = posenc_const_tensor_contiguous(q_in, POSENC_DTYPE_F32, T, HQ, D);
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK(memcmp(q, q_out, sizeof q) == 0);

  /* bf16, hf_compatible: the engine equals posenc_apply_reference bit for bit. */
  for (i = 0; i < T * HQ * D; ++i) qb[i] = qb_ref[i] = bf16_from_float(q_in[i]);
  for (i = 0; i < T * HK * D; ++i) kb[i] = kb_ref[i] = bf16_from_float(k_in[i]);
  CHECK_OK(posenc_cpu_engine_create(hf, NULL, &hf_engine));
  args = posenc_rope_args_make();
  args.q = posenc_tensor_contiguous(qb, POSENC_DTYPE_BF16, T, HQ, D);
  args.k = posenc_tensor_contiguous(kb, POSENC_DTYPE_BF16, T, HK, D);
  args.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, T);
  CHECK_OK(posenc_cpu_engine_apply(hf_engine, &args));
  args.q.data = qb_ref;
  args.k.data = kb_ref;
  CHECK_OK(posenc_apply_reference(hf, &args));
  CHECK(memcmp(qb, qb_ref, sizeof qb) == 0 && memcmp(kb, kb_ref, sizeof kb) == 0);
  for (i = 0; i < T * HQ * D && qb[i] == bf16_from_float(q_in[i]); ++i) {
  }
  CHECK(i < T * HQ * D); /* it did rotate */

  /* Counters: off by default, then two calls of T tokens. */
  CHECK_OK(posenc_cpu_engine_get_counters(engine, &counters));
  CHECK(counters.calls == 0);
  CHECK_OK(posenc_cpu_engine_set_counters(engine, 1));
  args = f32_rope_args(q, k, positions);
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK_OK(posenc_cpu_engine_get_counters(engine, &counters));
  CHECK(counters.calls == 2 && counters.tokens == 2 * T && counters.bytes == 2 * 2 * (T * (HQ + HK) * D * 4));
  CHECK(counters.timed_calls == 0 && counters.device_ms == 0.0);
  CHECK_OK(posenc_cpu_engine_reset_counters(engine));
  CHECK_OK(posenc_cpu_engine_get_counters(engine, &counters));
  CHECK(counters.calls == 0 && counters.tokens == 0);
  CHECK_ERR(posenc_cpu_engine_set_counters(engine, 2), POSENC_ERROR_INVALID_ARGUMENT, "on is 2");
  counters.struct_size = 8;
  CHECK_ERR(posenc_cpu_engine_get_counters(engine, &counters), POSENC_ERROR_INVALID_ARGUMENT,
            "out->struct_size is 8, below 48");
  CHECK_ERR(posenc_cpu_engine_get_counters(NULL, &counters), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_cpu_engine_reset_counters(NULL), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_cpu_engine_set_counters(NULL, 0), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_cpu_engine_threads(NULL, &threads), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_cpu_engine_threads(engine, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");

  posenc_cpu_engine_destroy(engine);
  posenc_cpu_engine_destroy(hf_engine);
  posenc_cpu_engine_destroy(NULL);
  posenc_spec_destroy(accurate);
  posenc_spec_destroy(hf);
}

/* Every rejected apply leaves Q and K as they were. */
static void test_cpu_apply_errors(void) {
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_cpu_engine* engine = NULL;
  posenc_cpu_engine* untouched = (posenc_cpu_engine*)&checks;
  posenc_cpu_options options = posenc_cpu_options_make();
  posenc_rope_args good;
  posenc_rope_args args;
  future_rope_args future;
  static float q[T * HQ * D], k[T * HK * D], q_copy[T * HQ * D], k_copy[T * HK * D], q_done[T * HQ * D];
  int64_t positions[T] = {0, 1, 2, 3, 4};
  int64_t bad_positions[T] = {0, 1, 2, 5000, 4};

  fill_random(q, T * HQ * D);
  fill_random(k, T * HK * D);
  memcpy(q_copy, q, sizeof q);
  memcpy(k_copy, k, sizeof k);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  good = f32_rope_args(q, k, positions);

  args = good;
  args.q.head_dim = 32;
  args.q.token_stride = HQ * 32;
  args.q.head_stride = 32;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "head_dim", "32", "64");
  args = good;
  args.k.tokens = T + 1;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "6", "5");
  args = good;
  args.positions = posenc_positions_1d(bad_positions, POSENC_INDEX_I64, T);
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_OUT_OF_RANGE, "position 5000",
            "token index 3", "[0, 1000)");
  args = good;
  args.q.token_stride = 1; /* tokens overlap each other */
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "q");
  args = good;
  args.k.data = q; /* K on top of Q */
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "overlap");
  args = good;
  args.q.dtype = 7;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->q.dtype is 7",
            "POSENC_DTYPE_BF16 (2)");
  args = good;
  args.k.reserved = 1;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->k.reserved is 1");
  args = good;
  args.q_src = posenc_const_tensor_contiguous(q_copy, 3, T, HQ, D);
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->q_src.dtype is 3");
  args = good;
  args.q_src = posenc_const_tensor_contiguous(q_copy, POSENC_DTYPE_F32, T, HQ, D);
  args.q_src.reserved = 2;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->q_src.reserved is 2");
  args = good;
  args.k_src = posenc_const_tensor_contiguous(k_copy, POSENC_DTYPE_F16, T, HK, D);
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "k_src");
  args = good;
  args.positions.type = 9;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->positions.type is 9",
            "POSENC_INDEX_I64 (1)");
  args = good;
  args.positions.streams = 2;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "positions.streams 2");
  args = good;
  args.positions.data = NULL;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "positions.data is null");
  args = good;
  args.q.data = NULL;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "q is absent");
  CHECK_ERR(posenc_cpu_engine_apply(engine, NULL), POSENC_ERROR_INVALID_ARGUMENT, "args is NULL");
  CHECK_ERR(posenc_cpu_engine_apply(NULL, &good), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_apply_reference(NULL, &good), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_apply_reference(spec, NULL), POSENC_ERROR_INVALID_ARGUMENT, "args is NULL");

  /* struct_size: missing, misaligned, implausible. */
  args = good;
  args.struct_size = 0;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->struct_size is 0",
            "below 264", "sizeof(posenc_rope_args)");
  args.struct_size = 268;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "struct_size is 268",
            "alignment 8");
  args.struct_size = 5000;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "struct_size is 5000",
            "above the limit 4096");

  /* A newer caller setting a field this library lacks: refused, naming the byte. */
  memset(&future, 0, sizeof future);
  future.known = good;
  future.known.struct_size = sizeof future;
  future.future_field = 1;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &future.known), POSENC_ERROR_UNSUPPORTED,
            "byte 320 of posenc_rope_args", "struct_size 328", "knows only its first 320 bytes");

  CHECK(memcmp(q, q_copy, sizeof q) == 0 && memcmp(k, k_copy, sizeof k) == 0);

  /* ...and the same newer caller leaving the field zero is served, like a current one. */
  future.future_field = 0;
  CHECK_OK(posenc_cpu_engine_apply(engine, &future.known));
  memcpy(q_done, q, sizeof q);
  memcpy(q, q_copy, sizeof q);
  memcpy(k, k_copy, sizeof k);
  CHECK_OK(posenc_cpu_engine_apply(engine, &good));
  CHECK(memcmp(q, q_done, sizeof q) == 0 && memcmp(q, q_copy, sizeof q) != 0);
  /* An older caller (the first posenc.h: the struct ends at positions, 264 bytes) gets the same:
   * what lies beyond its struct_size is never read. */
  memcpy(q, q_copy, sizeof q);
  memcpy(k, k_copy, sizeof k);
  args = good;
  args.struct_size = offsetof(posenc_rope_args, cos_sin);
  args.cos_sin.data = q_copy;
  args.cos_sin.dtype = 99;
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  CHECK(memcmp(q, q_done, sizeof q) == 0);

  /* Engine creation errors. */
  options.threads = -3;
  CHECK_ERR(posenc_cpu_engine_create(spec, &options, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "options->threads is -3");
  options.threads = 1;
  options.reserved = 4;
  CHECK_ERR(posenc_cpu_engine_create(spec, &options, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "options->reserved is 4");
  options.reserved = 0;
  options.struct_size = 4;
  CHECK_ERR(posenc_cpu_engine_create(spec, &options, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "options->struct_size is 4, below 16");
  CHECK_ERR(posenc_cpu_engine_create(NULL, NULL, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_cpu_engine_create(spec, NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK(untouched == (posenc_cpu_engine*)&checks);

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* A caller's cos/sin cache (vLLM's cos_sin_cache): the engine equals the reference bit for bit,
 * and a cache built from the spec's own frequencies in float64 is within float32 rounding of the
 * spec path (accurate numerics). */
/* The QK-norm stage: a spec from a Qwen3 config has it (POSENC_QK_NORM_RMS, its rms_norm_eps), a
 * spec can be made with it, the CPU engine equals the reference bit for bit, and a call without
 * the weights is refused with nothing written. */
static void test_qk_norm(void) {
  static const char qwen3[] = "{\"model_type\": \"qwen3\", \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                              "\"head_dim\": 64, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000}";
  posenc_config* config = NULL;
  posenc_spec* spec = NULL;
  posenc_spec* made = NULL;
  posenc_spec_info info = posenc_spec_info_make();
  posenc_spec_desc desc = posenc_spec_desc_make();
  posenc_cpu_engine* engine = NULL;
  posenc_rope_args args;
  static float q_in[T * HQ * D], k_in[T * HK * D], q[T * HQ * D], k[T * HK * D], q_ref[T * HQ * D], k_ref[T * HK * D];
  float q_weight[D], k_weight[D];
  int64_t positions[T] = {0, 5, 77, 4000, 12};

  CHECK_OK(posenc_config_parse(qwen3, strlen(qwen3), "qwen3-text", &config));
  CHECK_OK(posenc_config_spec(config, NULL, &spec));
  CHECK_OK(posenc_spec_get_info(spec, &info));
  CHECK(info.qk_norm == POSENC_QK_NORM_RMS && info.qk_norm_rotary_only == 0 && info.qk_norm_epsilon == 1e-6);

  desc.head_dim = D;
  desc.qk_norm = POSENC_QK_NORM_RMS_ONE_PLUS;
  desc.qk_norm_epsilon = 1e-6;
  CHECK_OK(posenc_spec_create(&desc, &made));
  CHECK_OK(posenc_spec_get_info(made, &info));
  CHECK(info.qk_norm == POSENC_QK_NORM_RMS_ONE_PLUS);
  posenc_spec_destroy(made);
  made = NULL;
  desc.qk_norm = 3;
  CHECK_ERR(posenc_spec_create(&desc, &made), POSENC_ERROR_INVALID_ARGUMENT, "desc->qk_norm is 3");

  fill_random(q_in, T * HQ * D);
  fill_random(k_in, T * HK * D);
  fill_random(q_weight, D);
  fill_random(k_weight, D);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  memcpy(q, q_in, sizeof q);
  memcpy(k, k_in, sizeof k);
  memcpy(q_ref, q_in, sizeof q);
  memcpy(k_ref, k_in, sizeof k);
  args = f32_rope_args(q, k, positions);
  args.q_norm_weight = q_weight;
  args.k_norm_weight = k_weight;
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  args = f32_rope_args(q_ref, k_ref, positions);
  args.q_norm_weight = q_weight;
  args.k_norm_weight = k_weight;
  CHECK_OK(posenc_apply_reference(spec, &args));
  CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(k, k_ref, sizeof k) == 0);
  CHECK(memcmp(q, q_in, sizeof q) != 0);

  /* Without the weights: refused, nothing written. */
  memcpy(q_ref, q_in, sizeof q);
  args = f32_rope_args(q_ref, k_ref, positions);
  args.k_norm_weight = k_weight;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "norm.q is absent");
  CHECK(memcmp(q_ref, q_in, sizeof q) == 0);

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
  posenc_config_destroy(config);
}

static void test_cos_sin_cache(void) {
  enum { ROWS = 16 };
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_ACCURATE, 1000);
  posenc_cpu_engine* engine = NULL;
  posenc_rope_args args = posenc_rope_args_make();
  static float cache[ROWS * D], q_in[T * HQ * D], q[T * HQ * D], q_ref[T * HQ * D];
  float inv_freq[D / 2];
  int64_t positions[T] = {3, 0, 15, 9, 1};
  int64_t outside[T] = {3, 0, 16, 9, 1};
  int64_t p, i;

  CHECK_OK(posenc_spec_inv_freq(spec, inv_freq, D / 2));
  for (p = 0; p < ROWS; ++p) {
    for (i = 0; i < D / 2; ++i) {
      cache[p * D + i] = (float)cos((double)inv_freq[i] * (double)p);
      cache[p * D + D / 2 + i] = (float)sin((double)inv_freq[i] * (double)p);
    }
  }
  fill_random(q_in, T * HQ * D);
  memcpy(q, q_in, sizeof q);
  memcpy(q_ref, q_in, sizeof q);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  args = f32_rope_args(q, NULL, positions);
  args.cos_sin = f32_cos_sin(cache, ROWS);
  CHECK_OK(posenc_cpu_engine_apply(engine, &args));
  args.q.data = q_ref;
  CHECK_OK(posenc_apply_reference(spec, &args));
  CHECK(memcmp(q, q_ref, sizeof q) == 0);
  CHECK(max_ulps_f32(spec, q_in, q, T, HQ, positions) <= 4.0);

  memcpy(q, q_in, sizeof q);
  args.q.data = q;
  args.positions = posenc_positions_1d(outside, POSENC_INDEX_I64, T);
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_OUT_OF_RANGE, "position 16", "token index 2",
            "[0, 16)");
  args.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, T);
  args.cos_sin.rotary_dim = D / 2;
  args.cos_sin.row_stride = D / 2;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "rotary_dim");
  args.cos_sin.rotary_dim = D;
  args.cos_sin.row_stride = D;
  args.cos_sin.dtype = 5;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->cos_sin.dtype is 5");
  args.cos_sin.dtype = POSENC_DTYPE_F32;
  args.cos_sin.reserved = 1;
  CHECK_ERR(posenc_cpu_engine_apply(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->cos_sin.reserved is 1");
  CHECK(memcmp(q, q_in, sizeof q) == 0);

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* Fused RoPE + KV-cache append into a contiguous float32 cache: the engine equals the reference,
 * the cache's K rows hold apply's K bits, V rows V's bits, slot -1 writes nothing. */
static void test_cpu_append(void) {
  enum { TA = 3, BLOCKS = 2, LEN = 8 };
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_cpu_engine* engine = NULL;
  posenc_append_args good = posenc_append_args_make();
  posenc_append_args args;
  posenc_rope_args rope = posenc_rope_args_make();
  static float q[TA * HQ * D], q_ref[TA * HQ * D], k[TA * HK * D], v[TA * HK * D], k_rot[TA * HK * D];
  static float ck[BLOCKS * LEN * HK * D], cv[BLOCKS * LEN * HK * D], ck_ref[BLOCKS * LEN * HK * D],
      cv_ref[BLOCKS * LEN * HK * D], ck_before[BLOCKS * LEN * HK * D];
  int64_t positions[TA] = {4, 5, 6};
  int64_t slots[TA] = {0, 9, -1};
  int64_t bad_slots[TA] = {0, 16, -1};
  int64_t twice[TA] = {3, 3, -1};
  size_t i;

  fill_random(q, TA * HQ * D);
  fill_random(k, TA * HK * D);
  fill_random(v, TA * HK * D);
  memcpy(q_ref, q, sizeof q);
  for (i = 0; i < BLOCKS * LEN * HK * D; ++i) ck[i] = cv[i] = ck_ref[i] = cv_ref[i] = -1234.5f;
  memcpy(ck_before, ck, sizeof ck);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  good.q = posenc_tensor_contiguous(q, POSENC_DTYPE_F32, TA, HQ, D);
  good.k = posenc_const_tensor_contiguous(k, POSENC_DTYPE_F32, TA, HK, D);
  good.v = posenc_const_tensor_contiguous(v, POSENC_DTYPE_F32, TA, HK, D);
  good.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, TA);
  good.slots = slots;
  good.cache.k = ck;
  good.cache.v = cv;
  good.cache.dtype = POSENC_CACHE_F32;
  good.cache.layout = POSENC_LAYOUT_CONTIGUOUS;
  good.cache.kv_heads = HK;
  good.cache.head_dim = D;
  good.cache.blocks = BLOCKS;
  good.cache.block_len = LEN;
  good.cache.k_scale = 1.0f;
  good.cache.v_scale = 1.0f;

  /* Errors first: nothing may be written. */
  args = good;
  args.slots = bad_slots;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_OUT_OF_RANGE, "16", "token index 1", "16)");
  args.slots = twice;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "3", "0", "1");
  args = good;
  args.cache.dtype = 9;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->cache.dtype is 9",
            "POSENC_CACHE_FP8_E4M3 (3)");
  args = good;
  args.cache.layout = 7;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->cache.layout is 7");
  args = good;
  args.cache.k_scale = 2.0f;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "scale");
  args = good;
  args.v.dtype = 4;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->v.dtype is 4");
  args = good;
  args.struct_size = 16;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->struct_size is 16",
            "below 336", "posenc_append_args");
  CHECK_ERR(posenc_cpu_engine_append(engine, NULL), POSENC_ERROR_INVALID_ARGUMENT, "args is NULL");
  CHECK_ERR(posenc_cpu_engine_append(NULL, &good), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_append_reference(NULL, &good), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(ck, ck_before, sizeof ck) == 0 &&
        memcmp(cv, ck_before, sizeof cv) == 0);

  CHECK_OK(posenc_cpu_engine_append(engine, &good));
  args = good;
  args.q.data = q_ref;
  args.cache.k = ck_ref;
  args.cache.v = cv_ref;
  CHECK_OK(posenc_append_reference(spec, &args));
  CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(ck, ck_ref, sizeof ck) == 0 && memcmp(cv, cv_ref, sizeof cv) == 0);

  /* The cos/sin cache reaches the append too: one with 5 rows cannot serve position 5. */
  {
    static float table[5 * D];
    size_t j;
    for (j = 0; j < 5 * D; ++j) table[j] = 0.5f;
    memcpy(ck_before, ck, sizeof ck);
    memcpy(q_ref, q, sizeof q);
    args = good;
    args.cos_sin = f32_cos_sin(table, 5);
    CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_OUT_OF_RANGE, "position 5", "token index 1",
              "[0, 5)");
    CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(ck, ck_before, sizeof ck) == 0);
  }

  /* K rows = apply's K: rotate a copy of K out of place. */
  rope.q = posenc_tensor_contiguous(k_rot, POSENC_DTYPE_F32, TA, HK, D);
  rope.q_src = posenc_const_tensor_contiguous(k, POSENC_DTYPE_F32, TA, HK, D);
  rope.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, TA);
  CHECK_OK(posenc_apply_reference(spec, &rope));
  CHECK(memcmp(ck + 0 * HK * D, k_rot + 0 * HK * D, HK * D * sizeof(float)) == 0);
  CHECK(memcmp(ck + 9 * HK * D, k_rot + 1 * HK * D, HK * D * sizeof(float)) == 0);
  CHECK(memcmp(cv + 9 * HK * D, v + 1 * HK * D, HK * D * sizeof(float)) == 0);
  /* Only slots 0 and 9 were written. */
  for (i = 0; i < BLOCKS * LEN * HK * D; ++i) {
    const size_t slot = i / (HK * D);
    if (slot != 0 && slot != 9 && (ck[i] != -1234.5f || cv[i] != -1234.5f)) break;
  }
  CHECK(i == BLOCKS * LEN * HK * D);

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* MLA (POSENC_LAYOUT_MLA): Q's rope slice inside [T, HQ, NOPE + D] rotated in place, k_pe and the
 * latent (slices of one compressed-KV row [L | D]) written as [latent | rotated k_pe] per slot;
 * a caller whose struct ends before cache_latent_dim passes latent 0, which the mla layout rejects. */
static void test_cpu_mla_append(void) {
  enum { TA = 3, NOPE = 32, L = 128, SLOTS = 8, ROW = L + D };
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_cpu_engine* engine = NULL;
  posenc_append_args good = posenc_append_args_make();
  posenc_append_args args;
  posenc_rope_args rope = posenc_rope_args_make();
  static float q[TA * HQ * (NOPE + D)], q_ref[TA * HQ * (NOPE + D)], q_in[TA * HQ * (NOPE + D)], ckv[TA * ROW],
      k_rot[TA * D];
  static float cache[SLOTS * ROW], cache_ref[SLOTS * ROW], cache_before[SLOTS * ROW];
  int64_t positions[TA] = {7, 8, 900};
  int64_t slots[TA] = {5, -1, 2};
  size_t i;
  int t;

  fill_random(q, TA * HQ * (NOPE + D));
  fill_random(ckv, TA * ROW);
  memcpy(q_ref, q, sizeof q);
  memcpy(q_in, q, sizeof q);
  for (i = 0; i < SLOTS * ROW; ++i) cache[i] = cache_ref[i] = -1234.5f;
  memcpy(cache_before, cache, sizeof cache);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  good.q = posenc_tensor_contiguous(q + NOPE, POSENC_DTYPE_F32, TA, HQ, D);
  good.q.head_stride = NOPE + D;
  good.q.token_stride = HQ * (NOPE + D);
  good.k = posenc_const_tensor_contiguous(ckv + L, POSENC_DTYPE_F32, TA, 1, D);
  good.k.token_stride = ROW;
  good.v = posenc_const_tensor_contiguous(ckv, POSENC_DTYPE_F32, TA, 1, L);
  good.v.token_stride = ROW;
  good.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, TA);
  good.slots = slots;
  good.cache.k = cache;
  good.cache.dtype = POSENC_CACHE_F32;
  good.cache.layout = POSENC_LAYOUT_MLA;
  good.cache.kv_heads = 1;
  good.cache.head_dim = D;
  good.cache.blocks = 2;
  good.cache.block_len = SLOTS / 2;
  good.cache.k_scale = 1.0f;
  good.cache.v_scale = 1.0f;
  good.cache_latent_dim = L;

  args = good;
  args.struct_size = offsetof(posenc_append_args, cache_latent_dim);
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "cache.latent_dim 0", "mla");
  args = good;
  args.cache.v = ckv;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "cache.v must be null");
  CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(cache, cache_before, sizeof cache) == 0);

  CHECK_OK(posenc_cpu_engine_append(engine, &good));
  args = good;
  args.q.data = q_ref + NOPE;
  args.cache.k = cache_ref;
  CHECK_OK(posenc_append_reference(spec, &args));
  CHECK(memcmp(q, q_ref, sizeof q) == 0 && memcmp(cache, cache_ref, sizeof cache) == 0);

  /* k_pe as apply rotates it, after the latent copied as given; only slots 5 and 2 written. */
  rope.q = posenc_tensor_contiguous(k_rot, POSENC_DTYPE_F32, TA, 1, D);
  rope.q_src = good.k;
  rope.positions = good.positions;
  CHECK_OK(posenc_apply_reference(spec, &rope));
  for (t = 0; t < TA; t += 2) {
    const float* row = cache + slots[t] * ROW;
    CHECK(memcmp(row, ckv + t * ROW, L * sizeof(float)) == 0);
    CHECK(memcmp(row + L, k_rot + t * D, D * sizeof(float)) == 0);
  }
  for (i = 0; i < SLOTS * ROW; ++i) {
    const size_t slot = i / ROW;
    if (slot != 5 && slot != 2 && cache[i] != -1234.5f) break;
  }
  CHECK(i == SLOTS * ROW);
  /* The nope part of every head is untouched; the rope part was rotated. */
  for (i = 0; i < (size_t)(TA * HQ); ++i) {
    if (memcmp(q + i * (NOPE + D), q_in + i * (NOPE + D), NOPE * sizeof(float)) != 0) break;
    if (memcmp(q + i * (NOPE + D) + NOPE, q_in + i * (NOPE + D) + NOPE, D * sizeof(float)) == 0) break;
  }
  CHECK(i == (size_t)(TA * HQ));

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* fp8 e4m3 (OCP, bias 7) bits -> value, written here from the format (0x7f/0xff NaN are not used). */
static double e4m3_value_of(unsigned char bits) {
  const int e = (bits >> 3) & 0xf, m = bits & 7;
  const double v = e == 0 ? ldexp((double)m, -9) : ldexp(1.0 + m / 8.0, e - 7);
  return (bits & 0x80) ? -v : v;
}

/* q_out (fp8 serving): Q rotated into an fp8 buffer with its own scale, q itself only read; the
 * engine and the reference give the same bytes, each value the rotated Q / scale to within the
 * e4m3 rounding (half of 2^-3 relative), and the fields after q_norm_weight are checked. */
static void test_cpu_q_out_append(void) {
  enum { TQ = 3, SLOTS = 8 };
  const float q_scale = 0.125f;
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_cpu_engine* engine = NULL;
  posenc_append_args good = posenc_append_args_make();
  posenc_append_args args;
  posenc_rope_args rope = posenc_rope_args_make();
  static float q[TQ * HQ * D], q_in[TQ * HQ * D], q_rot[TQ * HQ * D], k[TQ * HK * D], v[TQ * HK * D];
  static unsigned char q_out[TQ * HQ * D], q_out_ref[TQ * HQ * D], k_cache[2][SLOTS * HK * D], v_cache[2][SLOTS * HK * D];
  int64_t positions[TQ] = {3, 40, 999};
  int64_t slots[TQ] = {6, -1, 1};
  size_t i;
  int far = 0;

  fill_random(q, TQ * HQ * D);
  fill_random(k, TQ * HK * D);
  fill_random(v, TQ * HK * D);
  memcpy(q_in, q, sizeof q);
  memset(q_out, 0x5a, sizeof q_out);
  memset(q_out_ref, 0x5a, sizeof q_out_ref);
  CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
  good.q = posenc_tensor_contiguous(q, POSENC_DTYPE_F32, TQ, HQ, D);
  good.k = posenc_const_tensor_contiguous(k, POSENC_DTYPE_F32, TQ, HK, D);
  good.v = posenc_const_tensor_contiguous(v, POSENC_DTYPE_F32, TQ, HK, D);
  good.positions = posenc_positions_1d(positions, POSENC_INDEX_I64, TQ);
  good.slots = slots;
  good.cache.k = k_cache[0];
  good.cache.v = v_cache[0];
  good.cache.dtype = POSENC_CACHE_FP8_E4M3;
  good.cache.layout = POSENC_LAYOUT_PAGED_NHD;
  good.cache.kv_heads = HK;
  good.cache.head_dim = D;
  good.cache.blocks = 2;
  good.cache.block_len = SLOTS / 2;
  good.cache.k_scale = 0.5f;
  good.cache.v_scale = 0.5f;
  good.q_out_data = q_out;
  good.q_out_token_stride = HQ * D;
  good.q_out_head_stride = D;
  good.q_out_dtype = POSENC_CACHE_FP8_E4M3;
  good.q_out_scale = q_scale;

  args = good;
  args.q_out_dtype = POSENC_CACHE_BF16;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "q_out.dtype bfloat16",
            "cache.dtype float8_e4m3fn");
  args = good;
  args.q_out_scale = 0.0f;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "q_out.scale");
  args = good;
  args.q_src = posenc_const_tensor_contiguous(q_in, POSENC_DTYPE_F32, TQ, HQ, D);
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "q_src is present with q_out");
  args = good;
  args.q_out_dtype = 9;
  CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "args->q_out_dtype");
  for (i = 0; i < sizeof q_out; ++i) {
    if (q_out[i] != 0x5a) break;
  }
  CHECK(i == sizeof q_out && memcmp(q, q_in, sizeof q) == 0);

  CHECK_OK(posenc_cpu_engine_append(engine, &good));
  args = good;
  args.q_out_data = q_out_ref;
  args.cache.k = k_cache[1];
  args.cache.v = v_cache[1];
  CHECK_OK(posenc_append_reference(spec, &args));
  CHECK(memcmp(q_out, q_out_ref, sizeof q_out) == 0);
  CHECK(memcmp(k_cache[0] + 6 * HK * D, k_cache[1] + 6 * HK * D, HK * D) == 0);
  CHECK(memcmp(q, q_in, sizeof q) == 0); /* q is only read */

  rope.q = posenc_tensor_contiguous(q_rot, POSENC_DTYPE_F32, TQ, HQ, D);
  rope.q_src = posenc_const_tensor_contiguous(q_in, POSENC_DTYPE_F32, TQ, HQ, D);
  rope.positions = good.positions;
  CHECK_OK(posenc_apply_reference(spec, &rope));
  for (i = 0; i < (size_t)(TQ * HQ * D); ++i) {
    const double want = q_rot[i] / q_scale, got = e4m3_value_of(q_out[i]);
    if (fabs(got - want) > fabs(want) / 16 + ldexp(1.0, -10)) ++far;
  }
  CHECK(far == 0);

  /* Per-head scales (appended after q_out_scale): each head at the per-tensor scale of the call
   * above gives the same bytes; a bad one is refused naming its head; a caller whose struct ends
   * before them is not read there. */
  {
    float k_heads[HK], v_heads[HK], q_heads[HQ];
    static unsigned char q_out_heads[TQ * HQ * D], k_cache_heads[SLOTS * HK * D], v_cache_heads[SLOTS * HK * D];
    for (i = 0; i < HK; ++i) k_heads[i] = v_heads[i] = 0.5f;
    for (i = 0; i < HQ; ++i) q_heads[i] = q_scale;
    memcpy(k_cache_heads, k_cache[1], sizeof k_cache_heads);  /* the same poison */
    memcpy(v_cache_heads, v_cache[1], sizeof v_cache_heads);
    memset(q_out_heads, 0x5a, sizeof q_out_heads);
    args = good;
    args.q_out_data = q_out_heads;
    args.cache.k = k_cache_heads;
    args.cache.v = v_cache_heads;
    args.cache.k_scale = args.cache.v_scale = args.q_out_scale = 1.0f;
    args.cache_k_head_scales = k_heads;
    args.cache_v_head_scales = v_heads;
    args.q_out_head_scales = q_heads;
    CHECK_OK(posenc_append_reference(spec, &args));
    CHECK(memcmp(q_out_heads, q_out_ref, sizeof q_out_heads) == 0);
    CHECK(memcmp(k_cache_heads, k_cache[1], sizeof k_cache_heads) == 0);
    CHECK(memcmp(v_cache_heads, v_cache[1], sizeof v_cache_heads) == 0);
    v_heads[HK - 1] = -1.0f;
    CHECK_ERR(posenc_cpu_engine_append(engine, &args), POSENC_ERROR_INVALID_ARGUMENT, "cache.v_head_scales[",
              "finite and > 0");
    args.struct_size = offsetof(posenc_append_args, cache_k_head_scales);  /* an older caller */
    args.cache.k_scale = args.cache.v_scale = 0.5f;
    args.q_out_scale = q_scale;
    CHECK_OK(posenc_cpu_engine_append(engine, &args));
  }

  posenc_cpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* ---------------------------------------------------------------------------------------------
 * The position tracker
 * ------------------------------------------------------------------------------------------- */

static void test_tracker(void) {
  posenc_position_tracker* tracker = NULL;
  posenc_position_tracker* two = NULL;
  posenc_position_tracker* untouched = (posenc_position_tracker*)&checks;
  posenc_sequence_state state = posenc_sequence_state_make();
  posenc_sequence_state got = posenc_sequence_state_make();
  posenc_step_entry prefill[2] = {{7, 3}, {9, 1}};
  posenc_step_entry decode[2] = {{7, 1}, {9, 1}};
  posenc_step_entry unknown[2] = {{7, 1}, {8, 1}};
  posenc_step_entry repeated[2] = {{7, 1}, {7, 1}};
  posenc_step_entry empty[1] = {{7, 0}};
  posenc_step_entry far[1] = {{9, 200}};
  posenc_step_entry chat[1] = {{1, 5}};
  int64_t positions[16];
  int64_t tokens = 0;
  int64_t size = 0, slot = 0;
  int32_t flag = 0, streams = 0;

  CHECK_OK(posenc_position_tracker_create(1, 100, &tracker));
  CHECK_OK(posenc_position_tracker_streams(tracker, &streams));
  CHECK(streams == 1);
  CHECK_OK(posenc_position_tracker_add(tracker, 7, NULL));
  state.length = 5; /* sequence 9 already holds 5 tokens */
  CHECK_OK(posenc_position_tracker_add(tracker, 9, &state));
  CHECK_OK(posenc_position_tracker_size(tracker, &size));
  CHECK(size == 2);
  CHECK_OK(posenc_position_tracker_contains(tracker, 9, &flag));
  CHECK(flag == 1);
  CHECK_OK(posenc_position_tracker_contains(tracker, 8, &flag));
  CHECK(flag == 0);

  /* peek does not commit; step does. */
  CHECK_OK(posenc_position_tracker_peek(tracker, prefill, 2, positions, 16, &tokens));
  CHECK(tokens == 4 && positions[0] == 0 && positions[1] == 1 && positions[2] == 2 && positions[3] == 5);
  CHECK_OK(posenc_position_tracker_get_state(tracker, 7, &got));
  CHECK(got.length == 0);
  CHECK_OK(posenc_position_tracker_step(tracker, prefill, 2, positions, 4, &tokens));
  CHECK(tokens == 4 && positions[0] == 0 && positions[2] == 2 && positions[3] == 5);
  CHECK_OK(posenc_position_tracker_step(tracker, decode, 2, positions, 16, &tokens));
  CHECK(tokens == 2 && positions[0] == 3 && positions[1] == 6);
  CHECK_OK(posenc_position_tracker_get_state(tracker, 9, &got));
  CHECK(got.length == 7 && got.rope_delta == 0 && got.pin_from == POSENC_NEVER_PINNED);

  /* Failed steps change nothing. */
  CHECK_ERR(posenc_position_tracker_step(tracker, unknown, 2, positions, 16, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "8");
  CHECK_ERR(posenc_position_tracker_step(tracker, repeated, 2, positions, 16, &tokens),
            POSENC_ERROR_INVALID_ARGUMENT, "7");
  CHECK_ERR(posenc_position_tracker_step(tracker, empty, 1, positions, 16, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "new_tokens");
  CHECK_ERR(posenc_position_tracker_step(tracker, far, 1, positions, 16, &tokens), POSENC_ERROR_OUT_OF_RANGE,
            "100");
  CHECK_ERR(posenc_position_tracker_step(tracker, decode, 2, positions, 1, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "capacity 1 is below the 2 positions");
  CHECK_ERR(posenc_position_tracker_step(tracker, decode, 2, NULL, 16, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "positions is NULL");
  CHECK_ERR(posenc_position_tracker_step(tracker, decode, 2, positions, 16, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "tokens is NULL");
  CHECK_ERR(posenc_position_tracker_step(tracker, NULL, 2, positions, 16, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "entries is NULL");
  CHECK_ERR(posenc_position_tracker_peek(tracker, decode, 2, positions, 0, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "capacity 0");
  CHECK_OK(posenc_position_tracker_get_state(tracker, 7, &got));
  CHECK(got.length == 4);

  CHECK_ERR(posenc_position_tracker_add(tracker, 7, NULL), POSENC_ERROR_INVALID_ARGUMENT, "7");
  state.length = -2;
  CHECK_ERR(posenc_position_tracker_add(tracker, 11, &state), POSENC_ERROR_INVALID_ARGUMENT, "-2");
  state.struct_size = 12;
  CHECK_ERR(posenc_position_tracker_add(tracker, 11, &state), POSENC_ERROR_INVALID_ARGUMENT,
            "state->struct_size is 12, below 40");
  CHECK_ERR(posenc_position_tracker_remove(tracker, 8), POSENC_ERROR_INVALID_ARGUMENT, "8");
  CHECK_ERR(posenc_position_tracker_get_state(tracker, 8, &got), POSENC_ERROR_INVALID_ARGUMENT, "8");
  CHECK_ERR(posenc_position_tracker_pin(tracker, 8, 1), POSENC_ERROR_INVALID_ARGUMENT, "8");
  got.struct_size = 0;
  CHECK_ERR(posenc_position_tracker_get_state(tracker, 7, &got), POSENC_ERROR_INVALID_ARGUMENT,
            "out->struct_size is 0");
  /* Slots follow the order of add; remove moves the last sequence into the freed slot. */
  CHECK_OK(posenc_position_tracker_slot(tracker, 9, &slot));
  CHECK(slot == 1);
  CHECK_OK(posenc_position_tracker_remove(tracker, 7));
  CHECK_OK(posenc_position_tracker_size(tracker, &size));
  CHECK(size == 1);
  CHECK_OK(posenc_position_tracker_slot(tracker, 9, &slot));
  CHECK(slot == 0);
  slot = -5;
  CHECK_ERR(posenc_position_tracker_slot(tracker, 7, &slot), POSENC_ERROR_INVALID_ARGUMENT, "sequence 7",
            "not tracked");
  CHECK(slot == -5);
  CHECK_ERR(posenc_position_tracker_slot(NULL, 9, &slot), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_slot(tracker, 9, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");

  /* ChatGLM-6B style 2-D positions: pinned at the mask from <sop> on, block positions count up. */
  CHECK_OK(posenc_position_tracker_create(2, 100, &two));
  state = posenc_sequence_state_make();
  state.pin_from = 3;
  state.pin_value = 2;
  CHECK_OK(posenc_position_tracker_add(two, 1, &state));
  CHECK_OK(posenc_position_tracker_step(two, chat, 1, positions, 10, &tokens));
  CHECK(tokens == 5);
  CHECK(positions[0] == 0 && positions[1] == 1 && positions[2] == 2 && positions[3] == 2 && positions[4] == 2);
  CHECK(positions[5] == 0 && positions[6] == 0 && positions[7] == 0 && positions[8] == 1 && positions[9] == 2);
  CHECK_OK(posenc_position_tracker_pin(two, 1, 7));
  got = posenc_sequence_state_make();
  CHECK_OK(posenc_position_tracker_get_state(two, 1, &got));
  CHECK(got.pin_from == 5 && got.pin_value == 7);

  CHECK_ERR(posenc_position_tracker_create(4, 100, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "4");
  CHECK_ERR(posenc_position_tracker_create(1, 0, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "0");
  CHECK_ERR(posenc_position_tracker_create(1, 10, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK(untouched == (posenc_position_tracker*)&checks);
  CHECK_ERR(posenc_position_tracker_add(NULL, 1, NULL), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_remove(NULL, 1), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_contains(NULL, 1, &flag), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_contains(two, 1, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_position_tracker_get_state(NULL, 1, &got), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_pin(NULL, 1, 1), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_size(NULL, &size), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_size(two, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_position_tracker_streams(NULL, &streams), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_streams(two, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_position_tracker_step(NULL, chat, 1, positions, 10, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "tracker is NULL");
  CHECK_ERR(posenc_position_tracker_peek(NULL, chat, 1, positions, 10, &tokens), POSENC_ERROR_INVALID_ARGUMENT,
            "tracker is NULL");

  posenc_position_tracker_destroy(tracker);
  posenc_position_tracker_destroy(two);
  posenc_position_tracker_destroy(NULL);
}

/* ---------------------------------------------------------------------------------------------
 * The GPU engine: creation, host-side validation and the stream contract. Without a GPU every
 * operation reports why; with one, the engine is created and its host validation runs before any
 * launch (the device arithmetic is covered by the C++ GPU suites).
 * ------------------------------------------------------------------------------------------- */

static void test_gpu_engine(void) {
  posenc_spec* spec = plain_spec(POSENC_NUMERICS_HF_COMPATIBLE, 1000);
  posenc_gpu_engine* engine = NULL;
  posenc_gpu_engine* untouched = (posenc_gpu_engine*)&checks;
  posenc_gpu_info gpu = posenc_gpu_info_make();
  posenc_rope_args args = posenc_rope_args_make();
  posenc_append_args append = posenc_append_args_make();
  posenc_counters counters = posenc_counters_make();
  float dummy[16];
  int64_t position = 0;

  CHECK_OK(posenc_get_gpu_info(&gpu));
  CHECK_ERR(posenc_gpu_engine_create(spec, -1, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "device is -1");
  CHECK_ERR(posenc_gpu_engine_create(NULL, 0, &untouched), POSENC_ERROR_INVALID_ARGUMENT, "spec is NULL");
  CHECK_ERR(posenc_gpu_engine_create(spec, 0, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_gpu_engine_apply(NULL, &args, NULL), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_gpu_engine_append(NULL, &append, NULL), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_gpu_engine_check(NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_gpu_engine_set_counters(NULL, 1, 0), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_gpu_engine_get_counters(NULL, &counters), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  CHECK_ERR(posenc_gpu_engine_reset_counters(NULL), POSENC_ERROR_INVALID_ARGUMENT, "engine is NULL");
  if (!gpu.available) {
    CHECK_ERR(posenc_gpu_engine_create(spec, 0, &untouched), POSENC_ERROR_UNSUPPORTED, gpu.unavailable_reason);
    CHECK(untouched == (posenc_gpu_engine*)&checks);
    printf("test_capi: GPU engine: creation refused as expected (%s); apply paths need a GPU\n",
           gpu.unavailable_reason);
    posenc_gpu_engine_destroy(NULL);
    posenc_spec_destroy(spec);
    return;
  }
  CHECK_OK(posenc_gpu_engine_create(spec, 0, &engine));
  /* Host validation fails before any launch, so host pointers are safe to pass here. */
  args.q = posenc_tensor_contiguous(dummy, POSENC_DTYPE_F32, 1, 1, 16);
  args.positions = posenc_positions_1d(&position, POSENC_INDEX_I64, 1);
  CHECK_ERR(posenc_gpu_engine_apply(engine, &args, NULL), POSENC_ERROR_INVALID_ARGUMENT, "head_dim", "16");
  args.q.dtype = 8;
  CHECK_ERR(posenc_gpu_engine_apply(engine, &args, NULL), POSENC_ERROR_INVALID_ARGUMENT, "args->q.dtype is 8");
  CHECK_ERR(posenc_gpu_engine_append(engine, NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "args is NULL");
  CHECK_OK(posenc_gpu_engine_set_counters(engine, 1, 1));
  CHECK_ERR(posenc_gpu_engine_set_counters(engine, 1, 5), POSENC_ERROR_INVALID_ARGUMENT, "device_timing is 5");
  CHECK_OK(posenc_gpu_engine_check(engine, NULL));
  CHECK_OK(posenc_gpu_engine_get_counters(engine, &counters));
  CHECK(counters.calls == 0);
  CHECK_OK(posenc_gpu_engine_reset_counters(engine));
  posenc_gpu_engine_destroy(engine);
  posenc_spec_destroy(spec);
}

/* ---------------------------------------------------------------------------------------------
 * The device position tracker: creation and every call's argument checks. Without a GPU, creation
 * reports why (as the GPU engine's does) and every call on a NULL handle names it; with one, the
 * host-side checks run before any launch. Real steps on the device, against the host tracker, are
 * tests/capi/test_capi_gpu_tracker.cpp's (it needs device memory, which C cannot get from posenc).
 * ------------------------------------------------------------------------------------------- */

static void test_gpu_position_tracker(void) {
  posenc_position_tracker* host = NULL;
  posenc_gpu_position_tracker* tracker = NULL;
  posenc_gpu_position_tracker* untouched = (posenc_gpu_position_tracker*)&checks;
  posenc_gpu_info gpu = posenc_gpu_info_make();
  posenc_positions view;
  int64_t lengths[2] = {-7, -7};
  int64_t value = -7;
  int32_t streams = -7;
  int32_t slots[1] = {0}, counts[1] = {1};
  int64_t buffer[1] = {0};

  CHECK_OK(posenc_get_gpu_info(&gpu));
  CHECK_OK(posenc_position_tracker_create(2, 100, &host));
  CHECK_OK(posenc_position_tracker_add(host, 7, NULL));
  CHECK_OK(posenc_position_tracker_add(host, 9, NULL));
  memset(&view, 0x5a, sizeof view);

  CHECK_ERR(posenc_gpu_position_tracker_create(NULL, 0, 16, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "host is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_create(host, 0, 16, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_create(host, -1, 16, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "device is -1");
  CHECK_ERR(posenc_gpu_position_tracker_step(NULL, slots, counts, 1, 1, buffer, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_positions(NULL, buffer, 1, &view), POSENC_ERROR_INVALID_ARGUMENT,
            "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_check(NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_lengths(NULL, lengths, 2, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_streams(NULL, &streams), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_slots(NULL, &value), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_max_tokens(NULL, &value), POSENC_ERROR_INVALID_ARGUMENT, "tracker is NULL");
  CHECK(untouched == (posenc_gpu_position_tracker*)&checks && value == -7 && streams == -7 && lengths[0] == -7);
  if (!gpu.available) {
    CHECK_ERR(posenc_gpu_position_tracker_create(host, 0, 16, &untouched), POSENC_ERROR_UNSUPPORTED,
              "no GPU can be used", gpu.unavailable_reason);
    CHECK(untouched == (posenc_gpu_position_tracker*)&checks);
    printf("test_capi: GPU position tracker: creation refused as expected (%s); steps need a GPU\n",
           gpu.unavailable_reason);
    posenc_gpu_position_tracker_destroy(NULL);
    posenc_position_tracker_destroy(host);
    return;
  }
  CHECK_ERR(posenc_gpu_position_tracker_create(host, 0, 0, &untouched), POSENC_ERROR_INVALID_ARGUMENT,
            "max_tokens 0", "[1, 2147483647]");
  CHECK(untouched == (posenc_gpu_position_tracker*)&checks);
  CHECK_OK(posenc_gpu_position_tracker_create(host, 0, 16, &tracker));
  CHECK_OK(posenc_gpu_position_tracker_streams(tracker, &streams));
  CHECK(streams == 2);
  CHECK_OK(posenc_gpu_position_tracker_slots(tracker, &value));
  CHECK(value == 2);
  CHECK_OK(posenc_gpu_position_tracker_max_tokens(tracker, &value));
  CHECK(value == 16);
  CHECK_ERR(posenc_gpu_position_tracker_streams(tracker, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_slots(tracker, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_max_tokens(tracker, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");

  /* The view: int64, two streams with stride max_tokens; total_tokens within [0, max_tokens]. */
  CHECK_OK(posenc_gpu_position_tracker_positions(tracker, buffer, 5, &view));
  CHECK(view.data == buffer && view.type == POSENC_INDEX_I64 && view.streams == 2 && view.count == 5 &&
        view.stream_stride == 16);
  CHECK_ERR(posenc_gpu_position_tracker_positions(tracker, buffer, 17, &view), POSENC_ERROR_INVALID_ARGUMENT,
            "total_tokens 17", "[0, 16]");
  CHECK_ERR(posenc_gpu_position_tracker_positions(tracker, buffer, -1, &view), POSENC_ERROR_INVALID_ARGUMENT,
            "total_tokens -1");
  CHECK_ERR(posenc_gpu_position_tracker_positions(tracker, NULL, 1, &view), POSENC_ERROR_INVALID_ARGUMENT,
            "positions is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_positions(tracker, buffer, 1, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "out is NULL");
  CHECK(view.count == 5);

  /* Step arguments are checked on the host before any launch (so host pointers are safe here). */
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, slots, counts, 1, 17, buffer, NULL),
            POSENC_ERROR_INVALID_ARGUMENT, "total_tokens 17", "16");
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, slots, counts, 4097, 1, buffer, NULL),
            POSENC_ERROR_INVALID_ARGUMENT, "4097", "4096");
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, slots, counts, (size_t)-1, 1, buffer, NULL),
            POSENC_ERROR_INVALID_ARGUMENT, "4096");
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, NULL, counts, 1, 1, buffer, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "slots is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, slots, NULL, 1, 1, buffer, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "new_tokens is NULL");
  CHECK_ERR(posenc_gpu_position_tracker_step(tracker, slots, counts, 1, 1, NULL, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "positions is NULL");
  CHECK_OK(posenc_gpu_position_tracker_step(tracker, NULL, NULL, 0, 0, NULL, NULL)); /* empty: no launch */
  CHECK_OK(posenc_gpu_position_tracker_check(tracker, NULL));

  /* Lengths: the caller's capacity must hold every slot; nothing is written otherwise. */
  CHECK_ERR(posenc_gpu_position_tracker_lengths(tracker, lengths, 1, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "capacity 1 is below the 2 slots");
  CHECK_ERR(posenc_gpu_position_tracker_lengths(tracker, NULL, 2, NULL), POSENC_ERROR_INVALID_ARGUMENT,
            "out is NULL");
  CHECK(lengths[0] == -7 && lengths[1] == -7);
  CHECK_OK(posenc_gpu_position_tracker_lengths(tracker, lengths, 2, NULL));
  CHECK(lengths[0] == 0 && lengths[1] == 0);
  posenc_gpu_position_tracker_destroy(tracker);
  posenc_position_tracker_destroy(host); /* the device tracker was a copy: any order */
}

/* ---------------------------------------------------------------------------------------------
 * GLM position ids and attention masks (the worked examples of docs/GLM.md; tests/capi/
 * test_capi_glm.cpp checks every builder against the C++ functions on random inputs)
 * ------------------------------------------------------------------------------------------- */

/* The builder's info, or a zeroed one when the call failed. */
static posenc_glm_positions_info glm_info(const posenc_glm_positions* positions) {
  posenc_glm_positions_info info = posenc_glm_positions_info_make();
  if (positions != NULL) CHECK_OK(posenc_glm_positions_get_info(positions, &info));
  return info;
}

/* Whether the ids are exactly `expected` (streams * tokens values, stream-major). */
static int glm_ids_are(const posenc_glm_positions_info* info, int32_t streams, int64_t tokens,
                       const int64_t* expected) {
  return info->streams == streams && info->tokens == tokens && info->values != NULL &&
         memcmp(info->values, expected, (size_t)(streams * tokens) * sizeof(int64_t)) == 0;
}

/* Rotates random Q and K of `spec` at the builder's positions with the CPU engine and with the
 * reference: the ids an engine takes are the builder's own buffer, used as they are. */
static void glm_apply_matches_reference(const posenc_spec* spec, const posenc_glm_positions* positions) {
  posenc_spec_info spec_info = posenc_spec_info_make();
  posenc_glm_positions_info info = glm_info(positions);
  posenc_cpu_engine* engine = NULL;
  posenc_rope_args args = posenc_rope_args_make();
  float *in, *q, *q_ref;
  size_t count;
  CHECK_OK(posenc_spec_get_info(spec, &spec_info));
  CHECK(spec_info.position_streams == info.streams);
  count = (size_t)(info.tokens * 2 * spec_info.head_dim);
  in = malloc(count * sizeof(float));
  q = malloc(count * sizeof(float));
  q_ref = malloc(count * sizeof(float));
  if (in == NULL || q == NULL || q_ref == NULL) {
    CHECK(!"out of memory");
  } else {
    fill_random(in, count);
    memcpy(q, in, count * sizeof(float));
    memcpy(q_ref, in, count * sizeof(float));
    CHECK_OK(posenc_cpu_engine_create(spec, NULL, &engine));
    CHECK_OK(posenc_glm_positions_view(positions, &args.positions));
    CHECK(args.positions.data == info.values && args.positions.streams == info.streams &&
          args.positions.stream_stride == info.tokens);
    args.q = posenc_tensor_contiguous(q, POSENC_DTYPE_F32, info.tokens, 2, spec_info.head_dim);
    CHECK_OK(posenc_cpu_engine_apply(engine, &args));
    args.q.data = q_ref;
    CHECK_OK(posenc_apply_reference(spec, &args));
    CHECK(memcmp(q, q_ref, count * sizeof(float)) == 0);
    CHECK(memcmp(q, in, count * sizeof(float)) != 0); /* every call here has a non-zero position */
    posenc_cpu_engine_destroy(engine);
  }
  free(in);
  free(q);
  free(q_ref);
}

static void test_glm_vocabularies(void) {
  posenc_glm_special_tokens tokens = posenc_glm_special_tokens_make();
  posenc_glm_vision_tokens vision = posenc_glm_vision_tokens_make();
  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_GLM4, &tokens));
  CHECK(tokens.mask == 151330 && tokens.gmask == 151331 && tokens.sop == 151333 && tokens.begin_of_image == 151339);
  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_CHATGLM2, &tokens));
  CHECK(tokens.mask == 64789 && tokens.eop == 64793 && tokens.begin_of_image == POSENC_GLM_NO_TOKEN);
  CHECK_ERR(posenc_glm_special_tokens_get(9, &tokens), POSENC_ERROR_INVALID_ARGUMENT, "vocabulary is 9",
            "POSENC_GLM_TOKENS_GLM4 (4)");
  CHECK(tokens.mask == 64789); /* untouched */
  CHECK_OK(posenc_glm_vision_tokens_get(POSENC_GLM_VISION_GLM4V, &vision));
  CHECK(vision.image == 151343 && vision.video == 151344);
}

static void test_glm_chatglm6b(void) {
  posenc_glm_special_tokens sp = posenc_glm_special_tokens_make();
  posenc_glm_positions* p = NULL;
  posenc_glm_positions* untouched = (posenc_glm_positions*)&checks;
  posenc_glm_positions* out = untouched;
  posenc_glm_positions_info info;
  posenc_sequence_state state = posenc_sequence_state_make();
  posenc_position_tracker* tracker = NULL;
  posenc_config* config = NULL;
  posenc_spec* spec = NULL;
  posenc_step_entry decode[1] = {{0, 1}};
  int64_t step[2], tokens = 0;
  int64_t prompt[5], no_sop[3], batch_tokens[8], lengths[2];
  static const int64_t ids[10] = {0, 1, 2, 3, 3, /* block */ 0, 0, 0, 0, 1};
  static const int64_t batch_ids[10] = {0, 0, 0, 1, 1, 0, 1, 2, 3, 3};
  static const int64_t batch_blocks[10] = {0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  static const uint8_t batch_valid[10] = {0, 0, 1, 1, 1, 1, 1, 1, 1, 1};

  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_CHATGLM_6B, &sp));
  prompt[0] = 11, prompt[1] = 12, prompt[2] = 13, prompt[3] = sp.gmask, prompt[4] = sp.sop;
  CHECK_OK(posenc_glm_chatglm6b_positions(prompt, 5, NULL, POSENC_GLM_RULE_MASK_FIRST, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 2, 5, ids));
  CHECK(info.batch == 1 && info.length == 5 && info.valid == NULL);
  CHECK(info.prefix_len == 4 && info.mask_position == 3 && info.mask_token == sp.gmask);
  CHECK(info.next_position == 3 && info.next_block == 2);

  /* Decode continues through the tracker from the prompt's state: position pinned, block + 1. */
  CHECK_OK(posenc_glm_positions_tracker_state(p, &state));
  CHECK(state.length == 5 && state.pin_from == 4 && state.pin_value == 3 && state.rope_delta == 0);
  CHECK_OK(posenc_position_tracker_create(2, 2048, &tracker));
  CHECK_OK(posenc_position_tracker_add(tracker, 0, &state));
  CHECK_OK(posenc_position_tracker_step(tracker, decode, 1, step, 2, &tokens));
  CHECK(tokens == 1 && step[0] == 3 && step[1] == 2);
  CHECK_OK(posenc_position_tracker_step(tracker, decode, 1, step, 2, &tokens));
  CHECK(step[0] == 3 && step[1] == 3);
  posenc_position_tracker_destroy(tracker);

  /* The ids feed ChatGLM-6B's 2-D rotation as they are. */
  CHECK_OK(posenc_config_load(POSENC_CONFIGS_DIR "/chatglm-6b.json", &config));
  CHECK_OK(posenc_config_spec(config, NULL, &spec));
  glm_apply_matches_reference(spec, p);
  posenc_spec_destroy(spec);
  posenc_config_destroy(config);
  posenc_glm_positions_destroy(p);

  /* A left-padded batch of the prompt without its first two tokens and the whole prompt. */
  memcpy(batch_tokens, prompt + 2, 3 * sizeof(int64_t));
  memcpy(batch_tokens + 3, prompt, 5 * sizeof(int64_t));
  lengths[0] = 3, lengths[1] = 5;
  CHECK_OK(posenc_glm_chatglm6b_batch(batch_tokens, lengths, 2, &sp, POSENC_GLM_RULE_MASK_FIRST, &p));
  info = glm_info(p);
  CHECK(info.streams == 2 && info.batch == 2 && info.length == 5 && info.tokens == 10);
  CHECK(info.values != NULL && memcmp(info.values, batch_ids, sizeof batch_ids) == 0 &&
        memcmp(info.values + 10, batch_blocks, sizeof batch_blocks) == 0);
  CHECK(info.valid != NULL && memcmp(info.valid, batch_valid, sizeof batch_valid) == 0);
  CHECK(info.mask_position_count == 2 && info.mask_positions[0] == 1 && info.mask_positions[1] == 3);
  CHECK(info.pad_counts[0] == 2 && info.pad_counts[1] == 0 && info.prefix_lens[0] == 4 && info.prefix_lens[1] == 4);
  CHECK_ERR(posenc_glm_positions_tracker_state(p, &state), POSENC_ERROR_INVALID_ARGUMENT, "no tracked sequence");
  posenc_glm_positions_destroy(p);

  /* Errors name what is missing; the out-pointer stays as it was. */
  no_sop[0] = 11, no_sop[1] = sp.gmask, no_sop[2] = 12;
  CHECK_ERR(posenc_glm_chatglm6b_positions(no_sop, 3, &sp, POSENC_GLM_RULE_MASK_FIRST, &out),
            POSENC_ERROR_INVALID_ARGUMENT, "<sop>", "130004");
  CHECK(out == untouched);
  CHECK_ERR(posenc_glm_chatglm6b_positions(prompt, 5, &sp, 2, &out), POSENC_ERROR_INVALID_ARGUMENT, "rule is 2");
  CHECK_ERR(posenc_glm_chatglm6b_positions(NULL, 5, &sp, 0, &out), POSENC_ERROR_INVALID_ARGUMENT, "tokens is NULL");
  lengths[1] = -4;
  CHECK_ERR(posenc_glm_chatglm6b_batch(batch_tokens, lengths, 2, &sp, 0, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "lengths[1] is -4");
  CHECK(out == untouched);
}

static void test_glm_130b_and_blank_infilling(void) {
  posenc_glm_special_tokens sp = posenc_glm_special_tokens_make();
  posenc_glm_positions* p = NULL;
  posenc_glm_positions* out = (posenc_glm_positions*)&checks;
  posenc_glm_positions_info info;
  posenc_sequence_state state = posenc_sequence_state_make();
  int64_t context[7], infill[5];
  static const int64_t pinned[7] = {0, 1, 2, 3, 2, 2, 2};
  static const int64_t infill_ids[10] = {0, 1, 2, 3, 4, 0, 0, 0, 0, 0};
  static const int64_t generation[6] = {2, 2, 2, 1, 2, 3};

  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_GLM_130B, &sp));
  context[0] = 11, context[1] = 12, context[2] = sp.mask, context[3] = 14, context[4] = sp.sop;
  context[5] = 15, context[6] = 16;
  CHECK_OK(posenc_glm_glm130b_positions(context, 7, NULL, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 7, pinned));
  CHECK(info.pinned == 1 && info.mask_position == 2 && info.prefix_len == 4 && info.mask_token == sp.mask);
  CHECK(info.next_position == 2);
  CHECK_OK(posenc_glm_positions_tracker_state(p, &state));
  CHECK(state.length == 7 && state.pin_from == 4 && state.pin_value == 2);
  posenc_glm_positions_destroy(p);
  CHECK_ERR(posenc_glm_glm130b_positions(context, 3, NULL, &out), POSENC_ERROR_INVALID_ARGUMENT, "no <sop>",
            "150004");

  /* The original GLM: a context with two masks, then generation into the first. */
  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_CHATGLM_6B, &sp));
  infill[0] = 11, infill[1] = 12, infill[2] = sp.mask, infill[3] = 14, infill[4] = sp.gmask;
  CHECK_OK(posenc_glm_blank_infilling_context(infill, 5, &sp, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 2, 5, infill_ids));
  CHECK(info.prefix_len == 5 && info.mask_position_count == 2 && info.mask_positions[0] == 2 &&
        info.mask_positions[1] == 4);
  posenc_glm_positions_destroy(p);
  CHECK_ERR(posenc_glm_blank_infilling_context(infill, 5, NULL, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "special is NULL", "no single vocabulary");
  CHECK_OK(posenc_glm_blank_infilling_generation(2, 1, 3, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 2, 3, generation) && info.next_position == 2 && info.next_block == 4);
  posenc_glm_positions_destroy(p);
  CHECK_ERR(posenc_glm_blank_infilling_generation(2, 0, 1, &out), POSENC_ERROR_INVALID_ARGUMENT, "first_block is 0");
  CHECK(out == (posenc_glm_positions*)&checks);
}

static void test_glm_batches(void) {
  posenc_glm_positions* p = NULL;
  posenc_glm_positions* out = (posenc_glm_positions*)&checks;
  posenc_glm_positions_info info;
  posenc_sequence_state state = posenc_sequence_state_make();
  static const uint8_t mask[10] = {0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  static const uint8_t bad_mask[4] = {1, 1, 3, 1};
  static const int64_t from_mask[10] = {1, 1, 0, 1, 2, 0, 1, 2, 3, 4};
  static const int64_t next[2] = {3, 5};
  static const int64_t lengths[2] = {2, 4};
  static const int64_t padded[8] = {0, 0, 0, 1, 0, 1, 2, 3};
  static const int64_t arange[3] = {7, 8, 9};

  /* Hugging Face: cumsum(mask) - 1, padding 1 (transformers 4.x generate()), then the next token. */
  CHECK_OK(posenc_glm_positions_from_attention_mask(mask, 2, 5, 1, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 10, from_mask) && info.batch == 2 && info.length == 5);
  CHECK(info.valid != NULL && memcmp(info.valid, mask, sizeof mask) == 0);
  CHECK_ERR(posenc_glm_positions_tracker_state(p, &state), POSENC_ERROR_INVALID_ARGUMENT, "no tracked sequence");
  posenc_glm_positions_destroy(p);
  CHECK_OK(posenc_glm_next_positions_from_attention_mask(mask, 2, 5, 1, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 2, next) && info.batch == 2 && info.length == 1);
  posenc_glm_positions_destroy(p);
  CHECK_ERR(posenc_glm_positions_from_attention_mask(bad_mask, 2, 2, 0, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "mask value 3 at [1, 0]");
  CHECK_ERR(posenc_glm_positions_from_attention_mask(NULL, 2, 2, 0, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "mask is NULL");
  CHECK_ERR(posenc_glm_positions_from_attention_mask(mask, INT64_MAX, 3, 0, &out), POSENC_ERROR_OVERFLOW, "mask");

  /* ChatGLM2/3 and GLM-4 tokenizer padding. */
  CHECK_OK(posenc_glm_left_padded_arange(lengths, 2, 0, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 8, padded) && info.batch == 2 && info.length == 4 && info.valid[1] == 0 &&
        info.valid[2] == 1);
  posenc_glm_positions_destroy(p);
  CHECK_OK(posenc_glm_arange(7, 3, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 3, arange) && info.next_position == 10 && info.mask_token == POSENC_GLM_NO_TOKEN);
  posenc_glm_positions_destroy(p);
  CHECK_ERR(posenc_glm_arange(-1, 3, &out), POSENC_ERROR_INVALID_ARGUMENT, "past_len", "-1");
  CHECK_ERR(posenc_glm_arange(0, 3, NULL), POSENC_ERROR_INVALID_ARGUMENT, "out is NULL");
  CHECK(out == (posenc_glm_positions*)&checks);
}

static void test_glm_mrope(void) {
  posenc_glm_positions* p = NULL;
  posenc_glm_positions* out = (posenc_glm_positions*)&checks;
  posenc_glm_positions_info info;
  posenc_sequence_state state = posenc_sequence_state_make();
  posenc_glm_vision_tokens vision = posenc_glm_vision_tokens_make();
  posenc_glm_special_tokens sp = posenc_glm_special_tokens_make();
  posenc_glm_vision_grid grids[2];
  posenc_glm_mrope_segment segments[3] = {{POSENC_GLM_SEGMENT_TEXT, 0, 3},
                                          {POSENC_GLM_SEGMENT_VISION, 0, 0},
                                          {POSENC_GLM_SEGMENT_TEXT, 0, 2}};
  posenc_config* config = NULL;
  posenc_spec* spec = NULL;
  int64_t tokens[9], remote[10];
  int i;
  /* Qwen2-VL's worked example: 3 text tokens, a 1x4x4 image (2x2 merged), 2 text tokens. */
  static const int64_t ids[27] = {0, 1, 2, 3, 3, 3, 3, 5, 6, 0, 1, 2, 3, 3, 4, 4, 5, 6, 0, 1, 2, 3, 4, 3, 4, 5, 6};
  static const int64_t decode[6] = {7, 8, 7, 8, 7, 8};
  static const int64_t remote_ids[13] = {0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 7, 8, 9};

  grids[0] = posenc_glm_vision_grid_make(1, 4, 4);
  grids[1] = posenc_glm_vision_grid_make(1, 4, 4);
  CHECK_OK(posenc_glm_mrope_positions(segments, 3, grids, 1, POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 3, 9, ids) && info.rope_delta == -2 && info.next_position == 7);
  CHECK_OK(posenc_glm_positions_tracker_state(p, &state));
  CHECK(state.length == 9 && state.rope_delta == -2 && state.pin_from == POSENC_NEVER_PINNED);
  posenc_glm_positions_destroy(p);

  /* The same from token ids, GLM-4.1V's vision tokens; the ids feed GLM-4.1V's M-RoPE. */
  CHECK_OK(posenc_glm_vision_tokens_get(POSENC_GLM_VISION_GLM4V, &vision));
  for (i = 0; i < 9; ++i) tokens[i] = i >= 3 && i < 7 ? vision.image : 11 + i;
  CHECK_OK(posenc_glm_mrope_positions_from_tokens(tokens, 9, &vision, grids, 1, NULL, 0,
                                                  POSENC_GLM_NEXT_TEXT_SPATIAL_EXTENT, POSENC_GLM_VIDEO_PER_FRAME, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 3, 9, ids) && info.rope_delta == -2);
  CHECK_OK(posenc_config_load(POSENC_CONFIGS_DIR "/glm-4.1v-9b.json", &config));
  CHECK_OK(posenc_config_spec(config, NULL, &spec));
  glm_apply_matches_reference(spec, p);
  posenc_glm_positions_destroy(p);
  CHECK_OK(posenc_glm_mrope_decode_positions(9, -2, 2, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 3, 2, decode) && info.next_position == 9);
  glm_apply_matches_reference(spec, p);
  posenc_glm_positions_destroy(p);
  posenc_spec_destroy(spec);
  posenc_config_destroy(config);

  /* Errors name the element. */
  CHECK_ERR(posenc_glm_mrope_positions_from_tokens(tokens, 6, &vision, grids, 1, NULL, 0, 1, 0, &out),
            POSENC_ERROR_INVALID_ARGUMENT, "image grid 0 needs 4 tokens");
  CHECK_ERR(posenc_glm_mrope_positions_from_tokens(tokens, 9, NULL, grids, 1, NULL, 0, 1, 0, &out),
            POSENC_ERROR_INVALID_ARGUMENT, "vision is NULL");
  segments[1].value = 2;
  CHECK_ERR(posenc_glm_mrope_positions(segments, 3, grids, 2, 1, &out), POSENC_ERROR_OUT_OF_RANGE,
            "segments[1].value (a grid index) is 2", "[0, 2)");
  segments[1].value = 0;
  segments[2].reserved = 1;
  CHECK_ERR(posenc_glm_mrope_positions(segments, 3, grids, 2, 1, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "segments[2].reserved is 1");
  segments[2].reserved = 0;
  CHECK_ERR(posenc_glm_mrope_positions(segments, 3, grids, 2, 5, &out), POSENC_ERROR_INVALID_ARGUMENT, "rule is 5");
  grids[1].struct_size = sizeof grids[1] - 8;
  CHECK_ERR(posenc_glm_mrope_positions(segments, 3, grids, 2, 1, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "grids[1]->struct_size is 48", "every element");
  grids[1] = posenc_glm_vision_grid_make(1, 3, 4);
  segments[1].value = 1;
  CHECK_ERR(posenc_glm_mrope_positions(segments, 3, grids, 2, 1, &out), POSENC_ERROR_INVALID_ARGUMENT, "segment 1",
            "h 3", "spatial_merge_size 2");
  CHECK(out == (posenc_glm_positions*)&checks);

  /* glm-4v-9b: <|begin_of_image|> at 5, one placeholder, <|end_of_image|> at 7; 4 patches. */
  CHECK_OK(posenc_glm_special_tokens_get(POSENC_GLM_TOKENS_GLM4, &sp));
  for (i = 0; i < 10; ++i) remote[i] = 11 + i;
  remote[5] = sp.begin_of_image, remote[6] = 0, remote[7] = sp.end_of_image;
  CHECK_OK(posenc_glm_glm4v_remote_positions(remote, 10, 4, NULL, &p));
  info = glm_info(p);
  CHECK(glm_ids_are(&info, 1, 13, remote_ids) && info.rope_delta == -3 && info.boi_index == 5 &&
        info.num_patches == 4 && info.next_position == 10);
  posenc_glm_positions_destroy(p);
}

/* A custom pattern: query q sees key k when q - k is even (several ranges per row). */
static int32_t even_distance(void* context, int64_t q, int64_t k) {
  ++*(int64_t*)context;
  return (q - k) % 2 == 0 ? 1 : 0;
}

static void test_glm_masks(void) {
  posenc_glm_mask* mask = NULL;
  posenc_glm_mask* out = (posenc_glm_mask*)&checks;
  posenc_glm_mask_info info = posenc_glm_mask_info_make();
  posenc_glm_mask_geometry geometry = posenc_glm_mask_geometry_make();
  posenc_glm_attention_pattern patterns[2];
  posenc_glm_positions* padded = NULL;
  posenc_glm_positions_info padded_info;
  static const int64_t lengths[2] = {2, 4};
  static const int64_t bad_global[1] = {9};
  int64_t calls = 0;
  float dense[2 * 4 * 4 + 1];
  int i, visible = 0;

  /* A causal mask over a left-padded batch, the padding taken from the builder. */
  CHECK_OK(posenc_glm_left_padded_arange(lengths, 2, 0, &padded));
  padded_info = glm_info(padded);
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_CAUSAL);
  geometry.batch = 2;
  geometry.q_len = 4;
  geometry.k_len = 4;
  geometry.valid = padded_info.valid;
  CHECK_OK(posenc_glm_mask_create(patterns, 1, &geometry, &mask));
  CHECK_OK(posenc_glm_mask_get_info(mask, &info));
  CHECK(info.batch == 2 && info.q_len == 4 && info.k_len == 4);
  /* Row 0 (padding): nothing. Row 2 of sequence 0 (its first real token) sees slot 2 only. */
  CHECK(info.row_offsets[0] == 0 && info.row_offsets[1] == 0);
  CHECK(info.ranges[info.row_offsets[2]].begin == 2 && info.ranges[info.row_offsets[2]].end == 3);
  dense[32] = 7.0f;
  CHECK_OK(posenc_glm_mask_dense(mask, dense, 33));
  CHECK(dense[32] == 7.0f && isinf(dense[0]) && dense[0] < 0 && dense[2 * 4 + 2] == 0.0f && isinf(dense[2 * 4 + 3]));
  for (i = 16; i < 32; ++i) visible += dense[i] == 0.0f; /* sequence 1: lower triangle */
  CHECK(visible == 10);
  CHECK_ERR(posenc_glm_mask_dense(mask, dense, 31), POSENC_ERROR_INVALID_ARGUMENT, "capacity 31", "32 elements");
  posenc_glm_mask_destroy(mask);
  posenc_glm_positions_destroy(padded);

  /* One pattern per sequence: prefix-LM (ChatGLM-6B's prompt) and a custom predicate. */
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_PREFIX_LM);
  patterns[0].prefix_len = 3;
  patterns[1] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_CUSTOM);
  patterns[1].predicate = even_distance;
  patterns[1].context = &calls;
  geometry.valid = NULL;
  CHECK_OK(posenc_glm_mask_create(patterns, 2, &geometry, &mask));
  CHECK(calls >= 16); /* every (q, k) of sequence 1 at least once, through the caller's context */
  CHECK_OK(posenc_glm_mask_dense(mask, dense, 32));
  CHECK(dense[0 * 4 + 2] == 0.0f && isinf(dense[0 * 4 + 3]) && dense[3 * 4 + 3] == 0.0f);
  CHECK(dense[16 + 3 * 4 + 1] == 0.0f && isinf(dense[16 + 3 * 4 + 2]) && dense[16 + 3 * 4 + 3] == 0.0f);
  posenc_glm_mask_destroy(mask);

  /* Errors name the pattern, the value and the limit. */
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_LOCAL_WINDOW);
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "attention pattern 0 (local_window): window 0", "at least 1");
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_GLOBAL_LOCAL);
  patterns[0].window = 2;
  patterns[0].global_positions = bad_global;
  patterns[0].global_count = 1;
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_OUT_OF_RANGE,
            "global_positions[0] = 9", "[0, 4)");
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_CUSTOM);
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "patterns[0].predicate is NULL");
  patterns[0] = posenc_glm_pattern_make(6);
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "patterns[0].kind is 6");
  patterns[0] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_CAUSAL);
  patterns[1] = posenc_glm_pattern_make(POSENC_GLM_PATTERN_CAUSAL);
  patterns[1].struct_size = 8;
  CHECK_ERR(posenc_glm_mask_create(patterns, 2, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "patterns[1]->struct_size is 8");
  CHECK_ERR(posenc_glm_mask_create(patterns, 0, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT, "0 patterns",
            "batch 2");
  geometry.q_len = 5;
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT, "q_len 5",
            "k_len 4");
  geometry.q_len = 4;
  geometry.empty_rows = 2;
  CHECK_ERR(posenc_glm_mask_create(patterns, 1, &geometry, &out), POSENC_ERROR_INVALID_ARGUMENT,
            "geometry->empty_rows is 2");
  CHECK(out == (posenc_glm_mask*)&checks);
}

static void test_glm_abi_growth(void) {
  /* A newer caller's vision grid with a field this library lacks: refused, naming the byte. */
  struct {
    posenc_glm_vision_grid known;
    int64_t future_field;
  } future;
  struct {
    posenc_glm_positions_info known;
    int64_t future_field;
  } future_info;
  posenc_glm_mrope_segment segment = {POSENC_GLM_SEGMENT_VISION, 0, 0};
  posenc_glm_positions* p = NULL;
  posenc_glm_positions_info first;
  future.known = posenc_glm_vision_grid_make(1, 2, 2);
  future.known.struct_size = sizeof future;
  future.future_field = 1;
  CHECK_ERR(posenc_glm_mrope_positions(&segment, 1, &future.known, 1, 0, &p), POSENC_ERROR_UNSUPPORTED,
            "grids[0]: byte 56", "needs a newer libposenc");
  future.future_field = 0; /* zero: absent, served */
  CHECK_OK(posenc_glm_mrope_positions(&segment, 1, &future.known, 1, 0, &p));

  /* Output structs are filled up to their struct_size: a newer caller's tail is left alone, an
   * older caller's shorter struct is not overrun. */
  memset(&future_info, 0, sizeof future_info);
  future_info.known.struct_size = sizeof future_info;
  future_info.future_field = 0x5a5a;
  CHECK_OK(posenc_glm_positions_get_info(p, &future_info.known));
  CHECK(future_info.known.tokens == 1 && future_info.known.streams == 3 && future_info.future_field == 0x5a5a);
  /* posenc_glm_positions_info's first version is this one: nothing shorter exists. */
  first = posenc_glm_positions_info_make();
  first.struct_size = offsetof(posenc_glm_positions_info, values);
  CHECK_ERR(posenc_glm_positions_get_info(p, &first), POSENC_ERROR_INVALID_ARGUMENT, "out->struct_size is 24",
            "below 152");
  posenc_glm_positions_destroy(p);
}

int main(void) {
  test_version_and_status();
  test_abi_layout();
  test_config();
  test_spec_create();
  test_mrope_spec();
  test_cpu_apply();
  test_qk_norm();
  test_cpu_apply_errors();
  test_cos_sin_cache();
  test_cpu_append();
  test_cpu_mla_append();
  test_cpu_q_out_append();
  test_tracker();
  test_glm_vocabularies();
  test_glm_chatglm6b();
  test_glm_130b_and_blank_infilling();
  test_glm_batches();
  test_glm_mrope();
  test_glm_masks();
  test_glm_abi_growth();
  test_gpu_engine();
  test_gpu_position_tracker();
  printf("test_capi: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
