// GPU MLA decoupled RoPE: Q's rope slice rotated in place inside [tokens, heads, nope + rope] and the append into the mla cache layout, bit for bit against the CPU engine and the GPU's own rotation cast by the test's encoders; bad slots, host validation.
//
// Oracles as in test_gpu_append.cpp: (1) GpuEngine::apply on dense copies of Q's slice and k_pe,
// and the test's image of the mla cache built from that K and the latent (every numerics mode);
// (2) for the hf numerics, CpuEngine::append on the same inputs gives the same bytes. Every byte of
// the cache outside the rows written stays poisoned; Q's nope part and the compressed KV input are
// not written.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gpu_support.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
#include "posenc/gpu.hpp"
#include "posenc/kv_cache.hpp"
#include "support/compare.hpp"
#include "support/host_tensor.hpp"
#include "support/kv_image.hpp"
#include "support/mla_tensors.hpp"
#include "support/specs.hpp"

namespace posenc::test {
namespace {

using gpu::GpuEngine;

class GpuMla : public GpuTest {};

gpu::DeviceBuffer upload_slots(const gpu::Device& device, const std::vector<std::int64_t>& slots,
                               gpu::StreamRef stream) {
  gpu::DeviceBuffer b(device, static_cast<std::int64_t>(slots.size() * sizeof(std::int64_t)) + 8);
  b.upload(slots.data(), static_cast<std::int64_t>(slots.size() * sizeof(std::int64_t)), stream);
  stream.synchronize();
  return b;
}

void run_case(const gpu::Device& device, gpu::StreamRef stream, const MlaCase& c) {
  SCOPED_TRACE(name_of(c));
  const std::int64_t rope = c.spec.head_dim;
  MlaTensors x(c.act, c.tokens, c.heads, c.nope, rope, c.latent, c.seed, c.pad);
  const std::vector<std::int64_t> slots = mla_slots(c);
  ASSERT_EQ(static_cast<std::int64_t>(slots.size()), c.tokens);
  const HostPositions pos(mla_positions(c));
  const DevicePositions d_positions(device, pos, stream);
  const gpu::DeviceBuffer d_slots = upload_slots(device, slots, stream);
  const GpuEngine engine(c.spec, device);

  // Oracle 1: the GPU's rotation of dense copies, and the image of the cache from it.
  HostTensor q_want = dense_copy(ConstTensorView(x.q));
  HostTensor k_want = dense_copy(x.k);
  {
    DeviceMirror dq(device, q_want.buffer, stream);
    DeviceMirror dk(device, k_want.buffer, stream);
    engine.apply(RopeArgs{dq.map(q_want.view), dk.map(k_want.view), {}, {}, d_positions.view, {}}, stream);
    engine.check(stream);
    dq.download(q_want.buffer, stream);
    dk.download(k_want.buffer, stream);
  }
  HostCache poisoned = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
  poisoned.view.k_scale = c.k_scale;
  poisoned.view.v_scale = c.v_scale;
  const CacheImage want = expected_cache(poisoned, k_want.cview(), x.v, slots);

  // Oracle 2 (hf numerics): the CPU engine's append of the same inputs.
  const auto q_before = x.q_full.buffer.snapshot();
  if (c.spec.numerics != Numerics::accurate) {
    MlaTensors cpu(c.act, c.tokens, c.heads, c.nope, rope, c.latent, c.seed, c.pad);
    HostCache cpu_cache = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
    cpu_cache.view.k_scale = c.k_scale;
    cpu_cache.view.v_scale = c.v_scale;
    CpuEngine(c.spec, CpuOptions{2}).append(append_args(cpu.q, cpu.k, cpu.v, pos.view(), slots.data(), cpu_cache.view));
    EXPECT_TRUE(bits_equal(q_want.cview(), ConstTensorView(cpu.q))) << "GPU apply and CPU append rotate Q differently";
    EXPECT_TRUE(bytes_equal(want.k, cpu_cache.k)) << "CPU append's cache differs from the oracle";
  }

  // The GPU append: Q's slice in place inside q_full, k_pe and c_kv slices of the compressed KV.
  HostCache host_cache = HostCache::mla(c.cache, c.latent, rope, c.blocks, c.block_len);
  host_cache.view.k_scale = c.k_scale;
  host_cache.view.v_scale = c.v_scale;
  DeviceMirror d_cache(device, host_cache.k, stream);
  DeviceMirror dq(device, x.q_full.buffer, stream);
  DeviceMirror dckv(device, x.ckv_full.buffer, stream);
  KvCacheView view = host_cache.view;
  view.k = d_cache.map(host_cache.k.data());
  engine.append(append_args(dq.map(x.q), dckv.map(x.k), dckv.map(x.v), d_positions.view,
                            static_cast<const std::int64_t*>(d_slots.data()), view),
                stream);
  engine.check(stream);

  HostTensor q_after(c.act, c.tokens, c.heads, c.nope + rope);
  dq.download(q_after.buffer, stream);
  TensorView q_slice = x.q;
  q_slice.data = static_cast<std::byte*>(q_after.view.data) + c.nope * size_of(c.act);
  EXPECT_TRUE(bits_equal(q_want.cview(), ConstTensorView(q_slice))) << "Q";
  EXPECT_TRUE(only_views_written(q_before, q_after.buffer, {ConstTensorView(q_slice)})) << "Q's nope part";
  d_cache.download(host_cache.k, stream);
  EXPECT_TRUE(bytes_equal(want.k, host_cache.k)) << "mla cache";
  HostTensor ckv_after(c.act, c.tokens, 1, c.latent + rope, c.latent + rope + c.pad);
  dckv.download(ckv_after.buffer, stream);
  EXPECT_TRUE(bytes_equal(x.ckv_full.buffer.snapshot(), ckv_after.buffer)) << "the compressed KV was written";
}

TEST_F(GpuMla, EveryDtypeAndNumericsVectorizedAndNot) {
  for (Numerics n : all_numerics) {
    for (DType act : all_dtypes) {
      for (std::int64_t pad : {0, 1}) {
        MlaCase c;
        c.spec = deepseek_v3_spec(n);
        c.act = act;
        c.cache = cache_dtype_of(act);
        c.pad = pad;
        run_case(device, ref(), c);
      }
    }
  }
}

TEST_F(GpuMla, CastsAndFp8Scales) {
  const std::vector<std::pair<DType, CacheDType>> casts = {
      {DType::f32, CacheDType::bf16}, {DType::bf16, CacheDType::f32}, {DType::bf16, CacheDType::fp8_e4m3},
      {DType::f16, CacheDType::fp8_e4m3}, {DType::f32, CacheDType::fp8_e4m3}};
  for (const auto& [act, cache] : casts) {
    for (std::int64_t pad : {0, 3}) {
      MlaCase c;
      c.act = act;
      c.cache = cache;
      c.pad = pad;
      if (cache == CacheDType::fp8_e4m3) {
        c.k_scale = 0.0078125f;  // saturates
        c.v_scale = 0.3f;        // rounds
      }
      run_case(device, ref(), c);
    }
  }
}

TEST_F(GpuMla, OtherGeometriesDecodeAndPrefill) {
  MlaCase minicpm;  // rope 32 half-split, latent 256
  minicpm.spec = exact_arithmetic(scheme_spec(Scaling::none, 32, 0, 0, Pairing::half_split, Numerics::hf_compatible));
  minicpm.nope = 64;
  minicpm.latent = 256;
  run_case(device, ref(), minicpm);
  MlaCase decode;  // one token per sequence, 128 heads
  decode.tokens = 4;
  decode.heads = 128;
  run_case(device, ref(), decode);
  MlaCase prefill;  // thousands of tokens: many tiles, the grid strides
  prefill.tokens = 3000;
  prefill.heads = 8;
  prefill.blocks = 200;
  prefill.block_len = 16;
  run_case(device, ref(), prefill);
}

TEST_F(GpuMla, BadSlotsAreRecordedAndSkipped) {
  MlaCase c;
  c.tokens = 6;
  const std::int64_t limit = c.blocks * c.block_len;
  c.slots = {0, limit, 5, -2, -1, std::int64_t{1} << 40};
  MlaTensors x(c.act, c.tokens, c.heads, c.nope, 64, c.latent, 3);
  const HostPositions pos(random_positions(c.tokens, 163840, 4));
  const DevicePositions d_positions(device, pos, ref());
  const gpu::DeviceBuffer d_slots = upload_slots(device, c.slots, ref());
  const GpuEngine engine(c.spec, device);

  // Expected: the valid tokens' rows as the CPU engine writes them (-1 for the bad ones).
  std::vector<std::int64_t> valid = c.slots;
  for (auto& s : valid) s = (s >= 0 && s < limit) ? s : -1;
  MlaTensors cpu(c.act, c.tokens, c.heads, c.nope, 64, c.latent, 3);
  HostCache want = HostCache::mla(c.cache, c.latent, 64, c.blocks, c.block_len);
  CpuEngine(c.spec, CpuOptions{1}).append(append_args(cpu.q, cpu.k, cpu.v, pos.view(), valid.data(), want.view));

  HostCache got = HostCache::mla(c.cache, c.latent, 64, c.blocks, c.block_len);
  DeviceMirror d_cache(device, got.k, ref());
  DeviceMirror dq(device, x.q_full.buffer, ref());
  DeviceMirror dckv(device, x.ckv_full.buffer, ref());
  KvCacheView view = got.view;
  view.k = d_cache.map(got.k.data());
  engine.append(append_args(dq.map(x.q), dckv.map(x.k), dckv.map(x.v), d_positions.view,
                            static_cast<const std::int64_t*>(d_slots.data()), view),
                ref());
  EXPECT_TRUE(throws_error([&] { engine.check(ref()); }, ErrorKind::out_of_range,
                           {"slot " + std::to_string(limit), "token 1", "not written"}));
  EXPECT_NO_THROW(engine.check(ref()));
  d_cache.download(got.k, ref());
  dq.download(x.q_full.buffer, ref());
  EXPECT_TRUE(bytes_equal(want.k.snapshot(), got.k));
  EXPECT_TRUE(bytes_equal(cpu.q_full.buffer.snapshot(), x.q_full.buffer)) << "every token's Q is rotated";
}

TEST_F(GpuMla, HostValidationRejectsAndWritesNothing) {
  const RopeSpec spec = deepseek_v3_spec();
  MlaTensors x(DType::bf16, 3, 4, 128, 64, 512, 1);
  const HostPositions pos(std::vector<std::int64_t>{0, 1, 2});
  const DevicePositions d_positions(device, pos, ref());
  const gpu::DeviceBuffer d_slots = upload_slots(device, {0, 1, 2}, ref());
  HostCache host = HostCache::mla(CacheDType::bf16, 512, 64, 2, 4);
  DeviceMirror d_cache(device, host.k, ref());
  DeviceMirror dq(device, x.q_full.buffer, ref());
  DeviceMirror dckv(device, x.ckv_full.buffer, ref());
  const GpuEngine engine(spec, device);
  KvCacheView view = host.view;
  view.k = d_cache.map(host.k.data());
  AppendArgs a = append_args(dq.map(x.q), dckv.map(x.k), dckv.map(x.v), d_positions.view,
                             static_cast<const std::int64_t*>(d_slots.data()), view);
  a.cache.kv_heads = 2;
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument,
                           {"cache.kv_heads 2", "must be 1"}));
  a.cache.kv_heads = 1;
  a.cache.latent_dim = 448;
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument,
                           {"v head_dim 512", "cache.latent_dim 448"}));
  a.cache.latent_dim = 500;
  EXPECT_TRUE(throws_error([&] { engine.append(a, ref()); }, ErrorKind::invalid_argument,
                           {"cache.latent_dim 500", "multiple of head_dim 64"}));
  engine.check(ref());
  HostCache after = HostCache::mla(CacheDType::bf16, 512, 64, 2, 4);
  d_cache.download(after.k, ref());
  HostTensor q_after(DType::bf16, 3, 4, 192);
  dq.download(q_after.buffer, ref());
  EXPECT_TRUE(bytes_equal(host.k.snapshot(), after.k));
  EXPECT_TRUE(bytes_equal(x.q_full.buffer.snapshot(), q_after.buffer));
}

}  // namespace
}  // namespace posenc::test
