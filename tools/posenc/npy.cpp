// .npy codec for the CLI: a strict parser of the header dict and a writer of NumPy's own layout.
#include "npy.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string_view>

#include "output.hpp"
#include "posenc/error.hpp"

namespace posenc::cli {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the .npy codec copies little-endian data as is");

constexpr std::string_view npy_magic{"\x93NUMPY", 6};
// NumPy pads magic + version + length + header to a multiple of 64 bytes (format.py ARRAY_ALIGN).
constexpr std::size_t npy_alignment = 64;

[[noreturn]] void fail(const std::string& label, const std::string& what) {
  throw Error(ErrorKind::io, label + ": " + what);
}

/// Parses the Python dict literal of a .npy header, e.g.
/// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& label) : text_(text), label_(label) {}

  struct Header {
    std::string descr;
    bool fortran_order = false;
    std::vector<std::int64_t> shape;
  };

  Header parse() {
    Header header;
    bool have_descr = false;
    bool have_order = false;
    bool have_shape = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() == '[') error("structured dtype (a list descr) is not supported");
        header.descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        header.fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape") {
        header.shape = parse_shape();
        have_shape = true;
      } else {
        error("unexpected header key '" + message_excerpt(key) + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') error("expected ',' or '}' after the value of '" + message_excerpt(key) + "'");
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) error("unexpected text after the header dict");
    if (!have_descr) error("header has no 'descr'");
    if (!have_order) error("header has no 'fortran_order'");
    if (!have_shape) error("header has no 'shape'");
    return header;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(label_, "malformed .npy header (" + what + ") in \"" + message_excerpt(text_) + "\"");
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }

  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') error("expected a quoted string");
    ++pos_;
    const std::size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) error("unterminated string");
    std::string s(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }

  bool parse_bool() {
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    error("fortran_order must be True or False");
  }

  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      if (peek() == '-') error("negative dimension in shape");
      if (peek() < '0' || peek() > '9') error("shape must be a tuple of integers");
      std::int64_t value = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int digit = peek() - '0';
        // Every dimension is bounded, also in an array with no elements: loops over one
        // dimension must not run for ages on a file of a few bytes.
        if (value > (max_npy_elements - digit) / 10) {
          error("a dimension exceeds the limit of " + std::to_string(max_npy_elements) + " (max_npy_elements)");
        }
        value = value * 10 + digit;
        ++pos_;
      }
      if (static_cast<std::int64_t>(shape.size()) == max_npy_dims) {
        error("more than " + std::to_string(max_npy_dims) + " dimensions (max_npy_dims)");
      }
      if (peek() == 'L') ++pos_;  // Python 2 long literal, written by old NumPy
      shape.push_back(value);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')') error("expected ',' or ')' in shape");
    }
    ++pos_;
    return shape;
  }

  std::string_view text_;
  const std::string& label_;
  std::size_t pos_ = 0;
};

NpyType type_from_descr(const std::string& descr, const std::string& label) {
  if (descr.size() != 3) {
    fail(label, "unsupported dtype '" + message_excerpt(descr) +
                    "' (supported: <f4, <f2, <u2 or <V2 for bfloat16 bits, <i4, <i8)");
  }
  const char order = descr[0];
  const std::string_view kind(descr.data() + 1, 2);
  if (order == '>') {
    fail(label, "big-endian dtype '" + descr +
                    "' is not supported; save it little-endian (a.astype(a.dtype.newbyteorder('<')))");
  }
  // '=' is native order, which the static_assert above pins to little-endian; NumPy writes '|' for
  // types without a byte order (void, one-byte types).
  if (order != '<' && order != '=' && order != '|') {
    fail(label, "unknown byte order in dtype '" + message_excerpt(descr) + "'");
  }
  if (kind == "f4") return NpyType::f32;
  if (kind == "f2") return NpyType::f16;
  if (kind == "V2") return NpyType::bf16;
  if (kind == "u2") return NpyType::u16;
  if (kind == "i4") return NpyType::i32;
  if (kind == "i8") return NpyType::i64;
  fail(label, "unsupported dtype '" + message_excerpt(descr) +
                  "' (supported: <f4, <f2, <u2 or <V2 for bfloat16 bits, <i4, <i8)");
}

std::string shape_text(std::span<const std::int64_t> shape) {
  std::string s = "(";
  for (const std::int64_t d : shape) s += std::to_string(d) + ", ";
  if (shape.size() > 1) s.resize(s.size() - 2);  // Python writes (n,) for one dimension
  if (shape.size() == 1) s.pop_back();
  return s + ")";
}

