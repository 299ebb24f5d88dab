// The posenc CLI end to end: `apply` and `check` through .npy files, golden fixture copies, and the exit codes of bad usage.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "npy.hpp"
#include "posenc/cpu.hpp"
#include "posenc/gpu.hpp"
#include "posenc/model_config.hpp"

#ifndef POSENC_CLI_PATH
#error "POSENC_CLI_PATH (the posenc binary) must be defined by the build"
#endif

namespace posenc::cli {
namespace {

namespace fs = std::filesystem;

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

/// Runs `posenc <args>` through the shell and captures its exit code and output.
CliResult run_cli(const std::string& args) {
  const std::string command = std::string("'") + POSENC_CLI_PATH + "' " + args + " 2>&1";
  CliResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer{};
  while (const std::size_t got = std::fread(buffer.data(), 1, buffer.size(), pipe)) {
    result.output.append(buffer.data(), got);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

/// A scratch directory per test, removed afterwards.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("posenc_test_cli_") + std::to_string(::getpid()) + "_" + info->name());
    fs::create_directories(dir_);
    glm_config_ = path("glm-4-9b-chat.json");
    std::ofstream(glm_config_) << default_model_config_json();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  std::string glm_config_;
};

template <typename T>
std::vector<std::byte> bytes_of(const std::vector<T>& values) {
  std::vector<std::byte> out(values.size() * sizeof(T));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

template <typename T>
std::vector<T> values_of(const NpyArray& array) {
  std::vector<T> out(array.data.size() / sizeof(T));
  std::memcpy(out.data(), array.data.data(), array.data.size());
  return out;
}

/// Smooth, sign-changing test values that are exact in bfloat16 after rounding.
std::vector<float> test_values(std::size_t n, float phase) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * static_cast<float>(i) + phase) * 1.5f;
  return v;
}

/// Expected output: the CPU engine, called directly on the same inputs.
void rotate_with_engine(const RopeSpec& spec, DType dtype, std::vector<std::byte>& q, std::int64_t q_heads,
                        std::vector<std::byte>& k, std::int64_t k_heads,
                        const std::vector<std::int64_t>& positions) {
  const std::int64_t tokens = static_cast<std::int64_t>(positions.size());
  RopeArgs args;
  args.q = TensorView::contiguous(q.data(), dtype, tokens, q_heads, spec.head_dim);
  if (k_heads > 0) args.k = TensorView::contiguous(k.data(), dtype, tokens, k_heads, spec.head_dim);
  args.positions = {positions.data(), IndexType::i64, tokens};
  CpuEngine(spec).apply(args);
}

TEST_F(CliTest, ApplyMatchesTheCpuEngineForFloat32) {
  const ModelConfig config = parse_model_config(default_model_config_json());
  const RopeSpec& spec = config.spec();
  const std::int64_t tokens = 7;
  const std::int64_t q_heads = config.num_attention_heads;
  const std::int64_t k_heads = config.num_key_value_heads;
  const std::int64_t d = spec.head_dim;
  const std::vector<std::int64_t> positions = {0, 1, 2, 3, 0, 1, 1000};
  const std::vector<float> q = test_values(static_cast<std::size_t>(tokens * q_heads * d), 0.1f);
  const std::vector<float> k = test_values(static_cast<std::size_t>(tokens * k_heads * d), 0.7f);
  const std::vector<std::int64_t> q_shape = {tokens, q_heads, d};
  const std::vector<std::int64_t> k_shape = {tokens, k_heads, d};
  const std::vector<std::int64_t> p_shape = {tokens};
  write_npy(path("q.npy"), NpyType::f32, q_shape, bytes_of(q));
  write_npy(path("k.npy"), NpyType::f32, k_shape, bytes_of(k));
  write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(positions));

