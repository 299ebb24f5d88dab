// Test support: host buffers and [T, H, D] views in every dtype (dense, strided, inside a fused QKV buffer), seeded random fill, poison, positions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "posenc/dtype.hpp"
#include "posenc/rope.hpp"
#include "posenc/tensor.hpp"

namespace posenc::test {

/// The 16-bit pattern every buffer is poisoned with before a run. Read as bf16 or f16 it is a
/// quiet NaN, and two of them make the float32 NaN 0x7fc17fc1, so an element the code under test
/// failed to write shows up as a NaN with this exact payload in every dtype.
inline constexpr std::uint16_t poison_bits16 = 0x7fc1;

/// Element offset of (t, h, d): t * token_stride + h * head_stride + d.
inline std::int64_t element_offset(const ConstTensorView& v, std::int64_t t, std::int64_t h, std::int64_t d) {
  return t * v.token_stride + h * v.head_stride + d;
}

/// Raw bits of element (t, h, d): 32 bits for f32, 16 for f16/bf16.
std::uint32_t load_bits(const ConstTensorView& v, std::int64_t t, std::int64_t h, std::int64_t d);
void store_bits(const TensorView& v, std::int64_t t, std::int64_t h, std::int64_t d, std::uint32_t bits);

/// Exact value of `bits` of type `t`, decoded here independently of posenc's conversions.
double decode_bits(DType t, std::uint32_t bits);
/// Value of element (t, h, d).
double load_value(const ConstTensorView& v, std::int64_t t, std::int64_t h, std::int64_t d);
/// Bits of `value` rounded to nearest even in `t` (input generation only).
std::uint32_t encode_value(DType t, double value);

/// Bytes spanned by a [T, H, D] view with the given element strides (first to one past last element).
std::int64_t view_bytes(DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
                        std::int64_t token_stride, std::int64_t head_stride);

/// An owned, poisoned host allocation (16-byte aligned). Uninitialised memory never reaches a test.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(std::int64_t bytes);

  std::byte* data() noexcept { return bytes_.get(); }
  const std::byte* data() const noexcept { return bytes_.get(); }
  std::int64_t size() const noexcept { return size_; }

  /// Fills the whole buffer (gaps between views included) with poison_bits16.
  void poison();
  /// A copy of the bytes, to prove later that nothing changed.
  std::vector<std::byte> snapshot() const;

 private:
  std::unique_ptr<std::byte[]> bytes_;
  std::int64_t size_ = 0;
};

/// A [T, H, D] tensor in its own buffer. Strides default to dense; larger strides leave poisoned
/// gaps that tests check stay untouched.
struct HostTensor {
  HostBuffer buffer;
  TensorView view;

  HostTensor() = default;
  HostTensor(DType dtype, std::int64_t tokens, std::int64_t heads, std::int64_t head_dim,
             std::int64_t token_stride = -1, std::int64_t head_stride = -1);
  ConstTensorView cview() const { return ConstTensorView(view); }
};

/// Q, K and V as views of one fused buffer [T, Hq + 2*Hk, D] (plus `pad` elements per token), the
/// layout of a fused QKV projection: per token, Q heads, then K heads, then V heads.
struct FusedQkv {
  HostBuffer buffer;
  TensorView q;
  TensorView k;
  TensorView v;

  FusedQkv(DType dtype, std::int64_t tokens, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t head_dim,
           std::int64_t pad = 0);
};

/// The input value of element (t, h, d) for `seed`: a counter-based hash, so any element can be
/// regenerated without keeping a copy (the large test relies on this). Roughly N(0, 1), never
/// within 1/64 of zero, already rounded to `dtype`.
double random_value(DType dtype, std::uint64_t seed, std::int64_t t, std::int64_t h, std::int64_t d);

/// Writes random_value(seed, t, h, d) into every element of the view (gaps untouched).
void fill_random(const TensorView& v, std::uint64_t seed);

/// Positions in host memory, as int32 or int64: `streams` streams of one position per token,
/// stream-major (`values` holds streams x tokens).
struct HostPositions {
  IndexType type = IndexType::i64;
  std::int32_t streams = 1;
  std::vector<std::int64_t> values;
  std::vector<std::int32_t> values32;

  HostPositions() = default;
  HostPositions(std::vector<std::int64_t> v, IndexType t = IndexType::i64, std::int32_t streams = 1);
  /// The spec.position_streams() streams a call of `spec` needs: stream 0 is `first`, the others
  /// (ChatGLM-6B's block positions, M-RoPE's h and w) are other values in [0, max(first)], so the
  /// call's largest position is first's.
  HostPositions(const RopeSpec& spec, const std::vector<std::int64_t>& first, IndexType t = IndexType::i64);
  PositionsView view() const;
};

/// `count` positions in [0, limit): starts with 0 and limit - 1 (when count allows), the rest
/// seeded random.
std::vector<std::int64_t> random_positions(std::int64_t count, std::int64_t limit, std::uint64_t seed);

/// "[T, H, D] dtype strides (ts, hs)" for messages.
std::string describe(const ConstTensorView& v);

}  // namespace posenc::test
