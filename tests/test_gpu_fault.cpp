// GPU asynchronous-fault test: a kernel fault surfaces at synchronization naming the posenc launch and its dimensions.
//
// A device fault makes the whole context unusable, so this lives in its own executable (ctest runs
// each test in its own process anyway; this keeps `test_gpu_engine` usable as one process, e.g.
// under compute-sanitizer).
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"

namespace posenc::test {
namespace {

class GpuFault : public GpuTest {};

TEST_F(GpuFault, InvalidDevicePointerIsReportedWithTheLaunch) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  const gpu::GpuEngine engine(spec, device);
  const std::int64_t tokens = 4096;
  const HostPositions positions(random_positions(tokens, 4096, 9), IndexType::i64);
  const DevicePositions d_positions(device, positions, ref());

  // Passes host validation (aligned, shaped, non-overlapping) but is no device allocation.
  RopeArgs args;
  args.q = TensorView::contiguous(reinterpret_cast<void*>(std::uintptr_t{0x1000}), DType::bf16, tokens, 8, 128);
  args.positions = d_positions.view;
  ASSERT_NO_THROW(engine.apply(args, ref()));  // the launch itself is fine; the fault is asynchronous

  std::string message;
  try {
    ref().synchronize();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::vendor);
    message = e.what();
  }
  ASSERT_FALSE(message.empty()) << "the fault was not reported";
  EXPECT_NE(message.find("after posenc rope launch"), std::string::npos) << message;
  EXPECT_NE(message.find("q=[4096,8,128]"), std::string::npos) << message;
  EXPECT_NE(message.find("bfloat16"), std::string::npos) << message;
  EXPECT_NE(message.find("half_split"), std::string::npos) << message;
  EXPECT_NE(message.find("illegal"), std::string::npos) << message;  // the vendor's own words
}

}  // namespace
}  // namespace posenc::test
