// The CLI's .npy codec: round trips for every dtype, header variants NumPy writes, and clear errors for bad files.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "npy.hpp"
#include "posenc/error.hpp"

namespace posenc::cli {
namespace {

std::vector<std::byte> to_bytes(const std::string& s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

/// A .npy image written by hand: magic, version major.0, header length (2 bytes for v1, 4
/// otherwise), the header text as given, then `data`.
std::vector<std::byte> handmade(int major, const std::string& header, const std::vector<std::byte>& data) {
  std::string s("\x93NUMPY", 6);
  s += static_cast<char>(major);
  s += '\0';
  const std::size_t width = major == 1 ? 2 : 4;
  for (std::size_t i = 0; i < width; ++i) s += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  s += header;
  std::vector<std::byte> out = to_bytes(s);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<std::byte> zeros(std::size_t n) { return std::vector<std::byte>(n, std::byte{0}); }

/// Expects decode to fail with posenc::Error(io) whose message names `label` and contains `needle`.
void expect_decode_error(const std::vector<std::byte>& bytes, const std::string& needle) {
  const std::string label = "dump/q.npy";
  try {
    decode_npy(bytes, label);
    ADD_FAILURE() << "decode_npy accepted a file it should reject (expected: " << needle << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::io) << e.what();
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(label + ": ", 0), 0u) << "message does not start with the file name: " << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "message lacks '" << needle << "': " << what;
  }
}

struct TypeCase {
  NpyType type;
  NpyType read_back;  // bf16 is written as '<u2' and so comes back as u16 bits
  const char* descr;
};

class NpyRoundTrip : public ::testing::TestWithParam<TypeCase> {};

TEST_P(NpyRoundTrip, EveryShapeComesBackBitExact) {
  const TypeCase c = GetParam();
  const std::vector<std::vector<std::int64_t>> shapes = {{}, {5}, {2, 3, 4}, {3, 0, 2}, {1, 7}};
  for (const auto& shape : shapes) {
    std::int64_t n = 1;
    for (const std::int64_t d : shape) n *= d;
    std::vector<std::byte> data(static_cast<std::size_t>(n * npy_item_size(c.type)));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>((i * 37 + 11) & 0xff);

    const std::vector<std::byte> file = encode_npy(c.type, shape, data);
    const std::size_t header_end = file.size() - data.size();
    EXPECT_EQ(header_end % 64, 0u) << "NumPy aligns the data to 64 bytes";
    EXPECT_EQ(static_cast<char>(file[header_end - 1]), '\n');
    const std::string header(reinterpret_cast<const char*>(file.data()) + 10, header_end - 10);
    EXPECT_NE(header.find(std::string("'descr': '") + c.descr + "'"), std::string::npos) << header;

    const NpyArray back = decode_npy(file, "roundtrip.npy");
    EXPECT_EQ(back.type, c.read_back);
    EXPECT_EQ(back.shape, shape);
    EXPECT_EQ(back.count(), n);
    EXPECT_TRUE(back.data == data) << "data differs for descr " << c.descr;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, NpyRoundTrip,
                         ::testing::Values(TypeCase{NpyType::f32, NpyType::f32, "<f4"},
                                           TypeCase{NpyType::f16, NpyType::f16, "<f2"},
                                           TypeCase{NpyType::bf16, NpyType::u16, "<u2"},
                                           TypeCase{NpyType::u16, NpyType::u16, "<u2"},
                                           TypeCase{NpyType::i32, NpyType::i32, "<i4"},
                                           TypeCase{NpyType::i64, NpyType::i64, "<i8"}));

TEST(Npy, OneDimensionalShapeIsWrittenWithPythonTrailingComma) {
  const std::vector<std::int64_t> shape = {3};
  const std::vector<std::byte> file = encode_npy(NpyType::i32, shape, zeros(12));
  const std::string text(reinterpret_cast<const char*>(file.data()), file.size());
  EXPECT_NE(text.find("'shape': (3,)"), std::string::npos) << text;
  EXPECT_NE(text.find("'fortran_order': False"), std::string::npos) << text;
}

TEST(Npy, FileRoundTripThroughDisk) {
  const auto path = (std::filesystem::temp_directory_path() / "posenc_test_npy_roundtrip.npy").string();
  const std::vector<std::int64_t> shape = {2, 2};
  const std::vector<float> values = {1.0f, -2.5f, 0x1p-20f, 3.0e38f};
  std::vector<std::byte> data(sizeof(float) * values.size());
  std::memcpy(data.data(), values.data(), data.size());
  write_npy(path, NpyType::f32, shape, data);
  const NpyArray back = read_npy(path);
  std::filesystem::remove(path);
  EXPECT_EQ(back.type, NpyType::f32);
  EXPECT_EQ(back.shape, shape);
  EXPECT_TRUE(back.data == data);
}

TEST(Npy, ReadsVersion2And3Headers) {
  for (const int major : {2, 3}) {
    const NpyArray a = decode_npy(
        handmade(major, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }\n", zeros(8)),
        "v.npy");
    EXPECT_EQ(a.type, NpyType::f16) << "version " << major;
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 2})) << "version " << major;
  }
}

