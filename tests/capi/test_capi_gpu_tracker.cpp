// The C ABI's device position tracker on a GPU: steps against the host tracker's, a bad entry through check, its positions fed to the GPU engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu_support.hpp"
#include "posenc/gpu.hpp"
#include "posenc/posenc.h"

namespace posenc::test {
namespace {

/// The C handles, destroyed on scope exit.
struct HostDelete {
  void operator()(posenc_position_tracker* p) const { posenc_position_tracker_destroy(p); }
};
struct DeviceDelete {
  void operator()(posenc_gpu_position_tracker* p) const { posenc_gpu_position_tracker_destroy(p); }
};
using HostTracker = std::unique_ptr<posenc_position_tracker, HostDelete>;
using DeviceTracker = std::unique_ptr<posenc_gpu_position_tracker, DeviceDelete>;

/// The call's status and message, for one EXPECT that shows both.
std::string outcome(posenc_status status) {
  return std::string(posenc_status_name(status)) + (status == POSENC_OK ? "" : std::string(": ") + posenc_last_error());
}
#define POSENC_EXPECT_OK(call) ASSERT_EQ(outcome(call), "ok")

constexpr std::int64_t max_tokens = 512;
constexpr int sequences = 9;

/// A host tracker of `sequences` sequences (ids 100..) in states that reach every part of the
/// rule, with one removed so that a slot was moved (slots are what the device steps name).
HostTracker make_host(int streams, std::mt19937_64& rng) {
  posenc_position_tracker* raw = nullptr;
  EXPECT_EQ(posenc_position_tracker_create(streams, 1 << 20, &raw), POSENC_OK) << posenc_last_error();
  HostTracker host(raw);
  for (int i = 0; i < sequences + 1; ++i) {
    posenc_sequence_state state = posenc_sequence_state_make();
    state.length = static_cast<std::int64_t>(rng() % 300);
    if (streams == 3) state.rope_delta = -static_cast<std::int64_t>(rng() % (state.length + 1));  // M-RoPE
    if (streams == 2 && i % 2 == 0) {  // ChatGLM-6B: pinned at the mask from the context on
      state.pin_from = state.length + static_cast<std::int64_t>(rng() % 3);
      state.pin_value = state.length / 2;
    }
    EXPECT_EQ(posenc_position_tracker_add(host.get(), 100 + i, &state), POSENC_OK) << posenc_last_error();
  }
  EXPECT_EQ(posenc_position_tracker_remove(host.get(), 102), POSENC_OK);  // sequence 100 + sequences takes slot 2
  return host;
}

/// The device lengths in slot order against the host tracker's.
void expect_same_lengths(const posenc_position_tracker* host, const posenc_gpu_position_tracker* tracker,
                         void* stream) {
  std::vector<std::int64_t> device(sequences, -1), want(sequences, -1);
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_lengths(tracker, device.data(), device.size(), stream));
  for (int i = 0; i < sequences + 1; ++i) {
    if (100 + i == 102) continue;
    std::int64_t slot = -1;
    posenc_sequence_state state = posenc_sequence_state_make();
    POSENC_EXPECT_OK(posenc_position_tracker_slot(host, 100 + i, &slot));
    POSENC_EXPECT_OK(posenc_position_tracker_get_state(host, 100 + i, &state));
    want[static_cast<std::size_t>(slot)] = state.length;
  }
  EXPECT_EQ(device, want);
}

class CapiGpuTracker : public GpuTest, public ::testing::WithParamInterface<int> {};

TEST_P(CapiGpuTracker, StepsMatchTheHostTracker) {
  const int streams = GetParam();
  std::mt19937_64 rng(7 + static_cast<std::uint64_t>(streams));
  HostTracker host = make_host(streams, rng);
  posenc_gpu_position_tracker* raw = nullptr;
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_create(host.get(), device.ordinal(), max_tokens, &raw));
  DeviceTracker tracker(raw);
  std::int64_t slots = 0, stride = 0;
  std::int32_t got_streams = 0;
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_slots(tracker.get(), &slots));
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_max_tokens(tracker.get(), &stride));
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_streams(tracker.get(), &got_streams));
  ASSERT_EQ(slots, sequences);
  ASSERT_EQ(stride, max_tokens);
  ASSERT_EQ(got_streams, streams);

  void* native = ref().native();
  gpu::DeviceBuffer d_slots(device, 4 * sequences), d_counts(device, 4 * sequences);
  gpu::DeviceBuffer d_out(device, streams * max_tokens * 8);
  std::vector<std::int64_t> got(static_cast<std::size_t>(streams * max_tokens));
  std::vector<std::int64_t> ids;
  for (int i = 0; i < sequences + 1; ++i)
    if (100 + i != 102) ids.push_back(100 + i);
  for (int step = 0; step < 12; ++step) {
    // Distinct sequences in a random order, prefill chunks among single decode tokens.
    std::shuffle(ids.begin(), ids.end(), rng);
    const auto used = 1 + static_cast<std::size_t>(rng() % ids.size());
    std::vector<posenc_step_entry> entries;
    std::vector<std::int32_t> entry_slots, counts;
    std::int64_t total = 0;
    for (std::size_t e = 0; e < used; ++e) {
      const std::int64_t n = rng() % 3 == 0 ? 1 + static_cast<std::int64_t>(rng() % 40) : 1;
      std::int64_t slot = -1;
      POSENC_EXPECT_OK(posenc_position_tracker_slot(host.get(), ids[e], &slot));
      entries.push_back({ids[e], n});
      entry_slots.push_back(static_cast<std::int32_t>(slot));
      counts.push_back(static_cast<std::int32_t>(n));
      total += n;
    }
    std::vector<std::int64_t> want(static_cast<std::size_t>(streams * total));
    std::int64_t tokens = 0;
    POSENC_EXPECT_OK(posenc_position_tracker_step(host.get(), entries.data(), entries.size(), want.data(),
                                                  want.size(), &tokens));
    ASSERT_EQ(tokens, total);

    d_slots.upload(entry_slots.data(), static_cast<std::int64_t>(entry_slots.size() * 4), ref());
    d_counts.upload(counts.data(), static_cast<std::int64_t>(counts.size() * 4), ref());
    d_out.fill_bytes(0xff, ref());  // poison: an unwritten position reads -1
    auto* out = static_cast<std::int64_t*>(d_out.data());
    POSENC_EXPECT_OK(posenc_gpu_position_tracker_step(tracker.get(), static_cast<const std::int32_t*>(d_slots.data()),
                                                      static_cast<const std::int32_t*>(d_counts.data()),
                                                      entry_slots.size(), total, out, native));
    POSENC_EXPECT_OK(posenc_gpu_position_tracker_check(tracker.get(), native));
    d_out.download(got.data(), d_out.size_bytes(), ref());
    stream->synchronize();
    for (int s = 0; s < streams; ++s) {
      for (std::int64_t t = 0; t < total; ++t) {
        ASSERT_EQ(got[static_cast<std::size_t>(s * max_tokens + t)], want[static_cast<std::size_t>(s * total + t)])
            << "step " << step << ", stream " << s << ", token " << t;
      }
    }
    posenc_positions view;
    POSENC_EXPECT_OK(posenc_gpu_position_tracker_positions(tracker.get(), out, total, &view));
    EXPECT_TRUE(view.data == out && view.type == POSENC_INDEX_I64 && view.streams == streams &&
                view.count == total && view.stream_stride == max_tokens);
    expect_same_lengths(host.get(), tracker.get(), native);
  }

  // A bad entry: recorded on the device, reported by check with its index, value and limit, and
  // cleared; the good entry before it proceeds, the bad one writes nothing.
  std::vector<std::int64_t> before(sequences), after(sequences);
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_lengths(tracker.get(), before.data(), before.size(), native));
  const std::vector<std::int32_t> bad_slots = {3, sequences}, bad_counts = {2, 1};
  d_slots.upload(bad_slots.data(), 8, ref());
  d_counts.upload(bad_counts.data(), 8, ref());
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_step(tracker.get(), static_cast<const std::int32_t*>(d_slots.data()),
                                                    static_cast<const std::int32_t*>(d_counts.data()), 2, 3,
                                                    static_cast<std::int64_t*>(d_out.data()), native));
  EXPECT_EQ(posenc_gpu_position_tracker_check(tracker.get(), native), POSENC_ERROR_OUT_OF_RANGE);
  const std::string message = posenc_last_error();
  for (const char* fragment : {"posenc_gpu_position_tracker_check:", "entry 1", "slot 9", "outside [0, 9)"})
    EXPECT_NE(message.find(fragment), std::string::npos) << "lacks \"" << fragment << "\": " << message;
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_check(tracker.get(), native));  // the record was cleared
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_lengths(tracker.get(), after.data(), after.size(), native));
  before[3] += 2;
  EXPECT_EQ(after, before);
}

