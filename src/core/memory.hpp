// Host allocation failure as posenc::Error(out_of_memory) naming what was being allocated and its size (internal).
//
// posenc promises one exception type. std::bad_alloc is turned into Error(out_of_memory) where the
// library allocates: at each allocation whose size depends on the caller (row cache, scratch,
// per-call tables) with that size in the message, and around each constructor as a whole for the
// small fixed allocations (state, tables of a few hundred floats) with the object named.
#pragma once

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

namespace posenc::detail {

/// Throws Error(out_of_memory): "out of host memory allocating <what> (<bytes> bytes)", or without
/// the size when `bytes` < 0 (an allocation somewhere inside an operation, size not known).
[[noreturn]] void throw_out_of_host_memory(const std::string& what, std::int64_t bytes = -1);

/// Runs `allocate()`; a std::bad_alloc from it, or the std::length_error of a container asked for
/// more than its max_size(), becomes Error(out_of_memory) naming `what` and `bytes`.
template <class F>
decltype(auto) allocating(const char* what, std::int64_t bytes, F&& allocate) {
  try {
    return std::forward<F>(allocate)();
  } catch (const std::bad_alloc&) {
    throw_out_of_host_memory(what, bytes);
  } catch (const std::length_error&) {
    throw_out_of_host_memory(what, bytes);
  }
}

}  // namespace posenc::detail
