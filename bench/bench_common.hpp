// Shared by the CPU and GPU benchmarks: the CSV row format, random element bits, output comparison, the append sweep's slots and verification, tables.
#pragma once

#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "posenc/dtype.hpp"
#include "posenc/kv_cache.hpp"
#include "posenc/rope.hpp"

// The random-element generator runs on the host (CPU bench) and inside a fill kernel (GPU bench).
#if defined(__CUDACC__)
#define POSENC_BENCH_HD __host__ __device__ inline
#else
#define POSENC_BENCH_HD inline
#endif

namespace posenc::bench {

inline constexpr double not_measured = std::numeric_limits<double>::quiet_NaN();

/// Position ids are drawn uniformly from [0, position_range), as the targets specify.
inline constexpr std::int64_t position_range = 8192;
/// The decode rows' positions: sequences anywhere in a 128k context.
inline constexpr std::int64_t decode_position_range = 131072;

/// One CSV row. The three benchmark programs (bench_gpu, bench_cpu, torch_baseline.py) write the
/// same columns so that report.py can merge them; a field that does not apply stays empty.
struct Row {
  std::string card;      ///< GPU name or CPU model, as the machine reports it
  std::string engine;    ///< posenc_gpu, posenc_cpu, torch_eager, torch_compile, floor
  std::string variant;   ///< main_half_split, heads_64x8, floor_memcpy, ...
  std::string dtype;     ///< bfloat16, float16, float32
  std::string pairing;   ///< half_split, interleaved
  std::string numerics;  ///< hf_compatible, accurate
  std::int64_t hq = 0, hk = 0, d = 0, r = 0, t = 0;
  int threads = 0;  ///< CPU rows only
  double median_us = not_measured;
  double graph_us = not_measured;  ///< per call, replayed from a CUDA graph
  double bytes = 0;        ///< the bytes the ratio counts (the rotary window when it is partial)
  double bytes_whole = 0;  ///< 2 x (Q + K) whole tensors
  double gbps = not_measured;
  double floor_gbps = not_measured;
  std::string floor_kind;  ///< memcpy, rmw_kernel, rmw_loop_f32, torch_copy
  double ratio = not_measured;
  std::string verified;  ///< exact, ulp<=1, FAILED (...), skipped
  std::string note;
};

inline std::string csv_header() {
  return "card,engine,variant,dtype,pairing,numerics,Hq,Hk,D,R,T,threads,median_us,"
         "graph_us_per_call,bytes,bytes_whole,GBps,floor_GBps,floor_kind,ratio,verified,note";
}

inline std::string format_number(double v, int decimals) {
  if (!std::isfinite(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

inline std::string count_field(std::int64_t v) { return v == 0 ? "" : std::to_string(v); }

inline std::string csv_line(const Row& r) {
  std::ostringstream o;
  o << csv_field(r.card) << ',' << r.engine << ',' << r.variant << ',' << r.dtype << ','
    << r.pairing << ',' << r.numerics << ',' << count_field(r.hq) << ',' << count_field(r.hk)
    << ',' << count_field(r.d) << ',' << count_field(r.r) << ',' << count_field(r.t) << ','
    << count_field(r.threads) << ',' << format_number(r.median_us, 3) << ','
    << format_number(r.graph_us, 3) << ',' << format_number(r.bytes, 0) << ','
    << format_number(r.bytes_whole, 0) << ',' << format_number(r.gbps, 1) << ','
    << format_number(r.floor_gbps, 1) << ',' << r.floor_kind << ',' << format_number(r.ratio, 4)
    << ',' << csv_field(r.verified) << ',' << csv_field(r.note);
  return o.str();
}

/// Bytes per second over microseconds, in GB/s (10^9 bytes).
inline double gb_per_s(double bytes, double us) { return us > 0 ? bytes / (us * 1e3) : not_measured; }

inline double median(std::vector<double> v) {
  if (v.empty()) return not_measured;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// A 64-bit mix of a counter (splitmix64): every element gets independent-looking bits.
POSENC_BENCH_HD std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// Random, never-zero, finite element bits: sign and mantissa random, magnitude in [1/16, 1).
/// Zeros would hide unwritten outputs and can run faster than real data; a bounded range keeps
/// values finite through the thousands of in-place rotations a benchmark applies to one buffer.
/// `element_bytes` 4 = float32 bits, 2 = bfloat16 (`half` false) or float16 (`half` true).
POSENC_BENCH_HD std::uint32_t random_element_bits(std::uint64_t r, int element_bytes, bool half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(r >> 63);
  const std::uint32_t octave = static_cast<std::uint32_t>((r >> 60) & 3u);  // 2^-4 .. 2^-1
  if (element_bytes == 4) {
    return (sign << 31) | ((123u + octave) << 23) | static_cast<std::uint32_t>(r & 0x7fffffu);
  }
  if (!half) {  // bfloat16: the top half of a float32 with the same exponent range
    return (sign << 15) | ((123u + octave) << 7) | static_cast<std::uint32_t>(r & 0x7fu);
  }
  return (sign << 15) | ((11u + octave) << 10) | static_cast<std::uint32_t>(r & 0x3ffu);
}

/// Host fill of `count` elements of `dtype` at `data` with random_element_bits.
inline void fill_random(void* data, DType dtype, std::int64_t count, std::uint64_t seed) {
  if (dtype == DType::f32) {
    auto* p = static_cast<std::uint32_t*>(data);
    for (std::int64_t i = 0; i < count; ++i)
      p[i] = random_element_bits(mix64(seed + static_cast<std::uint64_t>(i)), 4, false);
  } else {
    auto* p = static_cast<std::uint16_t*>(data);
    const bool half = dtype == DType::f16;
    for (std::int64_t i = 0; i < count; ++i)
      p[i] = static_cast<std::uint16_t>(
          random_element_bits(mix64(seed + static_cast<std::uint64_t>(i)), 2, half));
  }
}

/// Position id `i` of a random stream: uniform in [0, range).
POSENC_BENCH_HD std::int64_t random_position(std::uint64_t seed, std::int64_t i, std::int64_t range = position_range) {
  return static_cast<std::int64_t>(mix64(seed ^ (0x51ed2701ull + static_cast<std::uint64_t>(i))) %
                                   static_cast<std::uint64_t>(range));
}

inline void fill_positions(std::int64_t* p, std::int64_t count, std::uint64_t seed) {
  for (std::int64_t i = 0; i < count; ++i) p[i] = random_position(seed, i);
}

/// Distance in units in the last place between two encodings of `bits`-wide sign-magnitude
/// floating-point elements (32: float32, 16: float16/bfloat16, 8: float8_e4m3fn).
inline std::int64_t ulp_distance(int bits, std::uint32_t a, std::uint32_t b) {
  const std::uint32_t sign = 1u << (bits - 1);
  auto ordered = [&](std::uint32_t u) -> std::int64_t {
    const std::int64_t mag = static_cast<std::int64_t>(u & (sign - 1u));
    return (u & sign) ? -mag : mag;
  };
  const std::int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

struct Comparison {
  std::int64_t elements = 0;
  std::int64_t mismatches = 0;
  std::int64_t max_ulp = 0;

  /// Adds another comparison's counts (several tensors judged as one).
  Comparison& operator+=(const Comparison& o) {
    elements += o.elements;
    mismatches += o.mismatches;
    max_ulp = std::max(max_ulp, o.max_ulp);
    return *this;
  }
};

/// Compares `count` elements of `element_bytes` (1, 2 or 4) bytes each, bit by bit.
inline Comparison compare_bits(int element_bytes, const void* got, const void* want, std::int64_t count) {
  Comparison c;
  c.elements = count;
  for (std::int64_t i = 0; i < count; ++i) {
    std::uint32_t a = 0, b = 0;
    std::memcpy(&a, static_cast<const unsigned char*>(got) + i * element_bytes, static_cast<std::size_t>(element_bytes));
    std::memcpy(&b, static_cast<const unsigned char*>(want) + i * element_bytes, static_cast<std::size_t>(element_bytes));
    if (a != b) {
      ++c.mismatches;
      c.max_ulp = std::max(c.max_ulp, ulp_distance(8 * element_bytes, a, b));
    }
  }
  return c;
}

/// Compares `count` elements of `dtype` bit by bit.
inline Comparison compare_elements(DType dtype, const void* got, const void* want, std::int64_t count) {
  return compare_bits(static_cast<int>(size_of(dtype)), got, want, count);
}

/// Squared differences and squared reference values summed over elements, for a relative L2 error.
struct L2Error {
  double diff2 = 0;
  double ref2 = 0;
  double relative() const { return ref2 > 0 ? std::sqrt(diff2 / ref2) : (diff2 > 0 ? 1.0 : 0.0); }
  L2Error& operator+=(const L2Error& o) {
    diff2 += o.diff2;
    ref2 += o.ref2;
    return *this;
  }
};

/// Element `i` of a `dtype` array as a double.
inline double element_value(DType dtype, const void* base, std::int64_t i) {
  if (dtype == DType::f32) {
    float f = 0;
    std::memcpy(&f, static_cast<const unsigned char*>(base) + i * 4, 4);
    return f;
  }
  std::uint16_t h = 0;
  std::memcpy(&h, static_cast<const unsigned char*>(base) + i * 2, 2);
  return dtype == DType::bf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
}

inline L2Error l2_error(DType dtype, const void* got, const void* want, std::int64_t count) {
  L2Error e;
  for (std::int64_t i = 0; i < count; ++i) {
    const double w = element_value(dtype, want, i);
    const double d = element_value(dtype, got, i) - w;
    e.diff2 += d * d;
    e.ref2 += w * w;
  }
  return e;
}

/// The verdict written to the `verified` column. hf_compatible must be bit-exact (it reproduces
/// one fixed rounding sequence); accurate may differ by one unit in the last place where host and
/// device double-precision sin/cos round differently.
inline std::string verdict(const Comparison& c, Numerics numerics) {
  if (c.mismatches == 0) return "exact";
  const std::string counts = std::to_string(c.mismatches) + "/" + std::to_string(c.elements) +
                             " differ, max " + std::to_string(c.max_ulp) + " ulp";
  if (numerics == Numerics::accurate && c.max_ulp <= 1) return "ulp<=1 (" + counts + ")";
  return "FAILED (" + counts + ")";
}

inline bool verdict_ok(const std::string& v) { return v.rfind("FAILED", 0) != 0 && v.rfind("error", 0) != 0; }

/// Token indices spread evenly over [0, tokens), first and last included.
inline std::vector<std::int64_t> sample_tokens(std::int64_t tokens, std::int64_t wanted) {
  const std::int64_t n = std::min(tokens, wanted);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  for (std::int64_t j = 0; j < n; ++j) idx[static_cast<std::size_t>(j)] = n == 1 ? 0 : j * (tokens - 1) / (n - 1);
  return idx;
}

// ---- the append sweep: slots, cache rows, verification -------------------------------------------

/// Slots per page of the paged layouts (vLLM's default block size).
inline constexpr std::int64_t page_size = 16;
/// Sequences one append call writes to: a decode step of up to 64 sequences, or chunks of 64 prefills.
inline constexpr std::int64_t max_batch = 64;

/// Tokens each sequence appends per call (L below).
inline std::int64_t tokens_per_sequence(std::int64_t tokens) { return (tokens + max_batch - 1) / max_batch; }

/// The slots of every token of `sets` append calls of `tokens` tokens, and the cache shape they
/// address. Call i is step i of a batch of min(T, 64) sequences, each appending L = T / batch
/// consecutive tokens (for T <= 64 a decode step, one token per sequence; above, chunked
/// prefill) after the L * i it appended in earlier steps, so every call writes its own rows.
/// Contiguous: sequence b owns cache row b (slot = b * max_len + p). Paged: every sequence's pages
/// come from one shuffled list of all pages, so a sequence's pages lie anywhere in the cache, as in
/// a long-running server.
struct SlotPlan {
  std::vector<std::int64_t> slots;  ///< call i's tokens: slots[i * tokens, (i + 1) * tokens)
  std::int64_t blocks = 0;
  std::int64_t block_len = 0;
};

inline SlotPlan plan_slots(CacheLayout layout, std::int64_t tokens, std::int64_t sets, std::uint64_t seed) {
  const std::int64_t per_seq = tokens_per_sequence(tokens);
  const std::int64_t batch = (tokens + per_seq - 1) / per_seq;
  const std::int64_t length = sets * per_seq;  // cache positions each sequence fills over all calls
  SlotPlan p;
  p.block_len = layout == CacheLayout::contiguous ? length : page_size;
  const std::int64_t blocks_per_seq = (length + p.block_len - 1) / p.block_len;
  p.blocks = batch * blocks_per_seq;
  std::vector<std::int64_t> table(static_cast<std::size_t>(p.blocks));
  std::iota(table.begin(), table.end(), std::int64_t{0});
  std::mt19937_64 rng(seed);
  if (layout != CacheLayout::contiguous) std::shuffle(table.begin(), table.end(), rng);
  std::vector<std::int64_t> seq(static_cast<std::size_t>(sets * tokens)), pos(seq.size());
  for (std::int64_t i = 0; i < sets; ++i) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      seq[static_cast<std::size_t>(i * tokens + t)] = t / per_seq;
      pos[static_cast<std::size_t>(i * tokens + t)] = i * per_seq + t % per_seq;
    }
  }
  p.slots = slots_from_block_table(table, blocks_per_seq, seq, pos, p.block_len, p.blocks);
  return p;
}

/// Element offset of row (slot, head) in one of the cache's two tensors (kv_cache.hpp's drawing).
POSENC_BENCH_HD std::int64_t cache_row_element(const KvCacheView& c, std::int64_t slot, std::int64_t head) {
  if (c.layout == CacheLayout::paged_hnd) {
    const std::int64_t block = slot / c.block_len;
    return ((block * c.kv_heads + head) * c.block_len + slot % c.block_len) * c.head_dim;
  }
  return (slot * c.kv_heads + head) * c.head_dim;  // contiguous and paged_nhd
}

/// Bytes the fused append must move at least, the byte count of every append row (both
/// methods): read and write Q, read K and V, write the cache's K and V rows in the cache dtype.
inline double append_floor_bytes(std::int64_t tokens, std::int64_t q_heads, std::int64_t kv_heads,
                                 std::int64_t head_dim, DType dtype, CacheDType cache) {
  const auto es = static_cast<double>(size_of(dtype));
  const auto kv_elements = static_cast<double>(tokens * kv_heads * head_dim);
  return 2.0 * static_cast<double>(tokens * q_heads * head_dim) * es + 2.0 * kv_elements * es +
         2.0 * kv_elements * static_cast<double>(size_of(cache));
}

/// Copies `bytes` from `from` (engine memory) to `to` (host): a memcpy, or an enqueued
/// device-to-host copy that completes by the next `wait`.
using CopyOut = std::function<void(void* to, const void* from, std::int64_t bytes)>;

/// Copies rows tokens[j] of `base` (rows of `row_bytes`, back to back) to row j of `host`.
inline void gather_rows(const CopyOut& copy, void* host, const void* base, std::int64_t row_bytes,
                        const std::vector<std::int64_t>& tokens) {
  for (std::size_t j = 0; j < tokens.size(); ++j)
    copy(static_cast<unsigned char*>(host) + static_cast<std::int64_t>(j) * row_bytes,
         static_cast<const unsigned char*>(base) + tokens[j] * row_bytes, row_bytes);
}

/// Host copies of sampled rows of one tensor: `ref` is what the reference starts from, `got` the result.
struct SampledRows {
  std::vector<unsigned char> ref, got;
  SampledRows(std::int64_t tokens, std::int64_t row_bytes)
      : ref(static_cast<std::size_t>(tokens * row_bytes)), got(ref.size()) {}
};

/// Runs `op` (one append of `a`, by any method; it returns when errors are known) and compares Q
/// and the cache rows of up to 64 sampled tokens with append_reference, run on copies of their
/// inputs taken before `op`. Bit-exact for hf_compatible; see verdict().
inline std::string verify_append(const RopeSpec& spec, const AppendArgs& a, const std::function<void()>& op,
                                 const CopyOut& copy, const std::function<void()>& wait) {
  const KvCacheView& c = a.cache;
  const std::int64_t d = c.head_dim, hq = a.q.heads, hk = c.kv_heads;
  const std::int64_t es = size_of(a.q.dtype), ces = size_of(c.dtype);
  const std::vector<std::int64_t> tokens = sample_tokens(a.positions.count, 64);
  const auto n = static_cast<std::int64_t>(tokens.size());
  SampledRows q(n, hq * d * es), k(n, hk * d * es), v(n, hk * d * es), ck(n, hk * d * ces), cv(n, hk * d * ces);
  std::vector<std::int64_t> pos(static_cast<std::size_t>(n)), slots(pos.size()), host_slots(pos.size());

  // q_out: the rows that receive Q, in the cache's dtype (AppendArgs::q_out; q is then only read).
  const bool quantized_q = a.q_out.present();
  SampledRows qo(n, hq * d * ces);
  gather_rows(copy, q.ref.data(), a.q.data, hq * d * es, tokens);
  gather_rows(copy, k.ref.data(), a.k.data, hk * d * es, tokens);
  gather_rows(copy, v.ref.data(), a.v.data, hk * d * es, tokens);
  gather_rows(copy, pos.data(), a.positions.data, 8, tokens);
  gather_rows(copy, slots.data(), a.slots, 8, tokens);
  // A spec with a QK norm: host copies of Q's and K's weights (AppendArgs::norm) for the reference.
  const std::int64_t weight_bytes = a.norm.q != nullptr ? spec.qk_norm_width() * es : 0;
  std::vector<unsigned char> weights(static_cast<std::size_t>(2 * weight_bytes));
  if (weight_bytes > 0) {
    copy(weights.data(), a.norm.q, weight_bytes);
    copy(weights.data() + weight_bytes, a.norm.k, weight_bytes);
  }
  wait();
  op();
  gather_rows(copy, q.got.data(), a.q.data, hq * d * es, tokens);
  if (quantized_q) {
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t h = 0; h < hq; ++h) {
        const std::int64_t t = tokens[static_cast<std::size_t>(j)];
        copy(qo.got.data() + (j * hq + h) * d * ces,
             static_cast<const unsigned char*>(a.q_out.data) + (t * a.q_out.token_stride + h * a.q_out.head_stride) * ces,
             d * ces);
      }
    }
  }
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t h = 0; h < hk; ++h) {
      const std::int64_t from = cache_row_element(c, slots[static_cast<std::size_t>(j)], h) * ces;
      const std::int64_t to = (j * hk + h) * d * ces;
      copy(ck.got.data() + to, static_cast<const unsigned char*>(c.k) + from, d * ces);
      copy(cv.got.data() + to, static_cast<const unsigned char*>(c.v) + from, d * ces);
    }
  }
  wait();

