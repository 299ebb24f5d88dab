// GPU test helpers (gpu_support.hpp): skip fixture, device mirrors, Q/K layouts, parallel fills.
#include "gpu_support.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

#include "support/reference64.hpp"

namespace posenc::test {

void GpuTest::SetUp() {
  if (!gpu::available()) GTEST_SKIP() << "no usable GPU: " << gpu::unavailable_reason();
  device = gpu::Device::open(0);
  stream.emplace(device);
}

std::vector<ConstTensorView> QkLayout::views() const {
  std::vector<ConstTensorView> v{ConstTensorView(q)};
  if (k.present()) v.emplace_back(k);
  return v;
}

QkLayout make_layout(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t k_heads,
                     std::int64_t head_dim, LayoutKind kind, std::int64_t pad) {
  QkLayout l;
  const std::int64_t e = size_of(dtype);
  if (kind == LayoutKind::fused) {
    const std::int64_t token_stride = (q_heads + 2 * k_heads) * head_dim + pad;
    l.buffer = HostBuffer(tokens * token_stride * e);
    std::byte* base = l.buffer.data();
    l.q = TensorView{base, dtype, tokens, q_heads, head_dim, token_stride, head_dim};
    if (k_heads > 0) {
      l.k = TensorView{base + q_heads * head_dim * e, dtype, tokens, k_heads, head_dim, token_stride, head_dim};
    }
  } else {
    const std::int64_t q_bytes = tokens * q_heads * head_dim * e;
    const std::int64_t k_at = (q_bytes + 255) / 256 * 256;
    l.buffer = HostBuffer(k_at + tokens * k_heads * head_dim * e);
    std::byte* base = l.buffer.data();
    l.q = TensorView::contiguous(base, dtype, tokens, q_heads, head_dim);
    if (k_heads > 0) l.k = TensorView::contiguous(base + k_at, dtype, tokens, k_heads, head_dim);
  }
  l.k.dtype = dtype;
  return l;
}

QkLayout clone(const QkLayout& from) {
  QkLayout to;
  to.buffer = HostBuffer(from.buffer.size());
  std::memcpy(to.buffer.data(), from.buffer.data(), static_cast<std::size_t>(from.buffer.size()));
  const auto rebase = [&](TensorView v) {
    if (v.present()) v.data = to.buffer.data() + (static_cast<const std::byte*>(v.data) - from.buffer.data());
    return v;
  };
  to.q = rebase(from.q);
  to.k = rebase(from.k);
  return to;
}

void fill_random_parallel(const TensorView& v, std::uint64_t seed) {
  const std::int64_t threads =
      std::clamp<std::int64_t>(std::thread::hardware_concurrency(), 1, std::max<std::int64_t>(1, v.tokens));
  std::vector<std::thread> pool;
  for (std::int64_t w = 0; w < threads; ++w) {
    pool.emplace_back([&, w] {
      const std::int64_t begin = v.tokens * w / threads;
      const std::int64_t end = v.tokens * (w + 1) / threads;
      for (std::int64_t t = begin; t < end; ++t) {
        for (std::int64_t h = 0; h < v.heads; ++h) {
          for (std::int64_t d = 0; d < v.head_dim; ++d) {
            store_bits(v, t, h, d, encode_value(v.dtype, random_value(v.dtype, seed, t, h, d)));
          }
        }
      }
    });
  }
  for (std::thread& t : pool) t.join();
}

DeviceMirror::DeviceMirror(const gpu::Device& device, const HostBuffer& host, gpu::StreamRef stream)
    : host_base_(host.data()), device_(device, host.size()) {
  device_.upload(host.data(), host.size(), stream);
  stream.synchronize();
}

void* DeviceMirror::map(const void* host_ptr) const {
  if (host_ptr == nullptr) return nullptr;
  return static_cast<std::byte*>(device_.data()) + (static_cast<const std::byte*>(host_ptr) - host_base_);
}

TensorView DeviceMirror::map(const TensorView& v) const {
  TensorView d = v;
  d.data = map(v.data);
  return d;
}

ConstTensorView DeviceMirror::map(const ConstTensorView& v) const {
  ConstTensorView d = v;
  d.data = map(v.data);
  return d;
}

void DeviceMirror::download(HostBuffer& into, gpu::StreamRef stream) const {
  device_.download(into.data(), into.size(), stream);
  stream.synchronize();
}

DevicePositions::DevicePositions(const gpu::Device& device, const HostPositions& host, gpu::StreamRef stream) {
  const PositionsView hv = host.view();
  const std::int64_t bytes = static_cast<std::int64_t>(host.values.size()) * size_of(hv.type);  // every stream
  buffer = gpu::DeviceBuffer(device, bytes);
  buffer.upload(hv.data, bytes, stream);
  stream.synchronize();
  view = PositionsView{buffer.data(), hv.type, hv.count, hv.streams, hv.stream_stride};
}

Expected64 expected_from(const ConstTensorView& v) {
  Expected64 e;
  e.tokens = v.tokens;
  e.heads = v.heads;
  e.head_dim = v.head_dim;
  e.values.resize(static_cast<std::size_t>(v.tokens * v.heads * v.head_dim));
  for (std::int64_t t = 0; t < v.tokens; ++t) {
    for (std::int64_t h = 0; h < v.heads; ++h) {
      for (std::int64_t d = 0; d < v.head_dim; ++d) {
        e.values[static_cast<std::size_t>((t * v.heads + h) * v.head_dim + d)] = load_value(v, t, h, d);
      }
    }
  }
  return e;
}

}  // namespace posenc::test
