// The device position tracker against glm::PositionTracker, step by step, its faults, and GpuEngine fed by it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/glm.hpp"
#include "posenc/gpu.hpp"
#include "support/host_tensor.hpp"

namespace posenc::test {
namespace {

constexpr std::int64_t max_tokens = 2048;

/// A host tracker with `slots` sequences whose states exercise every part of the rule.
glm::PositionTracker make_host(int streams, int slots, std::mt19937_64& rng) {
  glm::PositionTracker host(streams, 1 << 20);
  for (int i = 0; i < slots; ++i) {
    glm::SequenceState st;
    st.length = static_cast<std::int64_t>(rng() % 500);
    if (streams == 3) st.rope_delta = -static_cast<std::int64_t>(rng() % (st.length + 1));  // M-RoPE
    if (streams == 2 && i % 2 == 0) {  // ChatGLM-6B: pinned at the mask from the context length on
      st.pin_from = st.length + static_cast<std::int64_t>(rng() % 3);
      st.pin_value = st.length / 2;
    }
    host.add_sequence(1000 + i, st);
  }
  return host;
}

class GpuTracker : public GpuTest, public ::testing::WithParamInterface<int> {};

TEST_P(GpuTracker, StepsMatchTheHostTracker) {
  const int streams = GetParam();
  std::mt19937_64 rng(42 + static_cast<std::uint64_t>(streams));
  glm::PositionTracker host = make_host(streams, 37, rng);
  gpu::GpuPositionTracker tracker(host, device, max_tokens);
  ASSERT_EQ(tracker.slots(), 37);

  gpu::DeviceBuffer d_slots(device, 4096), d_counts(device, 4096);
  gpu::DeviceBuffer d_out(device, streams * max_tokens * 8);
  std::vector<std::int64_t> got(static_cast<std::size_t>(streams * max_tokens));
  for (int step = 0; step < 25; ++step) {
    // A random mix of prefill chunks and single-token decodes over distinct sequences.
    std::vector<std::int64_t> order(37);
    for (int i = 0; i < 37; ++i) order[static_cast<std::size_t>(i)] = 1000 + i;
    std::shuffle(order.begin(), order.end(), rng);
    const int used = 1 + static_cast<int>(rng() % 37);
    std::vector<glm::StepEntry> entries;
    std::vector<std::int32_t> slots, counts;
    std::int64_t total = 0;
    for (int e = 0; e < used; ++e) {
      const std::int64_t n = rng() % 4 == 0 ? 1 + static_cast<std::int64_t>(rng() % 60) : 1;
      if (total + n > max_tokens) break;
      entries.push_back({order[static_cast<std::size_t>(e)], n});
      slots.push_back(static_cast<std::int32_t>(host.slot_of(order[static_cast<std::size_t>(e)])));
      counts.push_back(static_cast<std::int32_t>(n));
      total += n;
    }
    const glm::PositionIds want = host.step(entries);
    d_slots.upload(slots.data(), static_cast<std::int64_t>(slots.size() * 4), ref());
    d_counts.upload(counts.data(), static_cast<std::int64_t>(counts.size() * 4), ref());
    d_out.fill_bytes(0xff, ref());
    tracker.step(static_cast<const std::int32_t*>(d_slots.data()), static_cast<const std::int32_t*>(d_counts.data()),
                 static_cast<std::int64_t>(slots.size()), total, static_cast<std::int64_t*>(d_out.data()), ref());
    tracker.check(ref());
    d_out.download(got.data(), d_out.size_bytes(), ref());
    stream->synchronize();
    for (int s = 0; s < streams; ++s) {
      for (std::int64_t t = 0; t < total; ++t) {
        ASSERT_EQ(got[static_cast<std::size_t>(s * max_tokens + t)], want.at(s, t))
            << "step " << step << ", stream " << s << ", token " << t;
      }
    }
    const std::vector<std::int64_t> lengths = tracker.lengths(ref());
    ASSERT_TRUE(std::equal(lengths.begin(), lengths.end(), host.lengths().begin())) << "step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuTracker, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                           return "streams" + std::to_string(param_info.param);
                         });

class GpuTrackerFaults : public GpuTest {};

TEST_F(GpuTrackerFaults, BadEntriesAreRecordedNotWritten) {
  glm::PositionTracker host(1, 100);
  host.add_sequence(7, {});
  host.add_sequence(8, {90, 0, glm::never_pinned, 0});
  gpu::GpuPositionTracker tracker(host, device, 64);
  gpu::DeviceBuffer d_slots(device, 64), d_counts(device, 64), d_out(device, 64 * 8);

  struct Case {
    std::vector<std::int32_t> slots;
    std::vector<std::int32_t> counts;
    std::int64_t total;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{0, 5}, {1, 1}, 1, "entry 1 names slot 5, outside [0, 2)"},
      {{0, 0}, {1, 1}, 1, "entry 1 repeats slot 0"},
      {{0, 1}, {1, 0}, 1, "entry 1 has new_tokens 0"},
      {{1}, {20}, 0, "entry 0 would produce position 100, outside [0, 100)"},
      {{0}, {3}, 2, "add up to 3 tokens, not the total_tokens"},
  };
  for (const Case& c : cases) {
    const std::vector<std::int64_t> before = tracker.lengths(ref());
    d_slots.upload(c.slots.data(), static_cast<std::int64_t>(c.slots.size() * 4), ref());
    d_counts.upload(c.counts.data(), static_cast<std::int64_t>(c.counts.size() * 4), ref());
    tracker.step(static_cast<const std::int32_t*>(d_slots.data()), static_cast<const std::int32_t*>(d_counts.data()),
                 static_cast<std::int64_t>(c.slots.size()), c.total, static_cast<std::int64_t*>(d_out.data()), ref());
    try {
      tracker.check(ref());
      ADD_FAILURE() << "no error for: " << c.message;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
    tracker.check(ref());  // the record was cleared
    const std::vector<std::int64_t> after = tracker.lengths(ref());
    // The faulty entry's sequence keeps its length; slot 0's one valid token in the first three
    // cases advances it.
    if (c.message.find("names slot 5") != std::string::npos || c.message.find("new_tokens 0") != std::string::npos) {
      EXPECT_EQ(after[0], before[0] + 1);
      EXPECT_EQ(after[1], before[1]);
    } else if (c.message.find("repeats slot 0") != std::string::npos) {
      EXPECT_EQ(after[0], before[0] + 1) << "the first occurrence proceeds, the repeat does not";
    } else {
      EXPECT_EQ(after, before);
    }
  }
  EXPECT_THROW(tracker.step(nullptr, nullptr, 5000, 1, nullptr, ref()), Error);
  EXPECT_THROW(tracker.step(nullptr, nullptr, 1, 65, nullptr, ref()), Error);
}

TEST_F(GpuTrackerFaults, EngineConsumesTheTrackersPositionsDirectly) {
  // M-RoPE decode after an image prefill: the tracker's 3-stream output feeds GpuEngine as is.
  glm::PositionTracker host(3, 1 << 20);
  host.add_sequence(1, {120, -30, glm::never_pinned, 0});
  host.add_sequence(2, {40, 0, glm::never_pinned, 0});
  gpu::GpuPositionTracker tracker(host, device, 16);
  const std::vector<std::int32_t> slots = {0, 1}, counts = {1, 5};
  gpu::DeviceBuffer d_slots(device, 8), d_counts(device, 8), d_out(device, 3 * 16 * 8);
  d_slots.upload(slots.data(), 8, ref());
  d_counts.upload(counts.data(), 8, ref());
  tracker.step(static_cast<const std::int32_t*>(d_slots.data()), static_cast<const std::int32_t*>(d_counts.data()),
               2, 6, static_cast<std::int64_t*>(d_out.data()), ref());
  const glm::PositionIds want = host.step(std::vector<glm::StepEntry>{{1, 1}, {2, 5}});

  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  spec.rotary_dim = 64;
  spec.pairing = Pairing::interleaved;
  spec.mrope_section = {8, 12, 12};
  HostTensor cpu_q(DType::bf16, 6, 4, 128);
  fill_random(cpu_q.view, 5);
  HostTensor gpu_q(DType::bf16, 6, 4, 128);
  std::memcpy(gpu_q.buffer.data(), cpu_q.buffer.data(), static_cast<std::size_t>(cpu_q.buffer.size()));

  RopeArgs host_args;
  host_args.q = cpu_q.view;
  host_args.positions = {want.data(), IndexType::i64, 6, 3, 6};
  CpuEngine(spec).apply(host_args);

  DeviceMirror mirror(device, gpu_q.buffer, ref());
  RopeArgs dev_args;
  dev_args.q = mirror.map(gpu_q.view);
  dev_args.positions = tracker.positions(static_cast<const std::int64_t*>(d_out.data()), 6);
  const gpu::GpuEngine engine(spec, device);
  engine.apply(dev_args, ref());
  engine.check(ref());
  tracker.check(ref());
  mirror.download(gpu_q.buffer, ref());
  EXPECT_EQ(std::memcmp(cpu_q.buffer.data(), gpu_q.buffer.data(), static_cast<std::size_t>(cpu_q.buffer.size())), 0)
      << "GPU rotation with tracker positions differs from the CPU engine with host positions";
}

}  // namespace
}  // namespace posenc::test