INSTANTIATE_TEST_SUITE_P(Gpu, CapiGpuTracker, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                           return "streams" + std::to_string(param_info.param);
                         });

class CapiGpuTrackerEngine : public GpuTest {};

// The view posenc_gpu_position_tracker_positions gives drives the GPU engine exactly as the same
// positions laid out densely do (stream stride max_tokens against the step's tokens).
TEST_F(CapiGpuTrackerEngine, PositionsFeedTheEngine) {
  constexpr std::int64_t heads = 4, head_dim = 64;
  posenc_spec_desc desc = posenc_spec_desc_make();
  desc.head_dim = head_dim;
  desc.position_limit = 1 << 20;
  posenc_spec* spec = nullptr;
  POSENC_EXPECT_OK(posenc_spec_create(&desc, &spec));
  posenc_gpu_engine* engine = nullptr;
  POSENC_EXPECT_OK(posenc_gpu_engine_create(spec, device.ordinal(), &engine));
  posenc_spec_destroy(spec);
  std::unique_ptr<posenc_gpu_engine, void (*)(posenc_gpu_engine*)> engine_owner(engine, posenc_gpu_engine_destroy);

  std::mt19937_64 rng(11);
  HostTracker host = make_host(1, rng);
  posenc_gpu_position_tracker* raw = nullptr;
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_create(host.get(), device.ordinal(), max_tokens, &raw));
  DeviceTracker tracker(raw);
  void* native = ref().native();

  const std::vector<std::int32_t> slots = {4, 0, 7}, counts = {17, 1, 5};
  constexpr std::int64_t total = 23;
  gpu::DeviceBuffer d_slots(device, 12), d_counts(device, 12), d_out(device, max_tokens * 8);
  d_slots.upload(slots.data(), 12, ref());
  d_counts.upload(counts.data(), 12, ref());
  auto* out = static_cast<std::int64_t*>(d_out.data());
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_step(tracker.get(), static_cast<const std::int32_t*>(d_slots.data()),
                                                    static_cast<const std::int32_t*>(d_counts.data()), 3, total, out,
                                                    native));
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_check(tracker.get(), native));
  std::vector<std::int64_t> positions(total);
  d_out.download(positions.data(), total * 8, ref());

  // Q rotated twice: at the tracker's view, and at its values copied into a dense buffer.
  std::vector<float> q(static_cast<std::size_t>(total * heads * head_dim));
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : q) x = uniform(rng);
  const std::int64_t q_bytes = static_cast<std::int64_t>(q.size() * sizeof(float));
  gpu::DeviceBuffer d_q(device, q_bytes), d_q_dense(device, q_bytes), d_dense(device, total * 8);
  d_q.upload(q.data(), q_bytes, ref());
  d_q_dense.upload(q.data(), q_bytes, ref());
  stream->synchronize();
  d_dense.upload(positions.data(), total * 8, ref());

  posenc_rope_args args = posenc_rope_args_make();
  args.q = posenc_tensor_contiguous(d_q.data(), POSENC_DTYPE_F32, total, heads, head_dim);
  POSENC_EXPECT_OK(posenc_gpu_position_tracker_positions(tracker.get(), out, total, &args.positions));
  POSENC_EXPECT_OK(posenc_gpu_engine_apply(engine, &args, native));
  args.q = posenc_tensor_contiguous(d_q_dense.data(), POSENC_DTYPE_F32, total, heads, head_dim);
  args.positions = posenc_positions_1d(d_dense.data(), POSENC_INDEX_I64, total);
  POSENC_EXPECT_OK(posenc_gpu_engine_apply(engine, &args, native));
  POSENC_EXPECT_OK(posenc_gpu_engine_check(engine, native));

  std::vector<float> via_view(q.size()), via_dense(q.size());
  d_q.download(via_view.data(), q_bytes, ref());
  d_q_dense.download(via_dense.data(), q_bytes, ref());
  stream->synchronize();
  EXPECT_EQ(std::memcmp(via_view.data(), via_dense.data(), static_cast<std::size_t>(q_bytes)), 0);
  EXPECT_NE(std::memcmp(via_view.data(), q.data(), static_cast<std::size_t>(q_bytes)), 0) << "nothing was rotated";
}

}  // namespace
}  // namespace posenc::test
