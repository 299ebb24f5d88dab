// C ABI: the CPU engine, the reference definitions and the GPU engine (streams as void*).
#include "capi/common.hpp"

using namespace posenc;
using capi::guard;

extern "C" {

posenc_status posenc_cpu_engine_create(const posenc_spec* spec, const posenc_cpu_options* options,
                                       posenc_cpu_engine** out) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    capi::require(out, "out");
    CpuOptions cpu_options;
    if (options != nullptr) {
      const posenc_cpu_options o =
          capi::read_in(options, sizeof(posenc_cpu_options), "options", "posenc_cpu_options");
      if (o.reserved != 0)
        throw Error(ErrorKind::invalid_argument, "options->reserved is " + std::to_string(o.reserved) + ", must be 0");
      if (o.threads < 0)
        throw Error(ErrorKind::invalid_argument,
                    "options->threads is " + std::to_string(o.threads) + ", must be >= 0 (0: all hardware threads)");
      cpu_options.threads = o.threads;
    }
    *out = new posenc_cpu_engine{CpuEngine(spec->spec, cpu_options)};
  });
}

void posenc_cpu_engine_destroy(posenc_cpu_engine* engine) { delete engine; }

posenc_status posenc_cpu_engine_apply(const posenc_cpu_engine* engine, const posenc_rope_args* args) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.apply(capi::to_args(args));
  });
}

posenc_status posenc_cpu_engine_append(const posenc_cpu_engine* engine, const posenc_append_args* args) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.append(capi::to_args(args));
  });
}

posenc_status posenc_cpu_engine_threads(const posenc_cpu_engine* engine, int32_t* out) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    capi::require(out, "out");
    *out = engine->engine.threads();
  });
}

posenc_status posenc_cpu_engine_set_counters(const posenc_cpu_engine* engine, int32_t on) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.enable_counters(capi::to_bool(on, "on"));
  });
}

posenc_status posenc_cpu_engine_get_counters(const posenc_cpu_engine* engine, posenc_counters* out) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    capi::check_out(out, sizeof(posenc_counters), "out", "posenc_counters");
    capi::write_out(out, capi::to_counters(engine->engine.counters()));
  });
}

posenc_status posenc_cpu_engine_reset_counters(const posenc_cpu_engine* engine) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.reset_counters();
  });
}

posenc_status posenc_apply_reference(const posenc_spec* spec, const posenc_rope_args* args) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    apply_reference(spec->spec, capi::to_args(args));
  });
}

posenc_status posenc_append_reference(const posenc_spec* spec, const posenc_append_args* args) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    append_reference(spec->spec, capi::to_args(args));
  });
}

// The GPU engine. A NULL stream is the legacy default stream (capi::stream_ref).

posenc_status posenc_gpu_engine_create(const posenc_spec* spec, int32_t device, posenc_gpu_engine** out) {
  return guard(__func__, [&] {
    capi::require(spec, "spec");
    capi::require(out, "out");
    *out = new posenc_gpu_engine{gpu::GpuEngine(spec->spec, capi::open_device(device))};
  });
}

void posenc_gpu_engine_destroy(posenc_gpu_engine* engine) { delete engine; }

posenc_status posenc_gpu_engine_apply(const posenc_gpu_engine* engine, const posenc_rope_args* args, void* stream) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.apply(capi::to_args(args), capi::stream_ref(stream));
  });
}

posenc_status posenc_gpu_engine_append(const posenc_gpu_engine* engine, const posenc_append_args* args,
                                       void* stream) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.append(capi::to_args(args), capi::stream_ref(stream));
  });
}

posenc_status posenc_gpu_engine_check(const posenc_gpu_engine* engine, void* stream) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.check(capi::stream_ref(stream));
  });
}

posenc_status posenc_gpu_engine_set_counters(const posenc_gpu_engine* engine, int32_t on, int32_t device_timing) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.enable_counters(capi::to_bool(on, "on"), capi::to_bool(device_timing, "device_timing"));
  });
}

posenc_status posenc_gpu_engine_get_counters(const posenc_gpu_engine* engine, posenc_counters* out) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    capi::check_out(out, sizeof(posenc_counters), "out", "posenc_counters");
    capi::write_out(out, capi::to_counters(engine->engine.counters()));
  });
}

posenc_status posenc_gpu_engine_reset_counters(const posenc_gpu_engine* engine) {
  return guard(__func__, [&] {
    capi::require(engine, "engine");
    engine->engine.reset_counters();
  });
}

}  // extern "C"
