// Test support: host buffers, views, seeded inputs and positions (see host_tensor.hpp).
#include "support/host_tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace posenc::test {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// Uniform in [0, 1) from 24 bits.
double unit(std::uint64_t bits) { return static_cast<double>(bits & 0xffffffu) * 0x1p-24; }

}  // namespace

std::uint32_t load_bits(const ConstTensorView& v, std::int64_t t, std::int64_t h, std::int64_t d) {
  const char* p = static_cast<const char*>(v.data) + element_offset(v, t, h, d) * size_of(v.dtype);
  if (v.dtype == DType::f32) {
    std::uint32_t u;
    std::memcpy(&u, p, 4);
    return u;
  }
  std::uint16_t u;
  std::memcpy(&u, p, 2);
  return u;
}

void store_bits(const TensorView& v, std::int64_t t, std::int64_t h, std::int64_t d, std::uint32_t bits) {
  char* p = static_cast<char*>(v.data) + element_offset(ConstTensorView(v), t, h, d) * size_of(v.dtype);
  if (v.dtype == DType::f32) {
    std::memcpy(p, &bits, 4);
  } else {
    const auto u = static_cast<std::uint16_t>(bits);
    std::memcpy(p, &u, 2);
  }
}

double decode_bits(DType t, std::uint32_t bits) {
  switch (t) {
    case DType::f32: {
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DType::bf16: {
      const std::uint32_t u = bits << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case DType::f16: {
      const double sign = (bits & 0x8000u) != 0 ? -1.0 : 1.0;
      const int exp = static_cast<int>((bits >> 10) & 0x1fu);
      const int mant = static_cast<int>(bits & 0x3ffu);
      if (exp == 0x1f) return mant != 0 ? std::nan("") : sign * INFINITY;
      if (exp == 0) return sign * std::ldexp(mant, -24);
      return sign * std::ldexp(1024 + mant, exp - 25);
    }
  }
  return std::nan("");
}

double load_value(const ConstTensorView& v, std::int64_t t, std::int64_t h, std::int64_t d) {
  return decode_bits(v.dtype, load_bits(v, t, h, d));
}

std::uint32_t encode_value(DType t, double value) {
  const auto f = static_cast<float>(value);
  switch (t) {
    case DType::f32: {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      return u;
    }
    case DType::bf16:
      return float_to_bf16_bits(f);
    case DType::f16:
      return float_to_f16_bits(f);
  }
  return 0;
}

std::int64_t view_bytes(DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                        std::int64_t token_stride, std::int64_t head_stride) {
  return ((tokens - 1) * token_stride + (heads - 1) * head_stride + head_dim) * size_of(dtype);
}

HostBuffer::HostBuffer(std::int64_t bytes)
    : bytes_(std::make_unique_for_overwrite<std::byte[]>(static_cast<std::size_t>(std::max<std::int64_t>(bytes, 2)))),
      size_(bytes) {
  poison();
}

void HostBuffer::poison() {
  // One block written byte by byte, then copied: multi-gigabyte buffers poison at memcpy speed.
  constexpr std::size_t block = 4096;
  const std::size_t n = static_cast<std::size_t>(size_);
  for (std::size_t i = 0; i < std::min(n, block); ++i) {
    bytes_[i] = static_cast<std::byte>(i % 2 == 0 ? (poison_bits16 & 0xff) : (poison_bits16 >> 8));
  }
  for (std::size_t at = block; at < n; at += block) {
    std::memcpy(bytes_.get() + at, bytes_.get(), std::min(block, n - at));
  }
}

std::vector<std::byte> HostBuffer::snapshot() const {
  return std::vector<std::byte>(bytes_.get(), bytes_.get() + size_);
}

HostTensor::HostTensor(DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                       std::int64_t token_stride, std::int64_t head_stride) {
  if (head_stride < 0) head_stride = head_dim;
  if (token_stride < 0) token_stride = heads * head_stride;
  buffer = HostBuffer(view_bytes(dtype, tokens, heads, head_dim, token_stride, head_stride));
  view = TensorView{buffer.data(), dtype, tokens, heads, head_dim, token_stride, head_stride};
}

FusedQkv::FusedQkv(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
                   std::int64_t pad) {
  const std::int64_t token_stride = (q_heads + 2 * kv_heads) * head_dim + pad;
  buffer = HostBuffer(tokens * token_stride * size_of(dtype));
  std::byte* base = buffer.data();
  const std::int64_t e = size_of(dtype);
  q = TensorView{base, dtype, tokens, q_heads, head_dim, token_stride, head_dim};
  k = TensorView{base + q_heads * head_dim * e, dtype, tokens, kv_heads, head_dim, token_stride, head_dim};
  v = TensorView{base + (q_heads + kv_heads) * head_dim * e, dtype, tokens, kv_heads, head_dim, token_stride, head_dim};
}

double random_value(DType dtype, std::uint64_t seed, std::int64_t t, std::int64_t h, std::int64_t d) {
  const std::uint64_t key =
      splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(t) * 0x100000001b3ull ^
                                   static_cast<std::uint64_t>(h) << 20 ^ static_cast<std::uint64_t>(d)));
  const std::uint64_t more = splitmix64(key);
  // Irwin-Hall with 4 terms: mean 2, variance 1/3; scaled to unit variance.
  double v = (unit(key) + unit(key >> 32) + unit(more) + unit(more >> 32) - 2.0) * std::sqrt(3.0);
  v = std::copysign(std::fabs(v) + 1.0 / 64, v);  // never (close to) zero
  return decode_bits(dtype, encode_value(dtype, v));
}