  // The reference writes token j to slot j of a contiguous one-sequence host cache, so its rows
  // line up with the rows copied out above.
  std::iota(host_slots.begin(), host_slots.end(), std::int64_t{0});
  AppendArgs host;
  host.q = TensorView::contiguous(q.ref.data(), a.q.dtype, n, hq, d);
  host.k = TensorView::contiguous(k.ref.data(), a.k.dtype, n, hk, d);
  host.v = TensorView::contiguous(v.ref.data(), a.v.dtype, n, hk, d);
  host.positions = {pos.data(), IndexType::i64, n};
  host.slots = host_slots.data();
  host.cache = c;
  host.cache.k = ck.ref.data();
  host.cache.v = cv.ref.data();
  host.cache.layout = CacheLayout::contiguous;
  host.cache.blocks = 1;
  host.cache.block_len = n;
  if (quantized_q) host.q_out = QuantizedOutput{qo.ref.data(), a.q_out.dtype, hq * d, d, a.q_out.scale};
  if (weight_bytes > 0) host.norm = NormWeights{weights.data(), weights.data() + weight_bytes};
  append_reference(spec, host);

  // With q_out the method's Q is not judged (the fused call leaves it, the unfused one rotates it
  // in place on the way to q_out): q_out is.
  Comparison cmp = quantized_q ? compare_bits(static_cast<int>(ces), qo.got.data(), qo.ref.data(), n * hq * d)
                               : compare_elements(a.q.dtype, q.got.data(), q.ref.data(), n * hq * d);
  cmp += compare_bits(static_cast<int>(ces), ck.got.data(), ck.ref.data(), n * hk * d);
  cmp += compare_bits(static_cast<int>(ces), cv.got.data(), cv.ref.data(), n * hk * d);
  return verdict(cmp, spec.numerics);
}