  const CliResult r = run_cli("apply --config '" + glm_config_ + "' --q '" + path("q.npy") + "' --k '" +
                              path("k.npy") + "' --positions '" + path("pos.npy") + "' --out-q '" +
                              path("out_q.npy") + "' --out-k '" + path("out_k.npy") + "' --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::vector<std::byte> want_q = bytes_of(q);
  std::vector<std::byte> want_k = bytes_of(k);
  rotate_with_engine(spec, DType::f32, want_q, q_heads, want_k, k_heads, positions);
  const NpyArray out_q = read_npy(path("out_q.npy"));
  const NpyArray out_k = read_npy(path("out_k.npy"));
  EXPECT_EQ(out_q.type, NpyType::f32);
  EXPECT_EQ(out_q.shape, q_shape);
  EXPECT_EQ(out_k.shape, k_shape);
  EXPECT_TRUE(out_q.data == want_q) << "posenc apply's Q differs from CpuEngine on the same input";
  EXPECT_TRUE(out_k.data == want_k) << "posenc apply's K differs from CpuEngine on the same input";
  EXPECT_FALSE(out_q.data == bytes_of(q)) << "Q came back unrotated";
}

TEST_F(CliTest, ApplyReadsFlatHeadsBf16BitsAndInt32Positions) {
  // Q as [T, H*D] bfloat16 bits ('<u2'), positions int32 shaped [1, T] like HF's position_ids.
  const ModelConfig config = parse_model_config(default_model_config_json());
  const RopeSpec& spec = config.spec();
  const std::int64_t tokens = 5;
  const std::int64_t heads = config.num_attention_heads;
  const std::int64_t d = spec.head_dim;
  std::vector<std::uint16_t> q(static_cast<std::size_t>(tokens * heads * d));
  const std::vector<float> values = test_values(q.size(), 0.3f);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = float_to_bf16_bits(values[i]);
  const std::vector<std::int32_t> positions32 = {4, 3, 2, 1, 0};
  const std::vector<std::int64_t> q_shape = {tokens, heads * d};
  const std::vector<std::int64_t> p_shape = {1, tokens};
  write_npy(path("q.npy"), NpyType::u16, q_shape, bytes_of(q));
  write_npy(path("pos.npy"), NpyType::i32, p_shape, bytes_of(positions32));

  const std::string base = "apply --config '" + glm_config_ + "' --q '" + path("q.npy") + "' --positions '" +
                           path("pos.npy") + "' --out-q '" + path("out_q.npy") + "' --device cpu";
  const CliResult without_dtype = run_cli(base);
  EXPECT_EQ(without_dtype.exit_code, 2) << "'<u2' must not be taken as bfloat16 without --dtype bf16\n"
                                        << without_dtype.output;
  EXPECT_NE(without_dtype.output.find("--dtype"), std::string::npos) << without_dtype.output;

  const CliResult r = run_cli(base + " --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::byte> want = bytes_of(q);
  std::vector<std::byte> no_k;
  rotate_with_engine(spec, DType::bf16, want, heads, no_k, 0, {4, 3, 2, 1, 0});
  const NpyArray out = read_npy(path("out_q.npy"));
  EXPECT_EQ(out.type, NpyType::u16) << "bfloat16 is written as '<u2' bits";
  EXPECT_EQ(out.shape, q_shape) << "the output keeps the input's [T, H*D] shape";
  EXPECT_TRUE(out.data == want) << "posenc apply's bf16 Q differs from CpuEngine";
}

TEST_F(CliTest, ApplyRoundsFloat32InputToTheRequestedDtypeAndHonoursNumerics) {
  const ModelConfig config = parse_model_config(default_model_config_json());
  RopeSpec spec = config.spec();
  spec.numerics = Numerics::accurate;
  const std::int64_t tokens = 3;
  const std::int64_t heads = 2;
  const std::int64_t d = spec.head_dim;
  const std::vector<float> q = test_values(static_cast<std::size_t>(tokens * heads * d), 1.1f);
  const std::vector<std::int64_t> positions = {100000, 7, 65535};
  const std::vector<std::int64_t> q_shape = {tokens, heads, d};
  const std::vector<std::int64_t> p_shape = {tokens};
  write_npy(path("q.npy"), NpyType::f32, q_shape, bytes_of(q));
  write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(positions));

  const CliResult r = run_cli("apply --config '" + glm_config_ + "' --q '" + path("q.npy") + "' --positions '" +
                              path("pos.npy") + "' --out-q '" + path("out_q.npy") +
                              "' --dtype f16 --numerics accurate --device cpu");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::uint16_t> q16(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) q16[i] = float_to_f16_bits(q[i]);
  std::vector<std::byte> want = bytes_of(q16);
  std::vector<std::byte> no_k;
  rotate_with_engine(spec, DType::f16, want, heads, no_k, 0, positions);
  const NpyArray out = read_npy(path("out_q.npy"));
  EXPECT_EQ(out.type, NpyType::f16);
  EXPECT_TRUE(out.data == want) << "f32 input under --dtype f16 --numerics accurate differs from CpuEngine";
}

TEST_F(CliTest, BadUsageExitsWithTwoAndSaysWhy) {
  const std::vector<std::int64_t> q_shape = {2, 1, 128};
  write_npy(path("q.npy"), NpyType::f32, q_shape, bytes_of(std::vector<float>(256, 1.0f)));
  const std::vector<std::int64_t> p_shape = {3};
  write_npy(path("pos3.npy"), NpyType::i64, p_shape, bytes_of(std::vector<std::int64_t>{0, 1, 2}));
  const std::vector<std::int64_t> p2_shape = {2};
  write_npy(path("neg.npy"), NpyType::i64, p2_shape, bytes_of(std::vector<std::int64_t>{0, -5}));
  write_npy(path("fpos.npy"), NpyType::f32, p2_shape, bytes_of(std::vector<float>{0, 1}));
  {
    std::ofstream fortran(path("fortran.npy"), std::ios::binary);
    const std::string header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1, 128), }";
    fortran << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(header.size()) << '\0' << header
            << std::string(1024, '\0');
  }
  const std::string apply = "apply --config '" + glm_config_ + "' --out-q '" + path("out.npy") + "' ";

