// GPU graph tests: apply() captured in a CUDA/HIP graph and replayed gives the results of direct calls (built only with a GPU backend).
//
// Capture in global mode fails on any allocation, host<->device copy or synchronization inside
// apply(), so a successful capture is itself the proof that apply() does none of them.
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "gpu/check.hpp"
#include "gpu/vendor.hpp"
#include "gpu_support.hpp"
#include "posenc/gpu.hpp"
#include "support/compare.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuGraph : public GpuTest {};

/// Owns a captured graph and its executable form.
struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
  }
};

/// Three applies (Q/K in place, different positions; and one out of place) on one stream.
struct Work {
  std::vector<RopeArgs> calls;
  void run(const GpuEngine& engine, gpu::StreamRef stream) const {
    for (const RopeArgs& a : calls) engine.apply(a, stream);
  }
};

void check_graph_matches_direct_calls(const gpu::Device& device, gpu::StreamRef stream, const RopeSpec& spec) {
  const GpuEngine engine(spec, device);
  const std::int64_t tokens = 37;
  QkLayout input = make_layout(DType::bf16, tokens, 8, 2, spec.head_dim, LayoutKind::fused, 8);
  fill_random(input.q, 5);
  fill_random(input.k, 6);
  const HostPositions p1(random_positions(tokens, 9000, 1), IndexType::i64);
  const HostPositions p2(random_positions(tokens, 9000, 2), IndexType::i32);
  const DevicePositions d_p1(device, p1, stream);
  const DevicePositions d_p2(device, p2, stream);

  // Two identical device copies of the data: one driven directly, one through the graph.
  DeviceMirror direct(device, input.buffer, stream);
  DeviceMirror graphed(device, input.buffer, stream);
  QkLayout out = make_layout(DType::bf16, tokens, 8, 2, spec.head_dim, LayoutKind::separate, 0);
  DeviceMirror direct_out(device, out.buffer, stream);
  DeviceMirror graphed_out(device, out.buffer, stream);

  const auto work_on = [&](const DeviceMirror& d, const DeviceMirror& o) {
    Work w;
    RopeArgs a;
    a.q = d.map(input.q);
    a.k = d.map(input.k);
    a.positions = d_p1.view;
    w.calls.push_back(a);
    a.positions = d_p2.view;
    w.calls.push_back(a);
    RopeArgs b;
    b.q = o.map(out.q);
    b.k = o.map(out.k);
    b.q_src = d.map(ConstTensorView(input.q));
    b.k_src = d.map(ConstTensorView(input.k));
    b.positions = d_p1.view;
    w.calls.push_back(b);
    return w;
  };
  const Work direct_work = work_on(direct, direct_out);
  const Work graph_work = work_on(graphed, graphed_out);

  const auto native = static_cast<cudaStream_t>(stream.native());
  Graph g;
  POSENC_GPU_CHECK(cudaStreamBeginCapture(native, cudaStreamCaptureModeGlobal));
  graph_work.run(engine, stream);
  POSENC_GPU_CHECK(cudaStreamEndCapture(native, &g.graph));
  POSENC_GPU_CHECK(cudaGraphInstantiate(&g.exec, g.graph, 0));

  // Replay twice; drive the direct copy twice.
  for (int replay = 0; replay < 2; ++replay) {
    POSENC_GPU_CHECK(cudaGraphLaunch(g.exec, native));
    direct_work.run(engine, stream);
  }
  engine.check(stream);

  QkLayout a = clone(input);
  QkLayout b = clone(input);
  direct.download(a.buffer, stream);
  graphed.download(b.buffer, stream);
  EXPECT_TRUE(bytes_equal(a.buffer.snapshot(), b.buffer)) << "in-place results differ";
  QkLayout ao = clone(out);
  QkLayout bo = clone(out);
  direct_out.download(ao.buffer, stream);
  graphed_out.download(bo.buffer, stream);
  EXPECT_TRUE(bytes_equal(ao.buffer.snapshot(), bo.buffer)) << "out-of-place results differ";
  EXPECT_TRUE(all_written(bo.q));
  // The in-place data really moved (two rounds of three rotations).
  EXPECT_FALSE(bytes_equal(input.buffer.snapshot(), b.buffer));
}

TEST_F(GpuGraph, CapturedAppliesReplayLikeDirectCalls) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 128;
  spec.rotary_dim = 64;  // partial: the out-of-place call copies pass-through dims too
  check_graph_matches_direct_calls(device, ref(), spec);
}

TEST_F(GpuGraph, CallDependentTablesAreCapturedWithTheirPrePass) {
  RopeSpec spec;
  spec.hf_arithmetic = posenc::HfArithmetic::exact;  // compared bit for bit with the CPU
  spec.head_dim = 64;
  spec.scaling = Scaling::dynamic;
  spec.params.factor = 2.0;
  spec.params.max_position_embeddings = 4096;  // positions reach 9000: the grown table
  check_graph_matches_direct_calls(device, ref(), spec);
}

}  // namespace
}  // namespace posenc::test
