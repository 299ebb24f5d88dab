// Host allocation failure, injected at every allocation in turn: engines and append paths throw Error(out_of_memory), leak nothing, write nothing and stay usable.
//
// This binary replaces the global operator new/delete with support/injecting_allocator.hpp's
// counting allocator, which fails the Nth allocation made by the test's own thread; sweep() runs
// each scenario once per allocation with that one failing (the contract is written there).
// Under the debug preset (ASan + UBSan + LeakSanitizer) the same runs are also checked for
// invalid accesses and leaks by the sanitizers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "support/host_tensor.hpp"
#include "support/injecting_allocator.hpp"
#include "support/kv_image.hpp"
#include "support/specs.hpp"

namespace {

using namespace posenc;        // NOLINT(google-build-using-namespace)
using namespace posenc::test;  // NOLINT(google-build-using-namespace)

// ---- engine construction -------------------------------------------------------------------------

RopeSpec mrope_spec() {
  RopeSpec spec = scheme_spec(Scaling::none, 128);
  spec.mrope_section = {16, 24, 24};
  return spec;
}

TEST(AllocFault, CpuEngineConstructionEveryScheme) {
  std::vector<RopeSpec> specs;
  for (Scaling s : all_schemes) specs.push_back(scheme_spec(s, 64));
  specs.push_back(mrope_spec());
  std::int64_t swept = 0;
  for (const RopeSpec& spec : specs) {
    for (int threads : {1, 3}) {
      // The engine takes its spec by value: the copy is the caller's (made before the call, here
      // in prepare); the operation moves it in.
      RopeSpec copy;
      Scenario s;
      s.prepare = [&] { copy = spec; };
      s.op = [&] { const CpuEngine engine(std::move(copy), CpuOptions{threads}); };
      swept += sweep(std::string("CpuEngine(") + to_string(spec.scaling) + ", threads " + std::to_string(threads) + ")",
                     s);
      if (HasFailure()) return;
    }
  }
  RecordProperty("allocations_swept", std::to_string(swept));
}

TEST(AllocFault, RowCacheFailureNamesItsSize) {
  // The row cache is the engine's one large allocation; its message carries the bytes.
  const RopeSpec spec = scheme_spec(Scaling::none, 64);
  bool named = false;
  for (std::int64_t n = 1; n < 64 && !named; ++n) {
    const ArmedRun r = run_armed([&] { const CpuEngine engine(spec, CpuOptions{1}); }, n);
    if (!r.failure_injected) break;
    if (r.error().find("row cache") != std::string::npos) {
      named = true;
      EXPECT_NE(r.error().find(" bytes)"), std::string::npos) << r.error();
    }
  }
  EXPECT_TRUE(named) << "no allocation of CpuEngine's construction was reported as its row cache";
}

// ---- calls ----------------------------------------------------------------------------------------

/// Q and K with positions, and what apply_reference makes of them.
struct ApplyCase {
  RopeSpec spec;
  HostTensor q{DType::bf16, 6, 4, 64};
  HostTensor k{DType::bf16, 6, 2, 64};
  HostPositions positions;
  std::vector<std::byte> q0, k0, q_expected, k_expected;

  ApplyCase(RopeSpec s, std::vector<std::int64_t> pos) : spec(std::move(s)), positions(std::move(pos)) {
    fill_random(q.view, 21);
    fill_random(k.view, 22);
    q0 = q.buffer.snapshot();
    k0 = k.buffer.snapshot();
    apply_reference(spec, args());
    q_expected = q.buffer.snapshot();
    k_expected = k.buffer.snapshot();
  }
  RopeArgs args() const {
    RopeArgs a;
    a.q = q.view;
    a.k = k.view;
    a.positions = positions.view();
    return a;
  }
  void reset() {
    std::copy(q0.begin(), q0.end(), q.buffer.data());
    std::copy(k0.begin(), k0.end(), k.buffer.data());
  }
  void expect_rotated() const {
    EXPECT_TRUE(q.buffer.snapshot() == q_expected && k.buffer.snapshot() == k_expected) << "wrong result";
  }
  void expect_untouched() const {
    EXPECT_TRUE(q.buffer.snapshot() == q0 && k.buffer.snapshot() == k0) << "a failed call wrote its outputs";
  }
  Scenario scenario(std::function<void()> op) {
    Scenario s;
    s.prepare = [this] { reset(); };
    s.op = std::move(op);
    s.check_success = [this] { expect_rotated(); };
    s.check_failure = [this] { expect_untouched(); };
    return s;
  }
};

TEST(AllocFault, DynamicApplyBeyondTheWindowFailsCleanlyAndTheEngineStaysUsable) {
  // Above max_position_embeddings each new largest position needs a new table: the one place
  // apply allocates. The engine is built outside the sweep and must work after every failure.
  ApplyCase c(scheme_spec(Scaling::dynamic, 64), {0, 4096, 5000, 7, 9000, 3});
  const CpuEngine engine(c.spec, CpuOptions{1});
  Scenario s = c.scenario([&] {
    // Two different seq_lens: the per-call cache never serves the sweep's call.
    RopeArgs a = c.args();
    engine.apply(a);
  });
  s.check_failure = [&] {
    c.expect_untouched();
    c.reset();
    engine.apply(c.args());  // usable afterwards, and right
    c.expect_rotated();
  };
  // The engine caches the last seq_len: alternate two engines' worth of seq_lens by calling once
  // with a different largest position before each run.
  const auto base_prepare = s.prepare;
  s.prepare = [&, base_prepare] {
    HostTensor q(DType::bf16, 1, 4, 64);
    fill_random(q.view, 5);
    const HostPositions other(std::vector<std::int64_t>{7000});
    RopeArgs a;
    a.q = q.view;
    a.positions = other.view();
    engine.apply(a);
    base_prepare();
  };
  sweep("CpuEngine::apply (dynamic, new seq_len)", s);
}

TEST(AllocFault, ApplyReferenceEveryScheme) {
  for (Scaling scheme : all_schemes) {
    ApplyCase c(scheme_spec(scheme, 64), {0, 1, 4097, 9, 20000, 3});
    sweep(std::string("apply_reference(") + to_string(scheme) + ")", c.scenario([&] { apply_reference(c.spec, c.args()); }));
    if (HasFailure()) return;
  }
}

TEST(AllocFault, EngineConstructionPlusApplyEveryScheme) {
  for (Scaling scheme : all_schemes) {
    ApplyCase c(scheme_spec(scheme, 64), {0, 1, 4097, 9, 20000, 3});
    RopeSpec copy;
    Scenario s = c.scenario([&] {
      const CpuEngine engine(std::move(copy), CpuOptions{2});
      engine.apply(c.args());
    });
    s.prepare = [&, reset = s.prepare] {
      copy = c.spec;  // the by-value argument: the caller's copy
      reset();
    };
    sweep(std::string("CpuEngine + apply(") + to_string(scheme) + ")", s);
    if (HasFailure()) return;
  }
}

/// An append of Q, K and V into a paged cache, and what append_reference makes of it.
struct AppendCase {
  RopeSpec spec = scheme_spec(Scaling::longrope, 64);
  HostTensor q{DType::bf16, 5, 4, 64};
  HostTensor k{DType::bf16, 5, 2, 64};
  HostTensor v{DType::bf16, 5, 2, 64};
  HostPositions positions{std::vector<std::int64_t>{0, 1, 4100, 3, 4}};
  std::vector<std::int64_t> slots{0, -1, 2, 7, 4};
  HostCache cache{CacheDType::fp8_e4m3, CacheLayout::paged_nhd, 2, 64, 2, 4};
  std::vector<std::byte> q0, cache_k0, cache_v0, q_expected, cache_k_expected, cache_v_expected;