inline std::vector<std::string> split_list(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

/// True when `filters` is empty or one of them is a substring of `label`.
inline bool matches_filter(const std::string& label, const std::vector<std::string>& filters) {
  if (filters.empty()) return true;
  return std::any_of(filters.begin(), filters.end(),
                     [&](const std::string& f) { return label.find(f) != std::string::npos; });
}

/// One line of the pass/fail summary.
struct TargetResult {
  std::string target;    ///< "main_half_split T=65536 >= 94% of floor"
  std::string measured;  ///< "95.1%"
  bool pass = false;
};

/// Set by SIGINT/SIGTERM (bench/run.sh's time limit sends SIGINT): the sweep starts no new case
/// and the program still writes what it measured.
inline volatile std::sig_atomic_t stop_requested = 0;

inline void install_stop_handler() {
  auto handler = [](int) { stop_requested = 1; };
  std::signal(SIGINT, handler);
  std::signal(SIGTERM, handler);
}

inline void write_text_file(const std::filesystem::path& path, const std::string& text) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path.string());
  f << text;
  if (!f) throw std::runtime_error("error writing " + path.string());
}

inline std::string csv_text(const std::vector<Row>& rows) {
  std::string s = csv_header() + "\n";
  for (const Row& r : rows) s += csv_line(r) + "\n";
  return s;
}

