// Runtime enum values -> template arguments: the one switch per enum (dtype, cache dtype, pairing, numerics) that the reference, both engines and the element helpers go through (host code).
//
// visit(value, f) calls f(Tag<value>{}) with the value as a compile-time constant, and throws
// Error(invalid_argument) naming the value when it is outside the enum. Every switch is exhaustive
// (no default), so a new enumerator is a compiler warning (an error in the ci preset) here, and
// nowhere else.
#pragma once

#include <string>
#include <type_traits>

#include "posenc/dtype.hpp"
#include "posenc/error.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"

namespace posenc::detail {

/// An enum value as a type: Tag<DType::f16>{}.value == DType::f16, usable as a template argument.
template <auto V>
using Tag = std::integral_constant<decltype(V), V>;

[[noreturn]] inline void throw_unknown(const char* what, int value) {
  throw Error(ErrorKind::invalid_argument, std::string(what) + " " + std::to_string(value) + " is not a known value");
}

template <class F>
decltype(auto) visit(DType t, F&& f) {
  switch (t) {
    case DType::f32: return f(Tag<DType::f32>{});
    case DType::f16: return f(Tag<DType::f16>{});
    case DType::bf16: return f(Tag<DType::bf16>{});
  }
  throw_unknown("dtype", static_cast<int>(t));
}

template <class F>
decltype(auto) visit(Pairing p, F&& f) {
  switch (p) {
    case Pairing::half_split: return f(Tag<Pairing::half_split>{});
    case Pairing::interleaved: return f(Tag<Pairing::interleaved>{});
    case Pairing::interleaved_to_half: return f(Tag<Pairing::interleaved_to_half>{});
    case Pairing::half_split_2d: return f(Tag<Pairing::half_split_2d>{});
  }
  throw_unknown("pairing", static_cast<int>(p));
}

template <class F>
decltype(auto) visit(Numerics n, F&& f) {
  switch (n) {
    case Numerics::hf_compatible: return f(Tag<Numerics::hf_compatible>{});
    case Numerics::hf_fp32_apply: return f(Tag<Numerics::hf_fp32_apply>{});
    case Numerics::accurate: return f(Tag<Numerics::accurate>{});
  }
  throw_unknown("numerics", static_cast<int>(n));
}

template <class F>
decltype(auto) visit(CacheDType c, F&& f) {
  switch (c) {
    case CacheDType::f32: return f(Tag<CacheDType::f32>{});
    case CacheDType::f16: return f(Tag<CacheDType::f16>{});
    case CacheDType::bf16: return f(Tag<CacheDType::bf16>{});
    case CacheDType::fp8_e4m3: return f(Tag<CacheDType::fp8_e4m3>{});
  }
  throw_unknown("cache dtype", static_cast<int>(c));
}

/// visit over (dtype, pairing, numerics) at once: f(Tag<dtype>, Tag<pairing>, Tag<numerics>).
template <class F>
decltype(auto) visit(DType t, Pairing p, Numerics n, F&& f) {
  return visit(t, [&](auto dtype) -> decltype(auto) {
    return visit(p, [&](auto pairing) -> decltype(auto) {
      return visit(n, [&](auto numerics) -> decltype(auto) { return f(dtype, pairing, numerics); });
    });
  });
}

}  // namespace posenc::detail