  AppendCase() {
    fill_random(q.view, 31);
    fill_random(k.view, 32);
    fill_random(v.view, 33);
    q0 = q.buffer.snapshot();
    cache_k0 = cache.k.snapshot();
    cache_v0 = cache.v.snapshot();
    append_reference(spec, args());
    q_expected = q.buffer.snapshot();
    cache_k_expected = cache.k.snapshot();
    cache_v_expected = cache.v.snapshot();
  }
  AppendArgs args() const {
    return append_args(q.view, k.cview(), v.cview(), positions.view(), slots.data(), cache.view);
  }
  Scenario scenario(std::function<void()> op) {
    Scenario s;
    s.prepare = [this] {
      std::copy(q0.begin(), q0.end(), q.buffer.data());
      std::copy(cache_k0.begin(), cache_k0.end(), cache.k.data());
      std::copy(cache_v0.begin(), cache_v0.end(), cache.v.data());
    };
    s.op = std::move(op);
    s.check_success = [this] {
      EXPECT_TRUE(q.buffer.snapshot() == q_expected && cache.k.snapshot() == cache_k_expected &&
                  cache.v.snapshot() == cache_v_expected)
          << "wrong result";
    };
    s.check_failure = [this] {
      EXPECT_TRUE(q.buffer.snapshot() == q0 && cache.k.snapshot() == cache_k0 && cache.v.snapshot() == cache_v0)
          << "a failed append wrote Q or the cache";
    };
    return s;
  }
};

TEST(AllocFault, CpuEngineAppendFailsCleanlyAndTheEngineStaysUsable) {
  // On a fresh thread the K scratch and the duplicate-slot table are allocated by the call.
  AppendCase c;
  const CpuEngine engine(c.spec, CpuOptions{2});
  Scenario s = c.scenario([&] { engine.append(c.args()); });
  s.fresh_thread = true;
  const auto after_failure = s.check_failure;
  s.check_failure = [&, after_failure] {
    after_failure();
    engine.append(c.args());  // usable afterwards (on this thread), and right
    s.check_success();
    s.prepare();
  };
  sweep("CpuEngine::append", s);
}

TEST(AllocFault, AppendReferenceAndConstructionPlusAppend) {
  AppendCase c;
  Scenario reference = c.scenario([&] { append_reference(c.spec, c.args()); });
  reference.fresh_thread = true;
  sweep("append_reference", reference);
  RopeSpec copy;
  Scenario built = c.scenario([&] {
    const CpuEngine engine(std::move(copy), CpuOptions{3});
    engine.append(c.args());
  });
  built.prepare = [&, reset = built.prepare] {
    copy = c.spec;  // the by-value argument: the caller's copy
    reset();
  };
  built.fresh_thread = true;
  sweep("CpuEngine + append", built);
}

TEST(AllocFault, InjectorSeesTheLibrarysAllocations) {
  // The harness itself: a construction allocates, and failing its first allocation is reported.
  const ArmedRun clean = run_armed([] { const CpuEngine engine(scheme_spec(Scaling::none, 64), CpuOptions{1}); }, -1);
  EXPECT_GT(clean.allocations, 2);
  const ArmedRun first = run_armed([] { const CpuEngine engine(scheme_spec(Scaling::none, 64), CpuOptions{1}); }, 1);
  EXPECT_TRUE(first.failure_injected);
  EXPECT_TRUE(first.threw);
  EXPECT_EQ(first.error().rfind("out_of_memory: ", 0), 0u) << first.error();
}

}  // namespace
