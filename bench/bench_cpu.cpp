// CPU benchmark: posenc::CpuEngine timed against an in-place read-modify-write loop measured in the same run; CSV, Markdown, pass/fail.
//
// The floor is the bandwidth of `x[i] = x[i] * a + b` over a float32 buffer of max(1 GiB, 8 x LLC),
// run by the same number of threads as the engine (each thread owns one contiguous slice, which
// it also first-touched), bytes = read + write, median of several passes. The floor is measured in
// float32 only: it is a bytes-per-second figure, and the element type of a streaming loop does not
// change how fast DRAM moves bytes.
//
// Engine cases: the main shape (Q 32 heads, K 8 heads, head_dim 128, in place, int64 positions
// in [0, 8192)), float32/float16/bfloat16, both pairings, hf_compatible (--numerics adds the
// others), T in {1024, 4096, 16384},
// 1 thread and all threads. Inputs rotate among enough sets that the working set is >= 4x LLC,
// so that, like the floor, every call reads from DRAM. Each case is verified once on sampled
// tokens against posenc::apply_reference (bit-exact).
//
// Append rows: CpuEngine::append (bfloat16, main shape, contiguous and paged_nhd caches) against
// apply followed by a separate copy of K and V into the cache on persistent threads, both
// counted against the bytes the fused call must move and the same RMW floor; verified against
// posenc::append_reference.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "posenc/posenc.hpp"

#include "bench_common.hpp"

namespace pb = posenc::bench;
using posenc::CacheLayout;
using posenc::DType;
using posenc::Pairing;
using posenc::RopeArgs;
using posenc::RopeSpec;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(colon + 1);
        name.erase(0, name.find_first_not_of(" \t"));
        return name;
      }
    }
  }
  return "unknown CPU";
}

/// The instruction-set flags that decide which CPU kernel build runs (src/cpu/engine.cpp).
std::string kernel_flags() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::string out;
    for (const char* flag : {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}) {
      const std::string word = std::string(" ") + flag + " ";
      if ((line + " ").find(word) != std::string::npos) out += std::string(out.empty() ? "" : " ") + flag;
    }
    return out.empty() ? "none of avx2/f16c/avx512" : out;
  }
  return "unknown (no /proc/cpuinfo flags)";
}

/// CPUs this process may run on (the affinity mask, which a container may narrow below the
/// machine's count), the "all threads" of the targets.
int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

/// Size of the last-level cache: the highest level the kernel lists in sysfs, else glibc's
/// figure, else 32 MiB. sysfs first: in virtual machines glibc's cpuid-derived L3 size can be the
/// whole host's (seen here: 384 MiB from sysconf against 32 MiB in sysfs and lscpu).
std::int64_t llc_bytes() {
  int best_level = 0;
  std::int64_t best = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
    std::ifstream level_file(dir + "/level"), size_file(dir + "/size");
    int level = 0;
    std::string text;
    if (!(level_file >> level) || !(size_file >> text) || text.empty()) continue;
    std::int64_t v = std::atoll(text.c_str());
    if (text.back() == 'K') v <<= 10;
    if (text.back() == 'M') v <<= 20;
    if (level > best_level || (level == best_level && v > best)) {
      best_level = level;
      best = v;
    }
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best <= 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  return best > 0 ? best : std::int64_t{32} << 20;
}

/// CPUs kept busy by other processes: /proc/stat sampled across half a second while this program
/// sleeps (a load average would still count the build that ran a minute ago). -1 when unreadable.
double busy_cpus_elsewhere() {
  auto sample = [](std::uint64_t& busy, std::uint64_t& total) {
    std::ifstream f("/proc/stat");
    std::string cpu;
    std::uint64_t v[8] = {};
    if (!(f >> cpu) || cpu != "cpu") return false;
    for (auto& x : v) f >> x;
    total = 0;
    for (auto x : v) total += x;
    busy = total - v[3] - v[4];  // minus idle and iowait
    return static_cast<bool>(f);
  };
  std::uint64_t b0 = 0, t0 = 0, b1 = 0, t1 = 0;
  if (!sample(b0, t0)) return -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  if (!sample(b1, t1) || t1 <= t0) return -1;
  return static_cast<double>(b1 - b0) / static_cast<double>(t1 - t0) * usable_cpus();
}

