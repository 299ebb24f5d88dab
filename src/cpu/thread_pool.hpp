// A small persistent thread pool for the CPU engine: workers live as long as the engine, a run allocates nothing.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "posenc/error.hpp"

namespace posenc::cpu_detail {

/// Runs a range of work items [0, n) over `threads` threads: threads - 1 workers started once at
/// construction, plus the calling thread, which works too. Work is handed out in chunks through an
/// atomic counter, so a slow or late worker does not hold the others back. A run passes a plain
/// function pointer and a context pointer: nothing is allocated per run.
class ThreadPool {
 public:
  /// `fn(context, begin, end)` processes items [begin, end). It must not throw.
  using Task = void (*)(const void* context, std::int64_t begin, std::int64_t end) noexcept;

  /// Starts threads - 1 workers. When one cannot be started (no memory for its bookkeeping: the
  /// std::bad_alloc propagates; the system refuses a thread: posenc::Error(unsupported)), the
  /// workers already running are stopped and joined first: a joinable std::thread destroyed by
  /// the unwinding would call std::terminate.
  explicit ThreadPool(int threads) {
    const int workers = std::max(threads, 1) - 1;
    try {
      workers_.reserve(static_cast<std::size_t>(workers));
      for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error& e) {
      stop();
      throw Error(ErrorKind::unsupported, "CpuEngine: cannot start worker thread " + std::to_string(workers_.size() + 1) +
                                              " of " + std::to_string(workers) + " (CpuOptions.threads " +
                                              std::to_string(threads) + "): " + e.what());
    } catch (...) {
      stop();
      throw;
    }
  }

  ~ThreadPool() { stop(); }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  /// Threads a run uses, the caller included.
  int threads() const noexcept { return static_cast<int>(workers_.size()) + 1; }

  /// Runs `task` over [0, n) in chunks of `chunk` items and returns when all are done. Returns
  /// false without running anything when another run is in progress (apply is const and may be
  /// called from several threads at once; the caller then does the work itself).
  ///
  /// The caller never waits for a worker that has not started: once it has claimed the last
  /// chunk it closes the run, waits only for the workers inside it, and a worker that wakes late
  /// finds the run closed and goes back to sleep. On an oversubscribed machine a descheduled
  /// worker therefore costs nothing but the chunks it did not take.
  bool try_run(std::int64_t n, std::int64_t chunk, Task task, const void* context) noexcept {
    std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
    if (!run_lock.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = task;
      context_ = context;
      items_ = n;
      chunk_ = std::max<std::int64_t>(chunk, 1);
      next_.store(0, std::memory_order_relaxed);
      open_ = true;
      ++generation_;
    }
    wake_.notify_all();
    work();
    // Every chunk is claimed. The job lives in the caller's frame: close the run and wait for the
    // workers still inside it.
    std::unique_lock<std::mutex> lock(mutex_);
    open_ = false;
    done_.wait(lock, [this] { return inside_ == 0; });
    return true;
  }

 private:
  void work() noexcept {
    for (;;) {
      const std::int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
      if (begin >= items_) return;
      task_(context_, begin, std::min(begin + chunk_, items_));
    }
  }

  /// Stops and joins every started worker.
  void stop() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
  }

  void worker_loop() noexcept {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (!open_) continue;  // woke after the run was over
        ++inside_;
      }
      work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--inside_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;  // one run at a time
  std::mutex mutex_;      // guards the job fields, generation_, inside_, open_ and stop_
  std::condition_variable wake_;
  std::condition_variable done_;
  std::uint64_t generation_ = 0;
  int inside_ = 0;     // workers inside the current run
  bool open_ = false;  // the current run still admits workers
  bool stop_ = false;
  Task task_ = nullptr;
  const void* context_ = nullptr;
  std::int64_t items_ = 0;
  std::int64_t chunk_ = 1;
  std::atomic<std::int64_t> next_{0};
  std::vector<std::thread> workers_;
};

}  // namespace posenc::cpu_detail
