// Umbrella header: everything a user of posenc needs.
#pragma once

#include "posenc/cpu.hpp"
#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/model_config.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"
#include "posenc/version.hpp"