/// 64-byte aligned host memory, uninitialized (first touch decides where its pages live).
struct HostBuffer {
  struct Free {
    void operator()(void* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<void, Free> ptr;
  std::int64_t bytes = 0;

  explicit HostBuffer(std::int64_t n) : bytes(n) {
    const auto rounded = static_cast<std::size_t>((n + 63) / 64 * 64);
    ptr.reset(std::aligned_alloc(64, std::max<std::size_t>(rounded, 64)));
    if (!ptr) throw std::runtime_error("cannot allocate " + std::to_string(n) + " bytes");
  }
  unsigned char* data() const noexcept { return static_cast<unsigned char*>(ptr.get()); }
};

/// Runs `body(i)` for i < threads on `threads` threads (the caller is thread 0) and waits.
template <class F>
void on_threads(int threads, F&& body) {
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) workers.emplace_back([&body, i] { body(i); });
  body(0);
  for (std::thread& w : workers) w.join();
}

/// Fills `bytes` of `buffer` with random elements of `dtype`, in parallel (also the first touch).
void parallel_fill(unsigned char* data, std::int64_t bytes, DType dtype, int threads, std::uint64_t seed) {
  const std::int64_t es = posenc::size_of(dtype);
  const std::int64_t n = bytes / es;
  on_threads(threads, [&](int i) {
    const std::int64_t begin = n * i / threads, end = n * (i + 1) / threads;
    pb::fill_random(data + begin * es, dtype, end - begin, seed + static_cast<std::uint64_t>(begin));
  });
}

// ---- the floor ---------------------------------------------------------------------------------

struct Floor {
  int threads = 0;
  double gbps = pb::not_measured;
  std::int64_t buffer_bytes = 0;
  int passes = 0;
};

Floor measure_floor(int threads, std::int64_t bytes) {
  const std::int64_t n = bytes / 4;
  HostBuffer buf(n * 4);
  auto* x = reinterpret_cast<float*>(buf.data());
  // First touch by the same slices the timed passes use, so each thread streams its own pages.
  on_threads(threads, [&](int i) {
    const std::int64_t begin = n * i / threads, end = n * (i + 1) / threads;
    pb::fill_random(x + begin, DType::f32, end - begin, 77 + static_cast<std::uint64_t>(begin));
  });
  // a and b keep the values bounded (the iteration converges to 1): no pass meets inf or NaN.
  const float a = 0.999f, b = 0.001f;
  auto pass = [&] {
    const auto t0 = clock_type::now();
    on_threads(threads, [&](int i) {
      const std::int64_t begin = n * i / threads, end = n * (i + 1) / threads;
      float* p = x + begin;
      const std::int64_t m = end - begin;
      for (std::int64_t j = 0; j < m; ++j) p[j] = p[j] * a + b;
    });
    return seconds_since(t0);
  };
  pass();  // warm-up: page mappings, clocks
  std::vector<double> samples;
  const auto t_begin = clock_type::now();
  while (samples.size() < 5 || (samples.size() < 15 && seconds_since(t_begin) < 1.5)) samples.push_back(pass());
  Floor f;
  f.threads = threads;
  f.buffer_bytes = n * 4;
  f.passes = static_cast<int>(samples.size());
  f.gbps = 2.0 * static_cast<double>(n * 4) / pb::median(samples) / 1e9;
  // Keep the result observable so the loop cannot be dropped.
  if (!std::isfinite(x[n / 2])) std::printf("(floor buffer became non-finite)\n");
  return f;
}

// ---- engine cases ----------------------------------------------------------------------------------

constexpr std::int64_t main_hq = 32;
constexpr std::int64_t main_hk = 8;
constexpr std::int64_t main_d = 128;
/// Tokens of the in-cache rows: two sets of 16 x 40 heads (320 KB in bfloat16) fit a core's L2.
constexpr std::int64_t incache_tokens = 16;

struct Layout {
  std::int64_t tokens = 0;
  std::int64_t q_bytes = 0;
  std::int64_t k_bytes = 0;
  std::int64_t set_stride = 0;  ///< Q then K, each start 64-byte aligned
  std::int64_t sets = 0;
};

Layout layout_for(DType dtype, std::int64_t tokens, std::int64_t working_set) {
  Layout l;
  l.tokens = tokens;
  const std::int64_t es = posenc::size_of(dtype);
  l.q_bytes = tokens * main_hq * main_d * es;
  l.k_bytes = tokens * main_hk * main_d * es;
  l.set_stride = (l.q_bytes + 63) / 64 * 64 + (l.k_bytes + 63) / 64 * 64;
  l.sets = std::max<std::int64_t>(2, (working_set + l.q_bytes + l.k_bytes - 1) / (l.q_bytes + l.k_bytes));
  return l;
}

/// Compares sampled tokens of `a` after one engine call with apply_reference on copies.
std::string verify_case(const posenc::CpuEngine& engine, const RopeArgs& a, DType dtype) {
  const std::int64_t es = posenc::size_of(dtype);
  const std::int64_t q_row = main_hq * main_d * es, k_row = main_hk * main_d * es;
  const std::vector<std::int64_t> tokens = pb::sample_tokens(a.positions.count, 32);
  const auto n = static_cast<std::int64_t>(tokens.size());
  std::vector<unsigned char> q_ref(static_cast<std::size_t>(n * q_row)), k_ref(static_cast<std::size_t>(n * k_row));
  std::vector<std::int64_t> pos(static_cast<std::size_t>(n));
  auto copy_rows = [&](unsigned char* q_host, unsigned char* k_host) {
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t t = tokens[static_cast<std::size_t>(j)];
      std::memcpy(q_host + j * q_row, static_cast<const unsigned char*>(a.q.data) + t * q_row, static_cast<std::size_t>(q_row));
      std::memcpy(k_host + j * k_row, static_cast<const unsigned char*>(a.k.data) + t * k_row, static_cast<std::size_t>(k_row));
    }
  };
  copy_rows(q_ref.data(), k_ref.data());
  for (std::int64_t j = 0; j < n; ++j)
    pos[static_cast<std::size_t>(j)] = static_cast<const std::int64_t*>(a.positions.data)[tokens[static_cast<std::size_t>(j)]];
  engine.apply(a);
  std::vector<unsigned char> q_got(q_ref.size()), k_got(k_ref.size());
  copy_rows(q_got.data(), k_got.data());