/// Product of the dimensions times `item`, or nothing when it does not fit in 64 bits.
std::optional<std::int64_t> checked_bytes(std::span<const std::int64_t> shape, std::int64_t item) {
  if (std::any_of(shape.begin(), shape.end(), [](std::int64_t d) { return d < 0; })) return std::nullopt;
  // A zero dimension makes the product 0 whatever the others: the decoder (item 1) and the
  // encoder (item 2 to 8) then agree on every shape (a fuzzed shape whose partial product
  // overflowed only with the item size once decoded and could not be encoded back).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  std::int64_t total = item;
  for (const std::int64_t d : shape) {
    if (total > std::numeric_limits<std::int64_t>::max() / d) return std::nullopt;
    total *= d;
  }
  return total;
}

std::uint32_t read_le(std::span<const std::byte> bytes, std::size_t at, std::size_t width) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < width; ++i) {
    v |= static_cast<std::uint32_t>(bytes[at + i]) << (8 * i);
  }
  return v;
}

}  // namespace

const char* npy_descr(NpyType t) noexcept {
  switch (t) {
    case NpyType::f32:
      return "<f4";
    case NpyType::f16:
      return "<f2";
    case NpyType::bf16:
    case NpyType::u16:
      return "<u2";
    case NpyType::i32:
      return "<i4";
    case NpyType::i64:
      return "<i8";
  }
  return "?";
}

std::int64_t NpyArray::count() const noexcept {
  // (An accepted shape's product fits int64; a zero dimension ends it before any other overflows.)
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return n;
}

namespace {

/// magic + major + minor, then the header length (2 bytes in version 1, 4 in versions 2 and 3).
constexpr std::size_t npy_prefix = 8;
constexpr std::size_t npy_longest_prefix = npy_prefix + 4;

/// What a .npy header says: the array's type and shape, where its data starts and how long it is.
struct NpyLayout {
  NpyType type = NpyType::f32;
  std::vector<std::int64_t> shape;
  std::string descr;
  std::size_t data_offset = 0;
  std::int64_t data_bytes = 0;
};

/// The header length a file's first bytes declare (at most npy_longest_prefix of them are read),
/// after checking magic, version and the header-size limit; sets `length_width`.
std::size_t declared_header_length(std::span<const std::byte> bytes, const std::string& label,
                                   std::size_t& length_width) {
  if (bytes.size() < npy_prefix || std::memcmp(bytes.data(), npy_magic.data(), npy_magic.size()) != 0) {
    fail(label, "not a .npy file (the magic string \\x93NUMPY is missing)");
  }
  const auto major = static_cast<unsigned>(bytes[6]);
  const auto minor = static_cast<unsigned>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    fail(label, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                    " (supported: 1.0, 2.0, 3.0)");
  }
  // Version 1 stores the header length in 2 bytes, versions 2 and 3 in 4 (3 allows UTF-8 text).
  length_width = major == 1 ? 2 : 4;
  if (bytes.size() < npy_prefix + length_width) fail(label, "truncated .npy header");
  const std::size_t header_length = read_le(bytes, npy_prefix, length_width);
  if (header_length > static_cast<std::size_t>(max_npy_header_bytes)) {
    fail(label, "the .npy header declares " + std::to_string(header_length) + " bytes, over the limit of " +
                    std::to_string(max_npy_header_bytes) + " (max_npy_header_bytes, as NumPy's np.load)");
  }
  return header_length;
}

/// Parses the header in `bytes` (the file's first bytes, holding at least the whole header).
NpyLayout parse_layout(std::span<const std::byte> bytes, const std::string& label) {
  std::size_t length_width = 0;
  const std::size_t header_length = declared_header_length(bytes, label, length_width);
  NpyLayout layout;
  layout.data_offset = npy_prefix + length_width + header_length;
  if (bytes.size() < layout.data_offset) {
    fail(label, "truncated .npy header: it declares " + std::to_string(header_length) + " bytes, the file has " +
                    std::to_string(bytes.size() - npy_prefix - length_width));
  }
  const std::string_view header_text(reinterpret_cast<const char*>(bytes.data()) + npy_prefix + length_width,
                                     header_length);
  const HeaderParser::Header header = HeaderParser(header_text, label).parse();
  if (header.fortran_order) {
    fail(label, "fortran_order is True; posenc reads C-order arrays only "
                "(save np.ascontiguousarray(a) instead)");
  }
  layout.type = type_from_descr(header.descr, label);
  layout.shape = header.shape;
  layout.descr = header.descr;
  const std::optional<std::int64_t> elements = checked_bytes(layout.shape, 1);
  if (!elements || *elements > max_npy_elements) {
    fail(label, "shape " + shape_text(layout.shape) + " has more than " + std::to_string(max_npy_elements) +
                    " elements (max_npy_elements)");
  }
  layout.data_bytes = *elements * npy_item_size(layout.type);
  return layout;
}

