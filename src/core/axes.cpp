// pair_axes: which inverse frequency and which position stream each rotation pair uses (1-D, ChatGLM-6B 2-D, M-RoPE).
#include <cstdint>
#include <string>

#include "posenc/error.hpp"
#include "posenc/rope.hpp"

namespace posenc {

PairAxes pair_axes(const RopeSpec& spec, const FrequencyTable& table) {
  const std::int64_t half = spec.rotary() / 2;               // H: pairs of the window
  const std::int64_t freqs = spec.frequency_dim() / 2;       // entries compute_frequencies returns
  if (static_cast<std::int64_t>(table.inv_freq.size()) != freqs) {
    throw Error(ErrorKind::invalid_argument,
                "pair_axes: frequency table has " + std::to_string(table.inv_freq.size()) +
                    " entries, expected frequency_dim() / 2 = " + std::to_string(freqs));
  }
  PairAxes axes;
  axes.inv_freq.resize(static_cast<std::size_t>(half));
  axes.stream.assign(static_cast<std::size_t>(half), 0);
  const auto at = [](std::int64_t i) { return static_cast<std::size_t>(i); };

  if (spec.pairing == Pairing::half_split_2d) {
    // Two RoPEs of R/2 dims side by side: the same R/4 frequencies, the second half by stream 1.
    for (std::int64_t i = 0; i < half; ++i) {
      const bool second = i >= freqs;
      axes.inv_freq[at(i)] = table.inv_freq[at(second ? i - freqs : i)];
      axes.stream[at(i)] = second ? 1 : 0;
    }
    return axes;
  }

  for (std::int64_t i = 0; i < half; ++i) axes.inv_freq[at(i)] = table.inv_freq[at(i)];
  const std::vector<std::int64_t>& section = spec.mrope_section;
  if (section.empty()) return axes;
  if (spec.mrope_interleaved) {
    // Qwen3-VL: t everywhere, then h on i % 3 == 1 below 3*m1, w on i % 3 == 2 below 3*m2.
    const std::int64_t m1 = section.size() > 1 ? section[1] : 0;
    const std::int64_t m2 = section.size() > 2 ? section[2] : 0;
    for (std::int64_t i = 0; i < half; ++i) {
      if (i % 3 == 1 && i < 3 * m1) axes.stream[at(i)] = 1;
      if (i % 3 == 2 && i < 3 * m2) axes.stream[at(i)] = 2;
    }
    return axes;
  }
  // Contiguous sections: pairs [0, m0) stream 0, the next m1 stream 1, ...; RopeSpec::validate
  // guarantees the sections sum to H, the clamp only keeps a bad spec from writing out of range.
  std::int64_t i = 0;
  for (std::size_t s = 0; s < section.size(); ++s) {
    for (std::int64_t n = 0; n < section[s] && i < half; ++n, ++i) axes.stream[at(i)] = static_cast<std::uint8_t>(s);
  }
  return axes;
}

}  // namespace posenc