  RopeArgs host;
  host.q = posenc::TensorView::contiguous(q_ref.data(), dtype, n, main_hq, main_d);
  host.k = posenc::TensorView::contiguous(k_ref.data(), dtype, n, main_hk, main_d);
  host.positions = {pos.data(), posenc::IndexType::i64, n};
  posenc::apply_reference(engine.spec(), host);
  pb::Comparison c = pb::compare_elements(dtype, q_got.data(), q_ref.data(), n * main_hq * main_d);
  c += pb::compare_elements(dtype, k_got.data(), k_ref.data(), n * main_hk * main_d);
  return pb::verdict(c, engine.spec().numerics);
}

/// Times `call` (one call on the next input set): one warm-up, then about `seconds` of calls (5
/// to 400), each timed alone; fills the row's median, GB/s (over row.bytes), share and note.
void time_calls(const std::function<void()>& call, std::int64_t sets, double seconds, pb::Row& row) {
  auto timed = [&] {
    const auto t0 = clock_type::now();
    call();
    return seconds_since(t0);
  };
  timed();
  const double estimate = std::max(1e-6, timed());
  const int calls = std::clamp(static_cast<int>(seconds / estimate), 5, 400);
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(calls));
  for (int i = 0; i < calls; ++i) us.push_back(1e6 * timed());
  row.median_us = pb::median(us);
  row.gbps = pb::gb_per_s(row.bytes, row.median_us);
  row.ratio = row.gbps / row.floor_gbps;
  row.note += (row.note.empty() ? "" : "; ") + std::string("sets=") + std::to_string(sets) +
              " calls=" + std::to_string(calls);
}

void run_case(const posenc::CpuEngine& engine, const Layout& l, DType dtype, unsigned char* arena,
              const std::int64_t* positions, pb::Row& row) {
  std::vector<RopeArgs> sets(static_cast<std::size_t>(l.sets));
  for (std::int64_t i = 0; i < l.sets; ++i) {
    unsigned char* q = arena + i * l.set_stride;
    unsigned char* k = q + (l.q_bytes + 63) / 64 * 64;
    RopeArgs& a = sets[static_cast<std::size_t>(i)];
    a.q = posenc::TensorView::contiguous(q, dtype, l.tokens, main_hq, main_d);
    a.k = posenc::TensorView::contiguous(k, dtype, l.tokens, main_hk, main_d);
    a.positions = {positions + i * l.tokens, posenc::IndexType::i64, l.tokens};
  }
  row.verified = verify_case(engine, sets[0], dtype);
  std::int64_t next = 1;
  time_calls([&] { engine.apply(sets[static_cast<std::size_t>(next++ % l.sets)]); }, l.sets, 0.3, row);
}

// ---- the fused append against apply followed by a separate cache copy -------------------------------

/// Persistent threads for the unfused path's cache copy: the engine's pool is persistent, so a
/// copy that started threads on every call would pay what the engine does not.
class Workers {
 public:
  explicit Workers(int threads) {
    for (int i = 1; i < threads; ++i) threads_.emplace_back([this, i] { loop(i); });
  }
  ~Workers() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  int size() const { return static_cast<int>(threads_.size()) + 1; }