TEST(Npy, WritesVersion2WhenTheHeaderOutgrowsVersion1) {
  const std::vector<std::int64_t> shape(22000, 1);  // "1, " x 22000 > 65535 header bytes
  const std::vector<std::byte> file = encode_npy(NpyType::f32, shape, zeros(4));
  EXPECT_EQ(static_cast<int>(file[6]), 2);
  // Such a header is over the reader's limits (as over NumPy's own np.load default).
  expect_decode_error(file, "over the limit of 10000 (max_npy_header_bytes");
}

// Regression (issue 17, items 5 and 7): a zero-size shape with a huge first dimension made
// `check --fixture` loop for minutes, and malformed headers were echoed raw and whole.
TEST(Npy, HeaderSizeRankAndElementLimitsAreNamed) {
  const std::string big(10001 - 2, ' ');
  expect_decode_error(handmade(2, "{}" + big, {}), "declares 10001 bytes, over the limit of 10000");
  std::string dims;
  for (int i = 0; i < 65; ++i) dims += "1, ";
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }", zeros(4)),
                      "more than 64 dimensions (max_npy_dims)");
  expect_decode_error(handmade(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967297, 0), }", {}),
                      "a dimension exceeds the limit of 4294967296 (max_npy_elements)");
  expect_decode_error(handmade(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999999999999, 0), }", {}),
                      "a dimension exceeds the limit of 4294967296");
  expect_decode_error(handmade(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (65536, 65537), }", {}),
                      "has more than 4294967296 elements (max_npy_elements)");
  // At the limits: 64 dimensions, and an empty array whose dimensions are all within the limit.
  std::string dims64;
  for (int i = 0; i < 64; ++i) dims64 += "1, ";
  EXPECT_EQ(decode_npy(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims64 + "), }",
                                zeros(4)), "ok.npy").shape.size(), 64u);
  EXPECT_EQ(decode_npy(handmade(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 0), }", {}),
                       "ok.npy").count(), 0);
}

TEST(Npy, MalformedHeadersAreQuotedShortAndEscaped) {
  const std::string hostile = "{'descr': '\x1b[2J\x1b]0;pwned\x07', 'fortran_order': False, 'shape': (1,)\n" +
                              std::string(9000, 'A') + "}";
  for (const std::vector<std::byte>& file :
       {handmade(1, hostile, zeros(4)), handmade(1, "{'\x1b[31m" + std::string(9000, 'k') + "': 1}", {})}) {
    try {
      decode_npy(file, "evil.npy");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_LT(what.size(), 400u) << what;
      EXPECT_EQ(what.find('\x1b'), std::string::npos) << "a raw escape reached the message: " << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_NE(what.find("\\x1b"), std::string::npos) << "the escape is not shown escaped: " << what;
    }
  }
}

TEST(Npy, ReadChecksTheHeaderAndSizeBeforeReadingData) {
  // A few bytes declaring 16 GiB: refused from the header and the file size, nothing allocated.
  const auto path = (std::filesystem::temp_directory_path() / "posenc_test_npy_huge.npy").string();
  {
    const std::vector<std::byte> file =
        handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (65536, 65536), }", zeros(64));
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fwrite(file.data(), 1, file.size(), f);
    std::fclose(f);
  }
  try {
    read_npy(path);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated data: shape (65536, 65536) of <f4 needs 17179869184 bytes, "
                                         "the file has 64"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove(path);
}