void fill_random(const TensorView& v, std::uint64_t seed) {
  for (std::int64_t t = 0; t < v.tokens; ++t) {
    for (std::int64_t h = 0; h < v.heads; ++h) {
      for (std::int64_t d = 0; d < v.head_dim; ++d) {
        store_bits(v, t, h, d, encode_value(v.dtype, random_value(v.dtype, seed, t, h, d)));
      }
    }
  }
}

HostPositions::HostPositions(std::vector<std::int64_t> v, IndexType t, std::int32_t s)
    : type(t), streams(s), values(std::move(v)) {
  if (type == IndexType::i32) {
    values32.reserve(values.size());
    for (std::int64_t p : values) values32.push_back(static_cast<std::int32_t>(p));
  }
}

namespace {

std::vector<std::int64_t> spread_streams(const std::vector<std::int64_t>& first, std::int32_t streams) {
  std::vector<std::int64_t> out = first;
  std::int64_t top = 0;
  for (const std::int64_t p : first) top = std::max(top, p);
  const auto tokens = static_cast<std::int64_t>(first.size());
  for (std::int32_t s = 1; s < streams; ++s) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      out.push_back((first[static_cast<std::size_t>(t)] * (s + 2) + 7 * t + s) % (top + 1));
    }
  }
  return out;
}

}  // namespace

HostPositions::HostPositions(const RopeSpec& spec, const std::vector<std::int64_t>& first, IndexType t)
    : HostPositions(spread_streams(first, spec.position_streams()), t, spec.position_streams()) {}

PositionsView HostPositions::view() const {
  PositionsView p;
  p.type = type;
  p.count = static_cast<std::int64_t>(values.size()) / streams;
  p.streams = streams;
  p.stream_stride = streams > 1 ? p.count : 0;
  p.data = type == IndexType::i32 ? static_cast<const void*>(values32.data()) : static_cast<const void*>(values.data());
  return p;
}

std::vector<std::int64_t> random_positions(std::int64_t count, std::int64_t limit, std::uint64_t seed) {
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    if (i == 0) {
      out.push_back(0);
    } else if (i == 1) {
      out.push_back(limit - 1);
    } else {
      out.push_back(static_cast<std::int64_t>(splitmix64(seed + static_cast<std::uint64_t>(i)) %
                                              static_cast<std::uint64_t>(limit)));
    }
  }
  return out;
}

std::string describe(const ConstTensorView& v) {
  std::ostringstream s;
  s << "[" << v.tokens << ", " << v.heads << ", " << v.head_dim << "] " << to_string(v.dtype) << " strides ("
    << v.token_stride << ", " << v.head_stride << ")";
  return s.str();
}

}  // namespace posenc::test