inline std::string percent(double ratio) {
  return std::isfinite(ratio) ? format_number(100.0 * ratio, 1) + "%" : "n/a";
}

inline std::string targets_markdown(const std::vector<TargetResult>& results) {
  std::string s = "| target | measured | result |\n|---|---|---|\n";
  for (const TargetResult& t : results)
    s += "| " + t.target + " | " + t.measured + " | " + (t.pass ? "pass" : "**FAIL**") + " |\n";
  return s;
}

inline void print_targets(const std::vector<TargetResult>& results) {
  int failed = 0;
  std::printf("\nTargets:\n");
  for (const TargetResult& t : results) {
    std::printf("  [%s] %-60s %s\n", t.pass ? "PASS" : "FAIL", t.target.c_str(), t.measured.c_str());
    failed += t.pass ? 0 : 1;
  }
  std::printf("%zu targets: %zu passed, %d failed\n", results.size(), results.size() - static_cast<std::size_t>(failed), failed);
}

/// The options both benchmark programs take.
struct CommonOptions {
  bool quick = false;
  std::string out = ".";
  std::vector<std::string> filters;
  std::vector<std::int64_t> tokens;
  double budget_s = 0;  ///< stop starting new cases after this many seconds (0: no limit)
  bool append = true;   ///< run the append rows (fused append against RoPE + a separate copy)
};

/// Parses argv: the common flags into `o`; any other flag goes to `own(flag, value)`, which
/// returns false for one it does not know (then: usage and an error). --help prints usage, exits.
template <typename Own>
void parse_args(int argc, char** argv, CommonOptions& o, void (*usage)(), Own&& own) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--filter") {
      o.filters = split_list(value());
    } else if (a == "--tokens") {
      for (const std::string& t : split_list(value())) o.tokens.push_back(std::stoll(t));
    } else if (a == "--budget-s") {
      o.budget_s = std::stod(value());
    } else if (a == "--no-append") {
      o.append = false;
    } else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (!own(a, value)) {
      usage();
      throw std::runtime_error("unknown option " + a);
    }
  }
}

}  // namespace posenc::bench