  struct Case {
    std::string args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"", "subcommand"},
      {"frobnicate", "frobnicate"},
      {"run --tokens 0", "--tokens"},
      {"run --device tpu", "--device"},
      {"run --dtype f64 --tokens 4 --device cpu", "--dtype: unknown dtype 'f64'"},
      {"run --numerics fast", "--numerics"},
      {"info --config '" + path("missing.json") + "'", "missing.json"},
      {"info --layer-type sliding_attention", "no layer type 'sliding_attention'"},
      {apply + "--positions '" + path("pos3.npy") + "'", "--q"},
      {apply + "--q '" + path("q.npy") + "' --positions '" + path("pos3.npy") + "'", "3 positions"},
      {apply + "--q '" + path("fortran.npy") + "' --positions '" + path("pos3.npy") + "'", "fortran_order is True"},
      {apply + "--q '" + path("q.npy") + "' --positions '" + path("fpos.npy") + "'", "must be <i4 or <i8"},
      {apply + "--q '" + path("q.npy") + "' --positions '" + path("neg.npy") + "' --device cpu", "-5"},
      {apply + "--q '" + path("q.npy") + "' --k '" + path("q.npy") + "' --positions '" + path("pos3.npy") + "'",
       "--out-k"},
  };
  for (const Case& c : cases) {
    const CliResult r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << "posenc " << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos)
        << "posenc " << c.args << ": message lacks '" << c.says << "':\n" << r.output;
  }
}

TEST_F(CliTest, HelpAndVersionExitZero) {
  for (const char* args : {"--help", "--version", "run --help", "apply --help", "info --help", "check --help"}) {
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << "posenc " << args << "\n" << r.output;
  }
}

TEST_F(CliTest, RuntimeFailuresExitWithOne) {
  const std::vector<std::int64_t> shape = {1, 1, 128};
  write_npy(path("q.npy"), NpyType::f32, shape, bytes_of(std::vector<float>(128, 1.0f)));
  const std::vector<std::int64_t> p_shape = {1};
  write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(std::vector<std::int64_t>{3}));
  const CliResult unwritable = run_cli("apply --config '" + glm_config_ + "' --q '" + path("q.npy") +
                                       "' --positions '" + path("pos.npy") +
                                       "' --out-q /nonexistent-posenc-dir/out.npy --device cpu");
  EXPECT_EQ(unwritable.exit_code, 1) << unwritable.output;
  EXPECT_NE(unwritable.output.find("/nonexistent-posenc-dir/out.npy"), std::string::npos) << unwritable.output;

  if (!gpu::available()) {
    const CliResult no_gpu = run_cli("run --tokens 16 --device gpu");
    EXPECT_EQ(no_gpu.exit_code, 1) << no_gpu.output;
    EXPECT_NE(no_gpu.output.find(gpu::unavailable_reason()), std::string::npos)
        << "the message must say why there is no GPU:\n" << no_gpu.output;
  }
}


// --- posenc check ---------------------------------------------------------------------------------

#ifndef POSENC_GOLDEN_DIR
#error "POSENC_GOLDEN_DIR (tests/golden) must be defined by the build"
#endif

/// Copies golden family `family` into `to` and flips the lowest bit of element (token, head, dim)
/// of its bfloat16 K output, so posenc's (correct) result differs from it by one bf16 ulp there.
void corrupt_fixture_copy(const std::string& family, const fs::path& to, std::int64_t token,
                          std::int64_t head, std::int64_t dim) {
  fs::copy(fs::path(POSENC_GOLDEN_DIR) / family, to, fs::copy_options::recursive);
  const std::string k_out = (to / "main.bfloat16.k_out.npy").string();
  NpyArray a = read_npy(k_out);
  ASSERT_EQ(a.shape.size(), 3u);
  const std::int64_t index = (token * a.shape[1] + head) * a.shape[2] + dim;
  std::uint16_t bits;
  std::memcpy(&bits, a.data.data() + index * 2, 2);
  bits ^= 1u;
  std::memcpy(a.data.data() + index * 2, &bits, 2);
  write_npy(k_out, a.type, a.shape, a.data);
}

