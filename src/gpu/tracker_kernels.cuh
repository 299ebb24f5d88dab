// Device code of the GPU position tracker: one block turns a step's (slot, new_tokens) entries into positions (no host code).
//
// Phases, separated by block barriers: (1) validate every entry (slot range, first occurrence of
// its slot, new_tokens, the range of positions it will produce); (2) exclusive prefix sum of the
// valid entries' token counts into shared memory; (3) every output token finds its entry by
// binary search over the offsets and writes its positions; (4) lengths advance. The rule is
// glm::PositionTracker's (include/posenc/glm.hpp); tests compare the two step by step.
#pragma once

#include <climits>
#include <cstdint>

#include "gpu/tracker_params.hpp"
#include "gpu/vendor.hpp"

namespace posenc::gpu::detail {

__device__ __forceinline__ void record_tracker_fault(unsigned long long* fault, std::int64_t entry,
                                                     TrackerFault kind, std::int64_t value) {
  constexpr std::int64_t lo = -2147483647LL - 1;
  constexpr std::int64_t hi = 2147483647LL;
  const std::int64_t clamped = value < lo ? lo : (value > hi ? hi : value);
  const auto biased = static_cast<unsigned long long>(
      static_cast<std::uint32_t>(static_cast<std::int32_t>(clamped)) ^ 0x80000000u);
  const unsigned long long key = (static_cast<unsigned long long>(entry) << 40) |
                                 (static_cast<unsigned long long>(kind) << 32) | biased;
  atomicMin(fault, key);
}

/// Position and block position of token n of a sequence (glm.hpp SequenceState's rule).
__device__ __forceinline__ void tracker_position(std::int64_t n, std::int64_t rope_delta,
                                                 std::int64_t pin_from, std::int64_t pin_value,
                                                 std::int64_t& position, std::int64_t& block) {
  const bool pinned = n >= pin_from;
  position = pinned ? pin_value : n + rope_delta;
  block = pinned ? n - pin_from + 1 : 0;
}

__global__ void __launch_bounds__(tracker_block_threads) tracker_step_kernel(const TrackerStepParams p) {
  __shared__ std::int32_t offsets[tracker_max_entries + 1];
  __shared__ std::int64_t thread_sums[tracker_block_threads];
  const int tid = static_cast<int>(threadIdx.x);
  const int entries = static_cast<int>(p.entries);

  // (1a) the first occurrence of each slot claims it.
  for (int e = tid; e < entries; e += tracker_block_threads) {
    const std::int64_t slot = p.slots[e];
    if (slot >= 0 && slot < p.slot_count) atomicMin(&p.first_entry[slot], e);
  }
  __syncthreads();

  // (1b) validity and token count per entry; counts parked in `offsets` until the scan.
  for (int e = tid; e < entries; e += tracker_block_threads) {
    const std::int64_t slot = p.slots[e];
    const std::int64_t count = p.new_tokens[e];
    std::int32_t valid_count = 0;
    if (slot < 0 || slot >= p.slot_count) {
      record_tracker_fault(p.fault, e, TrackerFault::bad_slot, slot);
    } else if (p.first_entry[slot] != e) {
      record_tracker_fault(p.fault, e, TrackerFault::repeated_slot, slot);
    } else if (count < 1) {
      record_tracker_fault(p.fault, e, TrackerFault::bad_new_tokens, count);
    } else {
      // Before pin_from positions grow with n; from pin_from on the position is pin_value and the
      // block grows. The first offending value of each part is found from its ends.
      const std::int64_t first = p.lengths[slot];
      const std::int64_t last = first + count - 1;
      const std::int64_t rd = p.rope_deltas[slot], pf = p.pin_froms[slot], pv = p.pin_values[slot];
      const std::int64_t limit = p.position_limit;
      std::int64_t bad = 0;
      bool found = false;
      if (first < pf) {  // unpinned tokens [first, min(last, pf - 1)]: positions first+rd, ...
        const std::int64_t end = (last < pf - 1 ? last : pf - 1) + rd;
        if (first + rd < 0) {
          bad = first + rd;
          found = true;
        } else if (end >= limit) {
          bad = first + rd > limit ? first + rd : limit;
          found = true;
        }
      }
      if (!found && last >= pf) {  // pinned tokens: position pv, blocks b0, b0+1, ...
        const std::int64_t b0 = (first > pf ? first : pf) - pf + 1;
        const std::int64_t b1 = last - pf + 1;
        if (pv < 0 || pv >= limit) {
          bad = pv;
          found = true;
        } else if (p.streams == 2 && b1 >= limit) {
          bad = b0 > limit ? b0 : limit;
          found = true;
        }
      }
      if (found) {
        record_tracker_fault(p.fault, e, TrackerFault::position_range, bad);
      } else {
        valid_count = static_cast<std::int32_t>(count);
      }
    }
    offsets[e] = valid_count;
  }
  __syncthreads();

  // (2) exclusive scan: each thread sums a contiguous chunk, the chunk sums are scanned.
  const int chunk = (entries + tracker_block_threads - 1) / tracker_block_threads;
  const int begin = tid * chunk;
  const int end = begin + chunk < entries ? begin + chunk : entries;
  std::int64_t local = 0;
  for (int e = begin; e < end; ++e) local += offsets[e];
  thread_sums[tid] = local;
  __syncthreads();
  for (int stride = 1; stride < tracker_block_threads; stride *= 2) {
    const std::int64_t add = tid >= stride ? thread_sums[tid - stride] : 0;
    __syncthreads();
    thread_sums[tid] += add;
    __syncthreads();
  }
  std::int64_t running = thread_sums[tid] - local;  // exclusive prefix of this chunk
  for (int e = begin; e < end; ++e) {
    const std::int32_t c = offsets[e];
    offsets[e] = static_cast<std::int32_t>(running);
    running += c;
  }
  const std::int64_t total = thread_sums[tracker_block_threads - 1];
  if (tid == 0) offsets[entries] = static_cast<std::int32_t>(total < INT_MAX ? total : INT_MAX);
  __syncthreads();

  const bool fits = total <= p.max_tokens;
  if (tid == 0) {
    if (!fits) {
      record_tracker_fault(p.fault, entries, TrackerFault::too_many_tokens, total);
    } else if (total != p.planned_tokens) {
      record_tracker_fault(p.fault, entries, TrackerFault::planned_mismatch, total);
    }
  }

  // (3) every output token: its entry by binary search (entries with no tokens have equal
  // offsets and are never chosen), then its positions.
  const std::int64_t writable = fits ? (total < p.planned_tokens ? total : p.planned_tokens) : 0;
  for (std::int64_t t = tid; t < writable; t += tracker_block_threads) {
    int lo = 0;
    int hi = entries - 1;
    while (lo < hi) {  // last e with offsets[e] <= t
      const int mid = (lo + hi + 1) / 2;
      if (offsets[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const std::int64_t slot = p.slots[lo];
    const std::int64_t n = p.lengths[slot] + (t - offsets[lo]);
    std::int64_t pos = 0, blk = 0;
    tracker_position(n, p.rope_deltas[slot], p.pin_froms[slot], p.pin_values[slot], pos, blk);
    p.out[t] = pos;
    if (p.streams == 2) p.out[p.max_tokens + t] = blk;
    if (p.streams == 3) {
      p.out[p.max_tokens + t] = pos;
      p.out[2 * p.max_tokens + t] = pos;
    }
  }
  __syncthreads();

  // (4) lengths advance by what was written; claims are released for the next step.
  for (int e = tid; e < entries; e += tracker_block_threads) {
    const std::int64_t slot = p.slots[e];
    if (slot < 0 || slot >= p.slot_count) continue;
    const std::int32_t count = offsets[e + 1] - offsets[e];
    if (writable == total && count > 0) p.lengths[slot] += count;
    p.first_entry[slot] = INT32_MAX;
  }
}

}  // namespace posenc::gpu::detail
