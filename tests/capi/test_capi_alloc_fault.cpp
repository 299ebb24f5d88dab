// The C ABI under host allocation failure: each allocation of spec and engine creation failing in turn gives POSENC_ERROR_OUT_OF_MEMORY with a message, and leaves the out pointer as it was.
//
// support/injecting_allocator.hpp replaces the global operator new of this binary, which serves
// libposenc.so too (the library imports it). Leaks are ASan's to find under the debug preset: the
// C ABI keeps its last-error message in a thread-local string, so counting live blocks here would
// count that message.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#include "posenc/posenc.h"
#include "support/injecting_allocator.hpp"

namespace posenc::test {
namespace {

constexpr const char* yarn_config = R"({"model_type": "qwen3", "head_dim": 128, "num_attention_heads": 32,
  "num_key_value_heads": 8, "hidden_size": 4096, "max_position_embeddings": 131072, "rope_theta": 1000000.0,
  "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})";

/// Stands for "not written": each out pointer starts as this address of a T, which no call returns.
template <class T>
T* sentinel() {
  static int placeholder = 0;
  return reinterpret_cast<T*>(&placeholder);
}

/// Runs `create` (a C ABI call writing a new object through its out pointer) twice clean, then once
/// per host allocation it makes with that one failing: each must return POSENC_ERROR_OUT_OF_MEMORY
/// with a last-error message, throw nothing and leave the out pointer unwritten. Objects created
/// are given to `destroy`. Returns the number of allocations swept.
template <class T>
std::int64_t sweep_create(const std::string& name, const std::function<posenc_status(T**)>& create,
                          void (*destroy)(T*)) {
  T* out = sentinel<T>();
  // A warm-up call first: function-local statics allocate on the first call only.
  posenc_status status = create(&out);
  if (status == POSENC_OK) destroy(out);
  const ArmedRun clean = run_armed([&] { status = create(&out); }, -1);
  EXPECT_EQ(status, POSENC_OK) << name << ": the clean call failed: " << posenc_last_error();
  if (status == POSENC_OK) destroy(out);
  EXPECT_GT(clean.allocations, 0) << name << ": nothing allocated, nothing to inject";
  for (std::int64_t n = 1; n <= clean.allocations; ++n) {
    out = sentinel<T>();
    status = POSENC_OK;
    const ArmedRun r = run_armed([&] { status = create(&out); }, n);
    EXPECT_FALSE(r.threw) << name << ": an exception crossed the C boundary: " << r.error();
    EXPECT_TRUE(r.failure_injected) << name << ": allocation " << n << " of " << clean.allocations << " was never made";
    EXPECT_EQ(status, POSENC_ERROR_OUT_OF_MEMORY)
        << name << ": failing allocation " << n << " of " << clean.allocations << " gave "
        << posenc_status_name(status) << " (" << posenc_last_error() << ")";
    if (status == POSENC_OK) {
      destroy(out);
    } else {
      EXPECT_EQ(out, sentinel<T>()) << name << ": failing allocation " << n << " wrote the out pointer";
      EXPECT_NE(std::strstr(posenc_last_error(), "out of host memory"), nullptr) << name << ": " << posenc_last_error();
    }
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << name << ": stopped at allocation " << n << " of " << clean.allocations;
      break;
    }
  }
  return clean.allocations;
}

/// The spec of the YaRN config above, made outside any sweep.
posenc_spec* yarn_spec() {
  posenc_config* config = nullptr;
  posenc_spec* spec = nullptr;
  EXPECT_EQ(posenc_config_parse(yarn_config, std::strlen(yarn_config), "yarn.json", &config), POSENC_OK);
  EXPECT_EQ(posenc_config_spec(config, nullptr, &spec), POSENC_OK);
  posenc_config_destroy(config);
  return spec;
}

// posenc_config_parse is not swept: nlohmann-json's destructor of an object or array allocates
// (it flattens the tree onto a heap stack), so an allocation failure there ends in std::terminate
// inside the JSON library (docs/TESTING.md, "Fault injection").

TEST(CapiAllocFault, ConfigSpec) {
  posenc_config* config = nullptr;
  ASSERT_EQ(posenc_config_parse(yarn_config, std::strlen(yarn_config), "yarn.json", &config), POSENC_OK);
  sweep_create<posenc_spec>(
      "posenc_config_spec", [&](posenc_spec** out) { return posenc_config_spec(config, nullptr, out); },
      posenc_spec_destroy);
  posenc_config_destroy(config);
}

TEST(CapiAllocFault, SpecCreate) {
  posenc_spec_desc desc = posenc_spec_desc_make();
  desc.head_dim = 128;
  sweep_create<posenc_spec>(
      "posenc_spec_create", [&](posenc_spec** out) { return posenc_spec_create(&desc, out); }, posenc_spec_destroy);
}

TEST(CapiAllocFault, CpuEngineCreate) {
  posenc_spec* spec = yarn_spec();
  ASSERT_NE(spec, nullptr);
  for (std::int32_t threads : {1, 3}) {
    posenc_cpu_options options = posenc_cpu_options_make();
    options.threads = threads;
    sweep_create<posenc_cpu_engine>(
        "posenc_cpu_engine_create (threads " + std::to_string(threads) + ")",
        [&](posenc_cpu_engine** out) { return posenc_cpu_engine_create(spec, &options, out); },
        posenc_cpu_engine_destroy);
  }
  posenc_spec_destroy(spec);
}

}  // namespace
}  // namespace posenc::test