/// The data after the header must be exactly what the shape needs.
void check_data_size(const NpyLayout& layout, std::uintmax_t available, const std::string& label) {
  const auto expected = static_cast<std::uintmax_t>(layout.data_bytes);
  if (available < expected) {
    fail(label, "truncated data: shape " + shape_text(layout.shape) + " of " + layout.descr + " needs " +
                    std::to_string(expected) + " bytes, the file has " + std::to_string(available));
  }
  if (available > expected) {
    fail(label, std::to_string(available - expected) + " unexpected bytes after the data of shape " +
                    shape_text(layout.shape));
  }
}

}  // namespace

NpyArray decode_npy(std::span<const std::byte> bytes, const std::string& label) {
  const NpyLayout layout = parse_layout(bytes, label);
  check_data_size(layout, bytes.size() - layout.data_offset, label);
  NpyArray array;
  array.type = layout.type;
  array.shape = layout.shape;
  array.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(layout.data_offset), bytes.end());
  return array;
}

namespace {

void check_encodable(NpyType type, std::span<const std::int64_t> shape, std::span<const std::byte> data) {
  const std::optional<std::int64_t> expected = checked_bytes(shape, npy_item_size(type));
  if (!expected || static_cast<std::size_t>(*expected) != data.size()) {
    throw Error(ErrorKind::invalid_argument,
                "encode_npy: shape " + shape_text(shape) + " of " + npy_descr(type) + " needs " +
                    (expected ? std::to_string(*expected) : std::string("too many")) +
                    " bytes, got " + std::to_string(data.size()));
  }
}

}  // namespace

std::vector<std::byte> encode_npy_header(NpyType type, std::span<const std::int64_t> shape) {
  std::string header = std::string("{'descr': '") + npy_descr(type) +
                       "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Version 1 when the padded header fits its 16-bit length, else version 2.
  const bool v1 = header.size() + 1 + 10 <= 65535;
  const std::size_t prefix = v1 ? 10 : 12;
  const std::size_t total = (prefix + header.size() + 1 + npy_alignment - 1) / npy_alignment * npy_alignment;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');

  std::vector<std::byte> out;
  out.reserve(total);
  for (const char c : npy_magic) out.push_back(static_cast<std::byte>(c));
  out.push_back(std::byte{static_cast<unsigned char>(v1 ? 1 : 2)});
  out.push_back(std::byte{0});
  const std::size_t length = header.size();
  for (std::size_t i = 0; i < (v1 ? 2u : 4u); ++i) {
    out.push_back(static_cast<std::byte>((length >> (8 * i)) & 0xffu));
  }
  for (const char c : header) out.push_back(static_cast<std::byte>(c));
  return out;
}

std::vector<std::byte> encode_npy(NpyType type, std::span<const std::int64_t> shape,
                                  std::span<const std::byte> data) {
  check_encodable(type, shape, data);
  std::vector<std::byte> out = encode_npy_header(type, shape);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading: " + std::string(std::strerror(errno)));
  const auto read = [&](std::vector<std::byte>& into, std::size_t at, std::size_t count) {
    into.resize(at + count);
    in.read(reinterpret_cast<char*>(into.data() + at), static_cast<std::streamsize>(count));
    const auto got = static_cast<std::size_t>(in.gcount());
    into.resize(at + got);
    if (in.bad()) fail(path, "read error");
    return got == count;
  };
  // The header first, so that its limits and the data size are checked before anything large is
  // read or allocated.
  std::vector<std::byte> head;
  read(head, 0, npy_longest_prefix);
  std::size_t length_width = 0;
  const std::size_t header_length = declared_header_length(head, path, length_width);
  head.resize(npy_prefix + length_width);  // the version 1 prefix is shorter than what was read
  in.clear();
  in.seekg(static_cast<std::streamoff>(head.size()));
  read(head, head.size(), header_length);
  const NpyLayout layout = parse_layout(head, path);

  in.clear();
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) fail(path, "cannot tell the file's size");
  check_data_size(layout, static_cast<std::uintmax_t>(end) - layout.data_offset, path);

  NpyArray array;
  array.type = layout.type;
  array.shape = layout.shape;
  in.seekg(static_cast<std::streamoff>(layout.data_offset));
  if (!read(array.data, 0, static_cast<std::size_t>(layout.data_bytes))) {
    fail(path, "the file shrank while it was read");
  }
  return array;
}

void write_npy(const std::string& path, NpyType type, std::span<const std::int64_t> shape,
               std::span<const std::byte> data) {
  check_encodable(type, shape, data);
  const std::vector<std::byte> header = encode_npy_header(type, shape);
  OutputFiles output;
  output.stage(path, {header, data});
  output.commit();
}

}  // namespace posenc::cli