TEST_F(CliTest, CheckFixturePassesAndNamesTheCorruptedElementOfACopy) {
  const std::string golden = std::string(POSENC_GOLDEN_DIR) + "/llama-3.1";
  const CliResult good = run_cli("check --fixture '" + golden + "' --device cpu");
  ASSERT_EQ(good.exit_code, 0) << good.output;
  EXPECT_NE(good.output.find("PASS  main/bfloat16 cpu, fixture inv_freq: Q+K bit-exact"), std::string::npos)
      << good.output;

  // A copy outside the repository needs --root to find the config meta.json names.
  corrupt_fixture_copy("llama-3.1", dir_ / "llama-3.1", 5, 0, 17);
  const std::string copy = path("llama-3.1");
  const CliResult no_root = run_cli("check --fixture '" + copy + "' --device cpu");
  EXPECT_EQ(no_root.exit_code, 2) << no_root.output;
  EXPECT_NE(no_root.output.find("--root"), std::string::npos) << no_root.output;

  const CliResult bad = run_cli("check --fixture '" + copy + "' --root '" + POSENC_SOURCE_DIR + "' --device cpu");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("FAIL  main/bfloat16 cpu, fixture inv_freq: 1 of"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("first: K token 5, head 0, dim 17: posenc"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("(1 ulp of bfloat16)"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("PASS  main/float16"), std::string::npos) << "only the bf16 K output was changed\n"
                                                                       << bad.output;
}

TEST_F(CliTest, CheckComparesAUsersDumpAndHonoursTheTolerance) {
  const std::string golden = std::string(POSENC_GOLDEN_DIR) + "/llama-3.1/";
  corrupt_fixture_copy("llama-3.1", dir_ / "llama-3.1", 3, 0, 100);
  const std::string config = std::string(POSENC_SOURCE_DIR) + "/configs/llama-3.1-8b.json";
  const std::string inputs = "check --config '" + config + "' --q '" + golden + "main.bfloat16.q.npy' --k '" +
                             golden + "main.bfloat16.k.npy' --positions '" + golden +
                             "main.positions.npy' --dtype bf16 --device cpu --expect-q '" + golden +
                             "main.bfloat16.q_out.npy' ";

  const CliResult good = run_cli(inputs + "--expect-k '" + golden + "main.bfloat16.k_out.npy'");
  EXPECT_EQ(good.exit_code, 0) << good.output;
  EXPECT_NE(good.output.find("PASS: 6912 values bit-exact"), std::string::npos) << good.output;

  const std::string corrupted = "--expect-k '" + path("llama-3.1/main.bfloat16.k_out.npy") + "'";
  const CliResult bad = run_cli(inputs + corrupted + " --inv-freq '" + golden + "main.inv_freq.npy'");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("first mismatch  K token 3, head 0, dim 100: posenc"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("FAIL: 1 of 6912 values not bit-exact"), std::string::npos) << bad.output;

  const CliResult tolerated = run_cli(inputs + corrupted + " --tolerance-ulps 1");
  EXPECT_EQ(tolerated.exit_code, 0) << tolerated.output;

  struct Case {
    std::string args;
    std::string says;
  };
  const std::vector<Case> usage = {
      {"check --config '" + config + "' --q '" + golden + "main.bfloat16.q.npy' --positions '" + golden +
           "main.positions.npy' --dtype bf16",
       "--expect-q is required"},
      {inputs + "--expect-k '" + golden + "main.bfloat16.q_out.npy'", "has 4608 elements"},
      {inputs + "--expect-k '" + golden + "main.bfloat16.k_out.npy' --inv-freq '" + golden +
           "main.positions.npy'",
       "inv_freq must be a 1-D '<f4' array"},
      {"check --fixture '" + golden + "' --q q.npy", "--fixture excludes --q"},
      {"check --fixture '" + path("none") + "'", "meta.json: cannot be read"},
  };
  for (const Case& c : usage) {
    const CliResult r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << "posenc " << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos)
        << "posenc " << c.args << ": message lacks '" << c.says << "':\n" << r.output;
  }
}

}  // namespace
}  // namespace posenc::cli
