// Test support: a global operator new/delete that counts live blocks and fails the Nth allocation of the arming thread, and the sweep that runs an operation once per allocation with that one failing.
//
// Include this header in exactly one translation unit of a test binary: it defines the replaceable
// global allocation functions, which then serve the whole binary (the library included).
//
// Each scenario is run once to count its allocations, then once per allocation with that one
// failing. Every run must end in posenc::Error(out_of_memory) (never std::bad_alloc, never
// std::terminate; success only where the operation absorbs the failure by design), leave as many
// live blocks as a successful run does (no leak: objects are destroyed, partly built ones
// included; an argument moved in is gone either way), and pass
// the scenario's own checks (the caller's buffers untouched after a failure, an engine built
// before the failure still usable).
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <thread>

#include "posenc/error.hpp"

namespace {

// Only the thread that armed the injector counts and fails: engine workers and other threads
// allocate as usual, so a scenario's allocation numbers do not depend on scheduling.
thread_local bool armed = false;
thread_local std::int64_t seen = 0;      // allocations made while armed
thread_local std::int64_t fail_at = -1;  // 1-based number of the allocation to fail; -1: none
thread_local bool failed = false;        // the armed failure happened
std::atomic<std::int64_t> live_blocks{0};

/// The one decision every replaced operator new makes: false when this allocation is to fail.
bool admit() noexcept {
  if (!armed) return true;
  ++seen;
  if (seen == fail_at) {
    failed = true;
    return false;
  }
  return true;
}

void* allocate(std::size_t bytes, std::size_t alignment) noexcept {
  if (!admit()) return nullptr;
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (alignment <= alignof(std::max_align_t)) {
    p = std::malloc(bytes);
  } else {
    p = std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
  }
  if (p != nullptr) live_blocks.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void release(void* p) noexcept {
  if (p == nullptr) return;
  live_blocks.fetch_sub(1, std::memory_order_relaxed);
  std::free(p);
}

[[gnu::noinline]] void* allocate_or_throw(std::size_t bytes, std::size_t alignment) {
  void* p = allocate(bytes, alignment);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

// Out of line (noinline) so that GCC does not see malloc/free meet new/delete at call sites.
[[gnu::noinline]] void* operator new(std::size_t n) { return allocate_or_throw(n, 0); }
[[gnu::noinline]] void* operator new[](std::size_t n) { return allocate_or_throw(n, 0); }
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void* operator new[](std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
[[gnu::noinline]] void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}
[[gnu::noinline]] void operator delete(void* p) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }

namespace posenc::test {

/// What one armed run of an operation did. Holds no heap memory, so the sweep's count of live
/// blocks after a run is the operation's alone.
struct ArmedRun {
  std::int64_t allocations = 0;   ///< allocations the arming thread made during the run
  bool failure_injected = false;  ///< the allocation to fail was reached
  bool threw = false;
  std::array<char, 512> message{};  ///< "<kind>: <message>" of what it threw ("" when it returned)

  std::string error() const { return message.data(); }
  void set_error(const char* kind, const char* what) { std::snprintf(message.data(), message.size(), "%s%s", kind, what); }
};

/// Runs `op` with the injector armed on this thread: allocation number `fail` (1-based) fails, or
/// none when `fail` = -1.
inline ArmedRun run_armed(const std::function<void()>& op, std::int64_t fail) {
  ArmedRun r;
  seen = 0;
  fail_at = fail;
  failed = false;
  armed = true;
  try {
    op();
  } catch (const Error& e) {
    armed = false;
    r.threw = true;
    std::snprintf(r.message.data(), r.message.size(), "%s: %s", to_string(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    armed = false;
    r.threw = true;
    r.set_error("std::bad_alloc escaped", "");
  } catch (const std::exception& e) {
    armed = false;
    r.threw = true;
    r.set_error("a non-posenc exception: ", e.what());
  }
  armed = false;
  r.allocations = seen;
  r.failure_injected = failed;
  return r;
}

/// run_armed on a new thread, whose thread-local state (per-thread scratch) starts empty and is
/// freed when it ends.
inline ArmedRun run_armed_on_fresh_thread(const std::function<void()>& op, std::int64_t fail) {
  ArmedRun r;
  std::thread t([&] { r = run_armed(op, fail); });
  t.join();
  return r;
}

/// What a scenario does around each run: `prepare` resets the caller's buffers, `op` is the
/// operation under test, `check_success` / `check_failure` look at the buffers afterwards.
struct Scenario {
  std::function<void()> prepare = [] {};
  std::function<void()> op;
  std::function<void()> check_success = [] {};
  std::function<void()> check_failure = [] {};
  bool fresh_thread = false;  ///< run each time on a new thread (see run_armed_on_fresh_thread)
  bool may_absorb = false;    ///< the operation may handle a failure itself and succeed
};

/// Runs `s` clean twice (warm-up: function-local statics; then the count), then once per
/// allocation with that allocation failing, checking the contract above. Stops at the first
/// failing allocation that breaks it. Returns the number of allocations swept.
inline std::int64_t sweep(const std::string& name, const Scenario& s) {
  const auto run = [&](std::int64_t fail) {
    return s.fresh_thread ? run_armed_on_fresh_thread(s.op, fail) : run_armed(s.op, fail);
  };
  s.prepare();
  const ArmedRun warm = run(-1);
  EXPECT_FALSE(warm.threw) << name << ": the clean run threw " << warm.error();
  s.prepare();
  const std::int64_t clean_before = live_blocks.load();
  const ArmedRun clean = run(-1);
  // What a successful run leaves (an argument moved in and destroyed is -1 per block).
  const std::int64_t clean_delta = live_blocks.load() - clean_before;
  EXPECT_FALSE(clean.threw) << name << ": the clean run threw " << clean.error();
  s.check_success();
  EXPECT_GT(clean.allocations, 0) << name << ": nothing allocated, nothing to inject";
  for (std::int64_t n = 1; n <= clean.allocations; ++n) {
    s.prepare();
    const std::int64_t live_before = live_blocks.load();
    const ArmedRun r = run(n);
    const std::int64_t live_after = live_blocks.load();
    EXPECT_TRUE(r.failure_injected) << name << ": allocation " << n << " of " << clean.allocations
                                    << " was never made (the operation allocates differently from run to run)";
    EXPECT_EQ(live_after - live_before, clean_delta)
        << name << ": failing allocation " << n << " leaked " << live_after - live_before - clean_delta << " blocks";
    EXPECT_TRUE(r.threw || s.may_absorb) << name << ": failing allocation " << n << " of " << clean.allocations
                                         << " went unreported";
    if (r.threw) {
      EXPECT_EQ(r.error().rfind("out_of_memory: ", 0), 0u) << name << ": failing allocation " << n << " gave " << r.error();
      s.check_failure();
    } else {
      s.check_success();
    }
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << name << ": stopped at allocation " << n << " of " << clean.allocations;
      break;
    }
  }
  return clean.allocations;
}

}  // namespace posenc::test