  /// Runs body(i) for i < size() (the caller is 0) and returns when every part is done.
  void run(const std::function<void(int)>& body) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      job_ = &body;
      pending_ = size() - 1;
      ++generation_;
    }
    wake_.notify_all();
    body(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  void loop(int index) {
    std::uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(index);
      const std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

/// Input sets of one append case (bfloat16, main shape): Q, K, V and positions per set, the slots
/// of every set (pb::plan_slots) and one cache that every set writes its own rows of; enough sets
/// to cover the working set, all filled (and first-touched) before timing.
struct AppendInputs {
  std::unique_ptr<HostBuffer> arena;
  std::vector<std::int64_t> positions;
  pb::SlotPlan plan;
  std::vector<RopeArgs> rope;  ///< the unfused path's view of the same Q and K
  std::vector<posenc::AppendArgs> sets;
};

AppendInputs make_append_inputs(CacheLayout layout, std::int64_t tokens, std::int64_t working_set, int fill_threads) {
  constexpr DType dtype = DType::bf16;
  const std::int64_t q_bytes = tokens * main_hq * main_d * 2, kv_bytes = tokens * main_hk * main_d * 2;
  const std::int64_t set_stride = (q_bytes + 63) / 64 * 64 + 2 * ((kv_bytes + 63) / 64 * 64);
  const auto touched = static_cast<std::int64_t>(
      pb::append_floor_bytes(tokens, main_hq, main_hk, main_d, dtype, posenc::CacheDType::bf16));
  AppendInputs in;
  const std::int64_t n = std::max<std::int64_t>(2, (working_set + touched - 1) / touched);
  in.plan = pb::plan_slots(layout, tokens, n, 0xa99e7dull + static_cast<std::uint64_t>(tokens));
  const std::int64_t cache_bytes = (in.plan.blocks * in.plan.block_len * main_hk * main_d * 2 + 63) / 64 * 64;
  in.arena = std::make_unique<HostBuffer>(n * set_stride + 2 * cache_bytes);
  parallel_fill(in.arena->data(), in.arena->bytes, dtype, fill_threads, 4321);
  in.positions.resize(static_cast<std::size_t>(n * tokens));
  pb::fill_positions(in.positions.data(), n * tokens, 98);
  posenc::KvCacheView cache;
  cache.k = in.arena->data() + n * set_stride;
  cache.v = static_cast<unsigned char*>(cache.k) + cache_bytes;
  cache.layout = layout;
  cache.kv_heads = main_hk;
  cache.head_dim = main_d;
  cache.blocks = in.plan.blocks;
  cache.block_len = in.plan.block_len;
  for (std::int64_t i = 0; i < n; ++i) {
    unsigned char* q = in.arena->data() + i * set_stride;
    unsigned char* k = q + (q_bytes + 63) / 64 * 64;
    RopeArgs r;
    r.q = posenc::TensorView::contiguous(q, dtype, tokens, main_hq, main_d);
    r.k = posenc::TensorView::contiguous(k, dtype, tokens, main_hk, main_d);
    r.positions = {in.positions.data() + i * tokens, posenc::IndexType::i64, tokens};
    posenc::AppendArgs a;
    a.q = r.q;
    a.k = r.k;
    a.v = posenc::TensorView::contiguous(k + (kv_bytes + 63) / 64 * 64, dtype, tokens, main_hk, main_d);
    a.positions = r.positions;
    a.slots = in.plan.slots.data() + i * tokens;
    a.cache = cache;
    in.rope.push_back(r);
    in.sets.push_back(a);
  }
  return in;
}

/// The unfused path's copy: each worker takes a slice of the tokens and copies their K and V
/// rows (same dtype as the cache) to the rows of their slots. Below 1 MiB the caller copies
/// alone, as the engine's pool does for small calls: waking threads would cost more.
void scatter_kv(Workers& workers, const posenc::AppendArgs& a) {
  const std::int64_t tokens = a.positions.count, row_bytes = a.cache.head_dim * posenc::size_of(a.k.dtype);
  const int parts = 2 * tokens * a.cache.kv_heads * row_bytes < (std::int64_t{1} << 20) ? 1 : workers.size();
  auto copy = [&](int w) {
    const std::int64_t end = tokens * (w + 1) / parts;
    for (std::int64_t t = tokens * w / parts; t < end; ++t) {
      const std::int64_t slot = a.slots[t];
      if (slot < 0) continue;
      for (std::int64_t h = 0; h < a.cache.kv_heads; ++h) {
        const std::int64_t from = (t * a.cache.kv_heads + h) * row_bytes;
        const std::int64_t to = pb::cache_row_element(a.cache, slot, h) * posenc::size_of(a.cache.dtype);
        std::memcpy(static_cast<unsigned char*>(a.cache.k) + to, static_cast<const unsigned char*>(a.k.data) + from,
                    static_cast<std::size_t>(row_bytes));
        std::memcpy(static_cast<unsigned char*>(a.cache.v) + to, static_cast<const unsigned char*>(a.v.data) + from,
                    static_cast<std::size_t>(row_bytes));
      }
    }
  };
  if (parts == 1) {
    copy(0);
  } else {
    workers.run(copy);
  }
}

/// One append row: verify on set 0 against append_reference, then time.
void run_append_case(const posenc::CpuEngine& engine, Workers& workers, AppendInputs& in, bool fused, pb::Row& row) {
  std::int64_t next = 0;
  const auto n = static_cast<std::int64_t>(in.sets.size());
  auto call = [&] {
    const auto i = static_cast<std::size_t>(next++ % n);
    if (fused) {
      engine.append(in.sets[i]);
    } else {
      engine.apply(in.rope[i]);
      scatter_kv(workers, in.sets[i]);
    }
  };
  const pb::CopyOut copy = [](void* to, const void* from, std::int64_t bytes) {
    std::memcpy(to, from, static_cast<std::size_t>(bytes));
  };
  row.verified = pb::verify_append(engine.spec(), in.sets[0], call, copy, [] {});
  row.note = std::string("cache ") + posenc::to_string(in.sets[0].cache.layout) + " " +
             std::to_string(in.plan.blocks) + "x" + std::to_string(in.plan.block_len) + " slots";
  time_calls(call, n, 0.2, row);
}

// ---- targets and output ----------------------------------------------------------------------------

std::vector<pb::TargetResult> evaluate_targets(const std::vector<pb::Row>& rows) {
  std::vector<pb::TargetResult> out;
  int cases = 0, bad = 0;
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_cpu") continue;
    ++cases;
    bad += (pb::verdict_ok(r.verified) && !r.verified.empty()) ? 0 : 1;
    // The targets are apply's in hf_compatible numerics: float32 >= 90%, float16 / bfloat16 >= 80%.
    if (r.t < 4096 || r.variant.rfind("append_", 0) == 0) continue;
    if (r.numerics != posenc::to_string(posenc::Numerics::hf_compatible)) continue;
    const double target = r.dtype == posenc::to_string(DType::f32) ? 0.90 : 0.80;
    out.push_back({r.variant + " " + r.dtype + " threads=" + std::to_string(r.threads) + " T=" + std::to_string(r.t) +
                       ": >= " + pb::percent(target) + " of the RMW floor",
                   pb::percent(r.ratio), std::isfinite(r.ratio) && r.ratio >= target});
  }
  if (cases > 0) {
    out.push_back({"every case verified against apply_reference / append_reference (" + std::to_string(cases) + " cases)",
                   bad == 0 ? std::string("all exact") : std::to_string(bad) + " bad", bad == 0});
  }
  return out;
}

std::string markdown(const std::string& card, const std::vector<Floor>& floors, const std::vector<pb::Row>& rows,
                     const std::vector<pb::TargetResult>& targets) {
  std::string s = "# posenc CPU benchmark: " + card + "\n\nFloor: in-place `x[i] = x[i]*a + b` over float32, bytes = "
                  "read + write, same thread count as the engine:";
  for (const Floor& f : floors)
    s += " " + std::to_string(f.threads) + " thread(s) " + pb::format_number(f.gbps, 1) + " GB/s (" +
         std::to_string(f.buffer_bytes >> 20) + " MiB, median of " + std::to_string(f.passes) + ");";
  s += "\n\n| variant | dtype | threads | T | us | GB/s | floor GB/s | share of floor | verified |\n"
       "|---|---|---:|---:|---:|---:|---:|---:|---|\n";
  for (const pb::Row& r : rows) {
    if (r.engine != "posenc_cpu") continue;
    s += "| " + r.variant + " | " + r.dtype + " | " + std::to_string(r.threads) + " | " + std::to_string(r.t) + " | " +
         pb::format_number(r.median_us, 1) + " | " + pb::format_number(r.gbps, 1) + " | " +
         pb::format_number(r.floor_gbps, 1) + " | " + pb::percent(r.ratio) + " | " + r.verified + " |\n";
  }
  return s + "\n" + pb::targets_markdown(targets);
}

struct Options : pb::CommonOptions {
  std::vector<int> threads;
  std::vector<posenc::Numerics> numerics{posenc::Numerics::hf_compatible};
  double floor_gib = 1.0;
};

void usage() {
  std::printf(
      "usage: posenc_bench_cpu [--quick] [--out DIR] [--filter A,B] [--tokens 1024,4096] [--threads 1,all]\n"
      "                        [--numerics N,M] [--floor-gib G] [--budget-s S] [--no-append]\n"
      "  --quick      T = 4096, float32 and bfloat16 only (append: paged_nhd only)\n"
      "  --out DIR    where bench_cpu.csv and bench_cpu.md go (default .)\n"
      "  --filter     keep cases whose 'variant dtype' label contains one of the words\n"
      "               (main_half_split main_interleaved float32 float16 bfloat16; the append rows are\n"
      "               append_{fused,ropecopy}_{contiguous,paged_nhd}: --filter append runs only those)\n"
      "  --tokens     token counts (default 1024,4096,16384)\n"
      "  --threads    thread counts, 'all' = every CPU this process may use (default 1,all)\n"
      "  --numerics   hf_compatible, hf_fp32_apply, accurate (default hf_compatible; the others' rows\n"
      "               are main_<pairing>_<numerics>, reported but not judged)\n"
      "  --floor-gib  floor buffer size in GiB, raised to 8x LLC when smaller (default 1)\n"
      "  --budget-s   start no new case after this many seconds; what ran is still written\n"
      "  --no-append  skip the append rows (CpuEngine::append against apply + a cache copy)\n");
}

Options parse_options(int argc, char** argv) {
  Options o;
  std::string threads = "1,all";
  pb::parse_args(argc, argv, o, usage, [&](const std::string& a, auto&& value) {
    if (a == "--threads") {
      threads = value();
    } else if (a == "--numerics") {
      o.numerics.clear();
      for (const std::string& name : pb::split_list(value())) {
        const auto* n = std::find_if(posenc::all_numerics.begin(), posenc::all_numerics.end(),
                                     [&](posenc::Numerics x) { return name == posenc::to_string(x); });
        if (n == posenc::all_numerics.end()) throw std::runtime_error("--numerics: unknown numerics " + name);
        o.numerics.push_back(*n);
      }
    } else if (a == "--floor-gib") {
      o.floor_gib = std::stod(value());
    } else {
      return false;
    }
    return true;
  });
  for (const std::string& t : pb::split_list(threads)) {
    const int n = t == "all" ? usable_cpus() : std::stoi(t);
    if (n < 1) throw std::runtime_error("--threads: " + t + " is not a thread count");
    if (std::find(o.threads.begin(), o.threads.end(), n) == o.threads.end()) o.threads.push_back(n);
  }
  if (o.tokens.empty()) o.tokens = o.quick ? std::vector<std::int64_t>{4096} : std::vector<std::int64_t>{1024, 4096, 16384};
  return o;
}

int run(const Options& opt) {
  const auto t_begin = clock_type::now();
  const std::string card = cpu_model();
  const std::int64_t llc = llc_bytes();
  const int fill_threads = usable_cpus();
  std::printf("CPU: %s, %d usable CPUs, LLC %lld MiB, kernel ISA flags: %s\n", card.c_str(), fill_threads,
              static_cast<long long>(llc >> 20), kernel_flags().c_str());
  // Other processes competing for cores or memory bandwidth make every figure below (floor and
  // engine alike) unreliable; say so where the numbers are read.
  std::string load_note;
  auto check_load = [&](const char* when) {
    const double busy = busy_cpus_elsewhere();
    if (busy > 0.25) {
      const std::string what = std::string(when) + ": other processes kept " + pb::format_number(busy, 1) + " CPUs busy";
      load_note += (load_note.empty() ? "" : "; ") + what;
      std::printf("WARNING: %s; CPU figures are not reliable\n", what.c_str());
    }
  };
  check_load("at the start");

  const auto floor_bytes = std::max<std::int64_t>(static_cast<std::int64_t>(opt.floor_gib * 1073741824.0), 8 * llc);
  std::vector<Floor> floors;
  std::vector<pb::Row> rows;
  for (int threads : opt.threads) {
    floors.push_back(measure_floor(threads, floor_bytes));
    const Floor& f = floors.back();
    std::printf("floor: %d thread(s): %.1f GB/s (%lld MiB float32 RMW, median of %d passes)\n", threads, f.gbps,
                static_cast<long long>(f.buffer_bytes >> 20), f.passes);
    pb::Row r;
    r.card = card;
    r.engine = "floor";
    r.variant = "floor_rmw_loop";
    r.dtype = "float32";
    r.threads = threads;
    r.bytes = 2.0 * static_cast<double>(f.buffer_bytes);
    r.bytes_whole = r.bytes;
    r.gbps = f.gbps;
    r.median_us = r.bytes / (f.gbps * 1e3);
    r.floor_gbps = f.gbps;
    r.floor_kind = "rmw_loop_f32";
    r.ratio = 1.0;
    r.verified = "n/a";
    rows.push_back(std::move(r));
  }

  // Every call reads from DRAM: the sets of one case cover at least 4x LLC (64 MiB at least).
  const std::int64_t working_set = std::max<std::int64_t>(4 * llc, std::int64_t{64} << 20);
  const std::vector<DType> dtypes = opt.quick ? std::vector<DType>{DType::f32, DType::bf16}
                                              : std::vector<DType>{DType::f32, DType::f16, DType::bf16};
  const Pairing pairings[] = {Pairing::half_split, Pairing::interleaved};
  std::printf("%-26s %-9s %7s %6s %10s %8s %7s  %s\n", "variant", "dtype", "threads", "T", "us", "GB/s", "share",
              "verified");
  bool verify_failed = false;
  int skipped = 0;
  auto out_of_time = [&] {
    return pb::stop_requested != 0 || (opt.budget_s > 0 && seconds_since(t_begin) > opt.budget_s);
  };
  // A row of the main shape; `fi` picks the thread count and its floor.
  auto make_row = [&](const std::string& variant, DType dtype, Pairing pairing, posenc::Numerics numerics,
                      std::int64_t t, std::size_t fi) {
    pb::Row row;
    row.card = card;
    row.engine = "posenc_cpu";
    row.variant = variant;
    row.dtype = posenc::to_string(dtype);
    row.pairing = posenc::to_string(pairing);
    row.numerics = posenc::to_string(numerics);
    row.hq = main_hq;
    row.hk = main_hk;
    row.d = main_d;
    row.r = main_d;
    row.t = t;
    row.threads = opt.threads[fi];
    row.bytes = 2.0 * static_cast<double>(t * (main_hq + main_hk) * main_d * posenc::size_of(dtype));
    row.bytes_whole = row.bytes;
    row.floor_gbps = floors[fi].gbps;
    row.floor_kind = "rmw_loop_f32";
    return row;
  };
  // Runs one case into `row` and records it; an exception becomes the row's error.
  auto record = [&](pb::Row row, const std::function<void(pb::Row&)>& body) {
    try {
      body(row);
    } catch (const std::exception& e) {
      row.verified = row.verified.empty() ? std::string("error: ") + e.what() : row.verified;
      row.note = std::string("error: ") + e.what();
    }
    verify_failed = verify_failed || !pb::verdict_ok(row.verified);
    std::printf("%-26s %-9s %7d %6lld %10s %8s %7s  %s\n", row.variant.c_str(), row.dtype.c_str(), row.threads,
                static_cast<long long>(row.t), pb::format_number(row.median_us, 1).c_str(),
                pb::format_number(row.gbps, 1).c_str(), pb::percent(row.ratio).c_str(), row.verified.c_str());
    std::fflush(stdout);
    rows.push_back(std::move(row));
  };
  // An engine, or the error that every row using it reports.
  std::string engine_error;
  auto make_engine = [&](Pairing pairing, posenc::Numerics numerics, int threads) {
    RopeSpec spec;
    spec.head_dim = main_d;
    spec.pairing = pairing;
    spec.numerics = numerics;
    engine_error.clear();
    try {
      return std::make_unique<posenc::CpuEngine>(spec, posenc::CpuOptions{threads});
    } catch (const std::exception& e) {
      engine_error = std::string("engine construction: ") + e.what();
      return std::unique_ptr<posenc::CpuEngine>();
    }
  };

  for (DType dtype : dtypes) {
    // One arena and one position table serve every case of this dtype (filled once: the cases
    // rotate the data in place, which keeps it random and finite).
    std::int64_t arena_bytes = 0, position_count = 0;
    for (std::int64_t t : opt.tokens) {
      const Layout l = layout_for(dtype, t, working_set);
      arena_bytes = std::max(arena_bytes, l.sets * l.set_stride);
      position_count = std::max(position_count, l.sets * t);
    }
    if (out_of_time()) {
      skipped += static_cast<int>(opt.threads.size() * std::size(pairings) * opt.numerics.size() * opt.tokens.size());
      continue;  // not even the arena fill
    }
    bool any = false;
    for (Pairing p : pairings)
      any = any || pb::matches_filter(std::string("main_") + posenc::to_string(p) + " " + posenc::to_string(dtype),
                                      opt.filters);
    if (!any) continue;
    HostBuffer arena(arena_bytes);
    parallel_fill(arena.data(), arena_bytes, dtype, fill_threads, 1234 + static_cast<std::uint64_t>(dtype));
    std::vector<std::int64_t> positions(static_cast<std::size_t>(position_count));
    pb::fill_positions(positions.data(), position_count, 99);

    for (std::size_t fi = 0; fi < opt.threads.size(); ++fi) {
      for (Pairing pairing : pairings) {
        for (posenc::Numerics numerics : opt.numerics) {
          const std::string variant =
              std::string("main_") + posenc::to_string(pairing) +
              (numerics == posenc::Numerics::hf_compatible ? "" : std::string("_") + posenc::to_string(numerics));
          if (!pb::matches_filter(variant + " " + posenc::to_string(dtype), opt.filters)) continue;
          const std::unique_ptr<posenc::CpuEngine> engine = make_engine(pairing, numerics, opt.threads[fi]);
          const std::string kernels = engine ? "; kernels=" + std::string(engine->kernel_build(dtype)) : "";
          for (std::int64_t t : opt.tokens) {
            if (out_of_time()) {
              ++skipped;
              continue;
            }
            record(make_row(variant, dtype, pairing, numerics, t, fi), [&](pb::Row& row) {
              if (!engine) throw std::runtime_error(engine_error);
              run_case(*engine, layout_for(dtype, t, working_set), dtype, arena.data(), positions.data(), row);
              row.note += kernels;
            });
          }
          // The same engine on two sets of incache_tokens tokens that stay in the core's caches:
          // its compute rate alone, against the same DRAM floor. Below the floor it says the
          // DRAM-resident rows above are bound by the arithmetic, not by memory (one thread only:
          // with all threads the sets would be shared out too thinly to mean anything).
          if (opt.threads[fi] == 1 && !out_of_time()) {
            pb::Row row = make_row(variant, dtype, pairing, numerics, incache_tokens, fi);
            row.engine = "posenc_cpu_incache";
            record(std::move(row), [&](pb::Row& r) {
              if (!engine) throw std::runtime_error(engine_error);
              run_case(*engine, layout_for(dtype, incache_tokens, 0), dtype, arena.data(), positions.data(), r);
              const double ns_per_head = 1e3 * r.median_us / static_cast<double>(incache_tokens * (main_hq + main_hk));
              r.note = "in cache: " + pb::format_number(ns_per_head, 2) + " ns per head; " + r.note + kernels;
            });
          }
        }
      }
    }
  }

  // The append sweep (bfloat16, half_split): per cache layout and T one set of inputs, both
  // methods at every thread count. --quick: paged_nhd only.
  const CacheLayout append_layouts[] = {CacheLayout::contiguous, CacheLayout::paged_nhd};
  for (CacheLayout layout : append_layouts) {
    if (!opt.append || (opt.quick && layout == CacheLayout::contiguous)) continue;
    std::vector<bool> methods;  // fused?
    for (bool fused : {true, false}) {
      const std::string variant = std::string(fused ? "append_fused_" : "append_ropecopy_") + posenc::to_string(layout);
      if (pb::matches_filter(variant + " bfloat16", opt.filters)) methods.push_back(fused);
    }
    for (std::int64_t t : opt.tokens) {
      if (methods.empty() || out_of_time()) {
        skipped += static_cast<int>(methods.size() * opt.threads.size());
        continue;
      }
      std::unique_ptr<AppendInputs> inputs;
      for (std::size_t fi = 0; fi < opt.threads.size(); ++fi) {
        const std::unique_ptr<posenc::CpuEngine> engine =
            make_engine(Pairing::half_split, posenc::Numerics::hf_compatible, opt.threads[fi]);
        Workers workers(opt.threads[fi]);
        for (bool fused : methods) {
          if (out_of_time()) {
            ++skipped;
            continue;
          }
          const std::string variant = std::string(fused ? "append_fused_" : "append_ropecopy_") + posenc::to_string(layout);
          pb::Row row = make_row(variant, DType::bf16, Pairing::half_split, posenc::Numerics::hf_compatible, t, fi);
          row.bytes = pb::append_floor_bytes(t, main_hq, main_hk, main_d, DType::bf16, posenc::CacheDType::bf16);
          row.bytes_whole = row.bytes;
          record(std::move(row), [&](pb::Row& r) {
            if (!engine) throw std::runtime_error(engine_error);
            if (!inputs) inputs = std::make_unique<AppendInputs>(make_append_inputs(layout, t, working_set, fill_threads));
            run_append_case(*engine, workers, *inputs, fused, r);
          });
        }
      }
    }
  }

  if (skipped > 0) {
    std::printf("WARNING: %s: %d cases not run\n", pb::stop_requested != 0 ? "stopped by a signal" : "time budget reached",
                skipped);
  }
  check_load("at the end");
  if (!load_note.empty()) {
    for (pb::Row& r : rows)
      if (r.engine == "floor") r.note = load_note;
  }
  const std::vector<pb::TargetResult> targets = evaluate_targets(rows);
  const std::filesystem::path out(opt.out);
  pb::write_text_file(out / "bench_cpu.csv", pb::csv_text(rows));
  std::string md = markdown(card, floors, rows, targets);
  if (!load_note.empty()) md += "\n**Warning:** " + load_note + "; these CPU figures are not reliable.\n";
  pb::write_text_file(out / "bench_cpu.md", md);
  pb::print_targets(targets);
  std::printf("wrote %s and %s (%.0f s)\n", (out / "bench_cpu.csv").c_str(), (out / "bench_cpu.md").c_str(),
              seconds_since(t_begin));
  return verify_failed ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  pb::install_stop_handler();
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "posenc_bench_cpu: %s\n", e.what());
    return 1;
  }
}