TEST(Npy, AcceptsHeaderVariantsOtherWritersProduce) {
  // Key order, double quotes, no trailing comma, Python 2 long literals, native and void byte orders.
  NpyArray a = decode_npy(
      handmade(1, "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"=i8\"}", zeros(48)), "a.npy");
  EXPECT_EQ(a.type, NpyType::i64);
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 3}));
  a = decode_npy(handmade(1, "{'descr': '<V2', 'fortran_order': False, 'shape': (4,), }", zeros(8)), "b.npy");
  EXPECT_EQ(a.type, NpyType::bf16) << "'<V2' is bfloat16 (ml_dtypes)";
  a = decode_npy(handmade(1, "{'descr': '|V2', 'fortran_order': False, 'shape': (4,)}", zeros(8)), "c.npy");
  EXPECT_EQ(a.type, NpyType::bf16) << "'|V2' is bfloat16 (ml_dtypes)";
  a = decode_npy(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': ()}", zeros(4)), "d.npy");
  EXPECT_TRUE(a.shape.empty());
  EXPECT_EQ(a.count(), 1);
}

TEST(Npy, RejectsFortranOrder) {
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", zeros(16)),
                      "fortran_order is True");
}

TEST(Npy, RejectsUnsupportedDtypes) {
  expect_decode_error(handmade(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", zeros(16)),
                      "unsupported dtype '<f8'");
  expect_decode_error(handmade(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", zeros(8)),
                      "big-endian");
  expect_decode_error(handmade(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", zeros(8)),
                      "structured dtype");
}

TEST(Npy, RejectsTruncatedAndTrailingData) {
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", zeros(20)),
                      "truncated data: shape (2, 3) of <f4 needs 24 bytes, the file has 20");
  expect_decode_error(handmade(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", zeros(12)),
                      "4 unexpected bytes after the data");
}

TEST(Npy, RejectsBrokenHeaders) {
  expect_decode_error(to_bytes("PK\x03\x04 not numpy"), "not a .npy file");
  expect_decode_error(handmade(4, "{}", {}), "unsupported .npy format version 4.0");
  std::vector<std::byte> cut = handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", {});
  cut.resize(20);
  expect_decode_error(cut, "truncated .npy header");
  expect_decode_error(handmade(1, "{'descr': '<f4', 'shape': (1,), }", zeros(4)), "no 'fortran_order'");
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", zeros(4)),
                      "unexpected header key 'x'");
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", zeros(4)),
                      "negative dimension");
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': maybe, 'shape': (1,), }", zeros(4)),
                      "fortran_order must be True or False");
  expect_decode_error(handmade(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} extra", zeros(4)),
                      "unexpected text after the header dict");
}

TEST(Npy, MissingFileNamesThePath) {
  try {
    read_npy("/nonexistent/posenc/q.npy");
    ADD_FAILURE() << "read_npy of a missing file did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::io);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/posenc/q.npy: cannot open"), std::string::npos)
        << e.what();
  }
}

// A zero dimension makes an empty array whatever the other dimensions are, also when their
// product alone (or times the item size) would overflow int64: decode accepts it, count() is 0,
// and it encodes and decodes back. (Found by fuzz_npy: the decoder accepted such a shape of '<i8',
// whose partial product overflowed only once multiplied by 8, and the encoder refused it.)
TEST(Npy, ZeroDimensionIsEmptyWhateverTheOtherDimensions) {
  for (const std::string& shape : {std::string("(112, 89, 9491112, 89, 949129, 0, 666, 96, 6, 9496, 62, 7)"),
                                   std::string("(4294967296, 4294967296, 4294967296, 0)"), std::string("(0, 4294967296)")}) {
    for (const std::string& descr : {std::string("<i8"), std::string("<f4"), std::string("<f2")}) {
      const std::vector<std::byte> bytes =
          handmade(1, "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }", {});
      const NpyArray array = decode_npy(bytes, "empty.npy");
      EXPECT_EQ(array.count(), 0) << shape << " " << descr;
      EXPECT_TRUE(array.data.empty());
      const NpyArray back = decode_npy(encode_npy(array.type, array.shape, array.data), "round trip");
      EXPECT_EQ(back.shape, array.shape) << shape << " " << descr;
    }
  }
}

TEST(Npy, EncodeRejectsDataOfTheWrongSize) {
  const std::vector<std::int64_t> shape = {2, 2};
  EXPECT_THROW(encode_npy(NpyType::f32, shape, zeros(12)), Error);
}

}  // namespace
}  // namespace posenc::cli
