// The posenc CLI end to end: `apply` and `check` through .npy files, golden fixture copies, and the exit codes of bad usage.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "npy.hpp"
#include "output.hpp"
#include "posenc/cpu.hpp"
#include "posenc/error.hpp"
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

/// How the child that runs the CLI is constrained, to make its writes fail.
struct ChildLimits {
  /// RLIMIT_FSIZE in bytes, with SIGXFSZ ignored: writes past it fail with EFBIG.
  std::optional<rlim_t> file_size = std::nullopt;
  bool drop_root = false;           ///< run as nobody when root (root writes into read-only directories)
  /// RLIMIT_CPU and RLIMIT_AS for hostile inputs: a hang or a runaway allocation fails the test
  /// instead of stalling or exhausting the machine.
  std::optional<rlim_t> cpu_seconds = std::nullopt;
  std::optional<rlim_t> address_space = std::nullopt;
};

/// Exit code of a child that could not drop root privileges.
constexpr int cannot_drop_root = 125;

/// Runs `posenc <args>` through the shell in a child under `limits`, and captures its exit code
/// and output (stdout and stderr together).
CliResult run_cli(const std::string& args, const ChildLimits& limits = {}) {
  const std::string command = std::string("'") + POSENC_CLI_PATH + "' " + args;
  CliResult result;
  int fds[2];
  if (::pipe(fds) != 0) return result;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    if (limits.file_size) {
      std::signal(SIGXFSZ, SIG_IGN);  // inherited through exec: a write past the limit fails with EFBIG
      const rlimit limit{*limits.file_size, *limits.file_size};
      if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(126);
    }
    for (const auto& [resource, value] :
         {std::pair{RLIMIT_CPU, limits.cpu_seconds}, std::pair{RLIMIT_AS, limits.address_space}}) {
      const rlimit limit{value.value_or(RLIM_INFINITY), value.value_or(RLIM_INFINITY)};
      if (value && ::setrlimit(resource, &limit) != 0) ::_exit(126);
    }
    if (limits.drop_root && ::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) {
      ::_exit(cannot_drop_root);
    }
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    return result;
  }
  std::array<char, 4096> buffer{};
  for (;;) {
    const ssize_t got = ::read(fds[0], buffer.data(), buffer.size());
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    result.output.append(buffer.data(), static_cast<std::size_t>(got));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
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

// A config with a QK norm (Qwen3): apply normalises with the given weights exactly as CpuEngine,
// names the missing weights (exit 2), and rotates only with --no-qk-norm.
TEST_F(CliTest, ApplyWithTheQkNormOfAQwen3Config) {
  const std::string qwen3 = std::string(POSENC_SOURCE_DIR) + "/configs/qwen3-8b-yarn.json";
  const RopeSpec spec = load_model_config(qwen3).spec();
  ASSERT_EQ(spec.qk_norm.kind, QkNormKind::rms);
  const std::int64_t tokens = 5, q_heads = 2, k_heads = 1, d = spec.head_dim;
  const std::vector<std::int64_t> positions = {0, 9, 4000, 3, 77};
  const std::vector<float> q = test_values(static_cast<std::size_t>(tokens * q_heads * d), 0.3f);
  const std::vector<float> k = test_values(static_cast<std::size_t>(tokens * k_heads * d), 0.9f);
  std::vector<float> wq(static_cast<std::size_t>(d)), wk(static_cast<std::size_t>(d));
  for (std::int64_t j = 0; j < d; ++j) {
    wq[j] = 1.0f + 0.01f * static_cast<float>(j % 17);
    wk[j] = 0.5f + 0.02f * static_cast<float>(j % 5);
  }
  const std::vector<std::int64_t> q_shape = {tokens, q_heads, d}, k_shape = {tokens, k_heads, d}, p_shape = {tokens},
                                  w_shape = {d};
  write_npy(path("q.npy"), NpyType::f32, q_shape, bytes_of(q));
  write_npy(path("k.npy"), NpyType::f32, k_shape, bytes_of(k));
  write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(positions));
  write_npy(path("wq.npy"), NpyType::f32, w_shape, bytes_of(wq));
  write_npy(path("wk.npy"), NpyType::f32, w_shape, bytes_of(wk));
  const std::string base = "apply --config '" + qwen3 + "' --q '" + path("q.npy") + "' --k '" + path("k.npy") +
                           "' --positions '" + path("pos.npy") + "' --out-q '" + path("out_q.npy") + "' --out-k '" +
                           path("out_k.npy") + "' --device cpu";

  const CliResult missing = run_cli(base);
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("--q-norm-weight and --k-norm-weight"), std::string::npos) << missing.output;
  EXPECT_NE(missing.output.find("--no-qk-norm"), std::string::npos) << missing.output;

  const CliResult r = run_cli(base + " --q-norm-weight '" + path("wq.npy") + "' --k-norm-weight '" + path("wk.npy") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<float> want_q = q, want_k = k;
  RopeArgs args;
  args.q = TensorView::contiguous(want_q.data(), DType::f32, tokens, q_heads, d);
  args.k = TensorView::contiguous(want_k.data(), DType::f32, tokens, k_heads, d);
  args.positions = PositionsView{positions.data(), IndexType::i64, tokens, 1, tokens};
  args.norm = NormWeights{wq.data(), wk.data()};
  CpuEngine(spec).apply(args);
  EXPECT_TRUE(read_npy(path("out_q.npy")).data == bytes_of(want_q)) << "normalised Q differs from CpuEngine";
  EXPECT_TRUE(read_npy(path("out_k.npy")).data == bytes_of(want_k)) << "normalised K differs from CpuEngine";

  const CliResult plain = run_cli(base + " --no-qk-norm");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  std::vector<std::byte> rope_q = bytes_of(q), rope_k = bytes_of(k);
  RopeSpec rope_only = spec;
  rope_only.qk_norm = {};
  rotate_with_engine(rope_only, DType::f32, rope_q, q_heads, rope_k, k_heads, positions);
  EXPECT_TRUE(read_npy(path("out_q.npy")).data == rope_q) << "--no-qk-norm must rotate only";
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

// --- output safety: all outputs or none, every existing file unchanged on failure -----------------

std::string file_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The names in `dir` (temporaries included: they start with '.').
std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

/// Inputs for `apply` whose outputs differ in size: Q [4, 2, 128] f32 (4224 bytes as .npy) and
/// K [4, 32, 128] f32 (65664 bytes), so a limit between the two fails the second output only.
class OutputSafetyTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    const std::vector<std::int64_t> q_shape = {4, 2, 128};
    const std::vector<std::int64_t> k_shape = {4, 32, 128};
    const std::vector<std::int64_t> p_shape = {4};
    write_npy(path("q.npy"), NpyType::f32, q_shape, bytes_of(test_values(4 * 2 * 128, 0.2f)));
    write_npy(path("k.npy"), NpyType::f32, k_shape, bytes_of(test_values(4 * 32 * 128, 0.9f)));
    write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(std::vector<std::int64_t>{0, 1, 2, 3}));
  }

  /// `posenc apply` of q.npy/k.npy writing `out_q` and `out_k`.
  std::string apply_args(const fs::path& out_q, const fs::path& out_k) const {
    return "apply --config '" + glm_config_ + "' --q '" + path("q.npy") + "' --k '" + path("k.npy") +
           "' --positions '" + path("pos.npy") + "' --out-q '" + out_q.string() + "' --out-k '" + out_k.string() +
           "' --device cpu";
  }

  /// Expects a failed write: exit 1, the message naming `failed` and `reason`; `unchanged` files
  /// hold `old`, and `dir` holds exactly the entries it held before.
  static void expect_nothing_changed(const CliResult& r, const std::string& failed, const std::string& reason,
                                     const std::vector<fs::path>& unchanged, const std::string& old,
                                     const fs::path& dir, const std::set<std::string>& before) {
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(failed), std::string::npos) << "the message must name " << failed << ":\n" << r.output;
    EXPECT_NE(r.output.find(reason), std::string::npos) << "the message must say '" << reason << "':\n" << r.output;
    for (const fs::path& p : unchanged) EXPECT_EQ(file_text(p), old) << p << " was changed by a failed apply";
    EXPECT_EQ(entries(dir), before) << "a failed apply left files behind or removed some in " << dir;
  }
};

// Regression (issue 17, item 2): a write failing midway left --out-q written (or truncated the
// --q it named) although the command exited 1.
TEST_F(OutputSafetyTest, FileSizeLimitLeavesEveryFileAsItWas) {
  const std::string old = "previous contents";
  std::ofstream(path("out_q.npy")) << old;
  std::ofstream(path("out_k.npy")) << old;
  const std::set<std::string> before = entries(dir_);
  // The first output fails (its 4224 bytes exceed 2000), then only the second (65664 > 20000).
  for (const rlim_t limit : {rlim_t{2000}, rlim_t{20000}}) {
    const CliResult r = run_cli(apply_args(path("out_q.npy"), path("out_k.npy")), {.file_size = limit});
    expect_nothing_changed(r, limit == 2000 ? path("out_q.npy") : path("out_k.npy"), "File too large",
                           {path("out_q.npy"), path("out_k.npy")}, old, dir_, before);
  }
  // --out-q naming --q: the input survives a failed write whole and readable.
  const std::string q_before = file_text(path("q.npy"));
  const CliResult r = run_cli(apply_args(path("q.npy"), path("out_k.npy")), {.file_size = 2000});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(file_text(path("q.npy")), q_before) << "a failed write destroyed the --q input it was to replace";
  EXPECT_NO_THROW(read_npy(path("q.npy")));
  EXPECT_EQ(entries(dir_), before);

  // Without the limit the same commands succeed, --out-q = --q included.
  const CliResult ok = run_cli(apply_args(path("q.npy"), path("out_k.npy")));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(file_text(path("q.npy")), q_before) << "--out-q = --q must hold the rotated Q";
  EXPECT_EQ(read_npy(path("out_k.npy")).shape, (std::vector<std::int64_t>{4, 32, 128}));
  EXPECT_EQ(entries(dir_), before) << "a successful apply left temporaries behind";
}

TEST_F(OutputSafetyTest, ReadOnlyDirectoryLeavesEveryFileAsItWas) {
  // Q goes to a writable directory, K to a read-only one: K cannot be created, so Q must not
  // appear either. The child runs as nobody when the test runs as root (root ignores modes).
  const fs::path rw = dir_ / "rw";
  const fs::path ro = dir_ / "ro";
  fs::create_directories(rw);
  fs::create_directories(ro);
  const std::string old = "previous contents";
  std::ofstream(rw / "out_q.npy") << old;
  std::ofstream(ro / "out_k.npy") << old;
  fs::permissions(rw, fs::perms::all);
  fs::permissions(rw / "out_q.npy", fs::perms::all);
  fs::permissions(ro / "out_k.npy", fs::perms::all);  // the file itself is writable, its directory is not
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                          fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  const std::set<std::string> rw_before = entries(rw);
  const std::set<std::string> ro_before = entries(ro);
  const CliResult r = run_cli(apply_args(rw / "out_q.npy", ro / "out_k.npy"), {.drop_root = true});
  fs::permissions(ro, fs::perms::owner_all);  // let TearDown remove it
  if (r.exit_code == cannot_drop_root) GTEST_SKIP() << "running as root without the right to become nobody";
  expect_nothing_changed(r, (ro / "out_k.npy").string(), "cannot create a temporary file",
                         {rw / "out_q.npy", ro / "out_k.npy"}, old, rw, rw_before);
  EXPECT_EQ(entries(ro), ro_before);
}

TEST_F(OutputSafetyTest, FullDeviceLeavesEveryFileAsItWas) {
  // A 64 KiB tmpfs holds Q (4224 bytes) but not K (65664): the device fills on the second output.
  const fs::path full = dir_ / "full";
  fs::create_directories(full);
  if (::mount("tmpfs", full.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs here (" << std::strerror(errno)
                 << "); OutputFilesTest.InjectedFullDeviceLeavesNothingBehind covers ENOSPC in-process";
  }
  struct Unmount {
    const fs::path& at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{full};
  const std::string old = "previous contents";
  std::ofstream(full / "out_q.npy") << old;
  const std::set<std::string> before = entries(full);
  const CliResult r = run_cli(apply_args(full / "out_q.npy", full / "out_k.npy"));
  expect_nothing_changed(r, (full / "out_k.npy").string(), "No space left on device", {full / "out_q.npy"}, old,
                         full, before);
}

TEST_F(OutputSafetyTest, FailedRenameRestoresTheOutputsAlreadyMoved) {
  // --out-k names a directory: every output is written, Q is renamed into place, K's rename fails;
  // Q must be put back.
  const std::string old = "previous contents";
  std::ofstream(path("out_q.npy")) << old;
  fs::create_directories(dir_ / "out_k.npy");
  std::ofstream(dir_ / "out_k.npy" / "keep") << "x";
  const std::set<std::string> before = entries(dir_);
  const CliResult r = run_cli(apply_args(path("out_q.npy"), path("out_k.npy")));
  expect_nothing_changed(r, path("out_k.npy"), "cannot move the complete output into place", {path("out_q.npy")},
                         old, dir_, before);
}

TEST_F(OutputSafetyTest, OutputsNamingOneFileAreRefused) {
  const CliResult r = run_cli(apply_args(path("out.npy"), dir_ / "." / "out.npy"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--out-q and --out-k name the same file"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(path("out.npy")));
}

/// A write that lands on /dev/full instead of its file: ENOSPC, as a full device gives.
ssize_t write_to_dev_full(int, const void* data, std::size_t size) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const ssize_t wrote = ::write(fd, data, size);
  const int error = errno;
  ::close(fd);
  errno = error;
  return wrote;
}

using OutputFilesTest = CliTest;

TEST_F(OutputFilesTest, InjectedFullDeviceLeavesNothingBehind) {
  std::ofstream(path("a.npy")) << "old a";
  const std::set<std::string> before = entries(dir_);
  const std::vector<std::byte> bytes(100, std::byte{7});
  {
    OutputFiles outputs(&write_to_dev_full);
    try {
      outputs.stage(path("a.npy"), {bytes});
      ADD_FAILURE() << "a write to /dev/full succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::io);
      EXPECT_NE(std::string(e.what()).find(path("a.npy") + ": write error: No space left on device"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(file_text(path("a.npy")), "old a");
  EXPECT_EQ(entries(dir_), before);
}

TEST_F(OutputFilesTest, InterruptRemovesTheTemporaries) {
  // A child stages two outputs, then is interrupted before committing: the signal handler removes
  // the temporaries and the child still dies of the signal.
  std::ofstream(path("a")) << "old a";
  const std::set<std::string> before = entries(dir_);
  for (const int signal : {SIGINT, SIGTERM, SIGHUP}) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::vector<std::byte> bytes(10, std::byte{1});
      OutputFiles outputs;
      outputs.stage(path("a"), {bytes});
      outputs.stage(path("b"), {bytes});
      std::raise(signal);
      ::_exit(0);  // not reached
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == signal) << "signal " << signal << ", status " << status;
    EXPECT_EQ(file_text(path("a")), "old a");
    EXPECT_EQ(entries(dir_), before) << "signal " << signal << " left temporaries behind";
  }
}

TEST_F(OutputFilesTest, CommitsAllTogetherAndUncommittedStagesVanish) {
  std::ofstream(path("a")) << "old a";
  fs::permissions(path("a"), fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  const std::set<std::string> before = entries(dir_);
  const std::vector<std::byte> one(3, std::byte{'1'});
  const std::vector<std::byte> two(2, std::byte{'2'});
  {
    OutputFiles outputs;
    outputs.stage(path("a"), {one, two});
    outputs.stage(path("b"), {two});
    EXPECT_EQ(file_text(path("a")), "old a") << "staging must not touch the target";
    EXPECT_FALSE(fs::exists(path("b")));
  }  // never committed
  EXPECT_EQ(file_text(path("a")), "old a");
  EXPECT_EQ(entries(dir_), before);

  // Through a symlink the target is replaced and the link kept; the old file's mode is kept.
  fs::create_symlink(path("a"), path("link"));
  OutputFiles outputs;
  outputs.stage(path("link"), {one, two});
  outputs.stage(path("b"), {two});
  outputs.commit();
  EXPECT_EQ(file_text(path("a")), "11122");
  EXPECT_EQ(file_text(path("b")), "22");
  EXPECT_TRUE(fs::is_symlink(path("link")));
  EXPECT_EQ(fs::status(path("a")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  std::set<std::string> after = before;
  after.insert("b");
  after.insert("link");
  EXPECT_EQ(entries(dir_), after);
}

// --- hostile input: exit 2 naming the cause, quickly, with short messages ----------------------

/// Limits for a command fed hostile input: 30 s of CPU, 4 GiB of address space (none under
/// AddressSanitizer, whose shadow memory reserves terabytes of address space).
#if defined(__SANITIZE_ADDRESS__)
constexpr std::optional<rlim_t> hostile_address_space = std::nullopt;
#else
constexpr std::optional<rlim_t> hostile_address_space = rlim_t{4} << 30;
#endif
const ChildLimits hostile = {.cpu_seconds = 30, .address_space = hostile_address_space};

/// Expects exit 2 with every part in a message of reasonable length.
void expect_refused(const CliResult& r, const std::string& what, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.exit_code, 2) << what << "\n" << r.output.substr(0, 2000);
  for (const std::string& part : parts)
    EXPECT_NE(r.output.find(part), std::string::npos) << what << ": output lacks '" << part << "':\n"
                                                      << r.output.substr(0, 2000);
  EXPECT_LT(r.output.size(), 2000u) << what << ": the output quotes too much";
}

/// A fixture meta.json in `dir` for the llama-3.1 golden files (absolute paths), with `cases`
/// as the JSON text of the "cases" value; `positions` names the positions file.
void write_meta(const fs::path& dir, const std::string& cases) {
  fs::create_directories(dir);
  std::ofstream(dir / "meta.json") << R"({"config": ")" << POSENC_SOURCE_DIR << R"(/configs/llama-3.1-8b.json", )"
                                   << R"("cases": )" << cases << "}";
}

std::string fixture_case(const std::string& positions, const std::string& name = R"("main")",
                         const std::string& attention_factor = "1.0") {
  const std::string g = std::string(POSENC_GOLDEN_DIR) + "/llama-3.1/";
  return R"([{"name": )" + name + R"(, "positions": ")" + positions + R"(", "inv_freq": ")" + g +
         R"(main.inv_freq.npy", "attention_factor": )" + attention_factor + R"(, "dtypes": {"bfloat16": {"q": ")" +
         g + R"(main.bfloat16.q.npy", "k": ")" + g + R"(main.bfloat16.k.npy", "q_out": ")" + g +
         R"(main.bfloat16.q_out.npy", "k_out": ")" + g + R"(main.bfloat16.k_out.npy"}}}])";
}

// Regression (issue 17, items 3, 4, 5): wrong types in meta.json and 1e400 exited 1 with a raw
// JSON-library message; a zero-size positions shape with a huge first dimension hung `check`;
// an INT64_MAX position overflowed `max_position + 1` and the message named no position.
TEST_F(CliTest, CheckRefusesHostileFixtures) {
  const std::string golden_positions = std::string(POSENC_GOLDEN_DIR) + "/llama-3.1/main.positions.npy";
  write_meta(dir_ / "ok", fixture_case(golden_positions));
  const CliResult ok = run_cli("check --fixture '" + path("ok") + "' --device cpu", hostile);
  ASSERT_EQ(ok.exit_code, 0) << "the hand-written meta.json itself must pass\n" << ok.output;

  const std::vector<std::int64_t> empty_shape = {std::int64_t{1} << 32, 0};
  write_npy(path("empty_pos.npy"), NpyType::i64, empty_shape, {});
  const std::vector<std::int64_t> streams_shape = {5, 18};
  write_npy(path("streams_pos.npy"), NpyType::i64, streams_shape, bytes_of(std::vector<std::int64_t>(90, 1)));
  std::vector<std::int64_t> huge(18, 1);
  huge[3] = std::numeric_limits<std::int64_t>::max();
  const std::vector<std::int64_t> huge_shape = {18};
  write_npy(path("huge_pos.npy"), NpyType::i64, huge_shape, bytes_of(huge));

  struct Case {
    const char* what;
    std::string cases;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {"cases not a list", "5", {"meta.json: key 'cases' = 5: expected a list of cases"}},
      {"name not a string", fixture_case(golden_positions, "7"), {"key 'cases[0].name' = 7: expected a string"}},
      {"attention factor not a number", fixture_case(golden_positions, R"("main")", R"("x")"),
       {"key 'cases[0].attention_factor' = \"x\": expected a number"}},
      {"1e400", fixture_case(golden_positions, R"("main")", "1e400"), {"meta.json: not valid JSON", "1e400"}},
      {"deep nesting", "[" + std::string(100000, '[') + std::string(100000, ']') + "]",
       {"meta.json: JSON nested deeper than the limit of 64 levels"}},
      {"zero-size positions with a huge first dimension", fixture_case(path("empty_pos.npy")),
       {"empty_pos.npy: shape [4294967296, 0] has no positions"}},
      {"five position streams", fixture_case(path("streams_pos.npy")),
       {"streams_pos.npy: shape [5, 18] has 5 position streams, over the limit of 4"}},
      {"INT64_MAX position", fixture_case(path("huge_pos.npy")),
       {"huge_pos.npy: position 9223372036854775807 at element 3 is outside [0, 16777216)"}},
  };
  for (const Case& c : cases) {
    write_meta(dir_ / "bad", c.cases);
    expect_refused(run_cli("check --fixture '" + path("bad") + "' --device cpu", hostile), c.what, c.says);
  }
}

// Regression (issue 17, items 4 and 7): --tolerance-ulps >= 2^63 saturated and let a NaN pass;
// an INT64_MAX position with --inv-freq overflowed `max_position + 1`.
TEST_F(CliTest, CheckDumpRefusesSaturatingTolerancesAndHugePositions) {
  const std::string golden = std::string(POSENC_GOLDEN_DIR) + "/llama-3.1/";
  NpyArray expected = read_npy(golden + "main.bfloat16.q_out.npy");
  const std::uint16_t nan_bits = 0x7fc0;
  std::memcpy(expected.data.data() + 10, &nan_bits, 2);
  write_npy(path("nan_q_out.npy"), expected.type, expected.shape, expected.data);
  const std::string inputs = "check --config '" + std::string(POSENC_SOURCE_DIR) + "/configs/llama-3.1-8b.json' --q '" +
                             golden + "main.bfloat16.q.npy' --dtype bf16 --device cpu ";
  const std::string nan_run = inputs + "--positions '" + golden + "main.positions.npy' --expect-q '" +
                              path("nan_q_out.npy") + "' --tolerance-ulps ";
  expect_refused(run_cli(nan_run + "9223372036854775808", hostile), "2^63 ulps", {"--tolerance-ulps"});
  const CliResult widest = run_cli(nan_run + "4294967296", hostile);
  EXPECT_EQ(widest.exit_code, 1) << "a NaN against a number must fail at any tolerance\n" << widest.output;
  EXPECT_NE(widest.output.find("NaN against a number"), std::string::npos) << widest.output;

  std::vector<std::int64_t> huge(18, 1);
  huge[17] = std::numeric_limits<std::int64_t>::max();
  const std::vector<std::int64_t> shape = {18};
  write_npy(path("huge_pos.npy"), NpyType::i64, shape, bytes_of(huge));
  expect_refused(run_cli(inputs + "--positions '" + path("huge_pos.npy") + "' --expect-q '" + golden +
                             "main.bfloat16.q_out.npy' --inv-freq '" + golden + "main.inv_freq.npy'",
                         hostile),
                 "INT64_MAX position", {"position 9223372036854775807 at element 17 is outside [0, 16777216)"});
}

// Regression (issue 17, items 1, 3, 4, 7) through the CLI: each hostile input is exit 2 naming
// the file and the limit or value, with a short message.
TEST_F(CliTest, HostileConfigsAndInputsExitTwo) {
  const std::string llama = R"({"model_type": "llama", "head_dim": 128, "max_position_embeddings": 4096, )";
  std::ofstream(path("deep.json")) << llama << R"("num_attention_heads": 8, "x": )" << std::string(80000, '[')
                                   << std::string(80000, ']') << "}";
  std::ofstream(path("big_number.json")) << llama << R"("num_attention_heads": 8, "rope_theta": 1e400})";
  std::ofstream(path("heads.json")) << llama << R"("num_attention_heads": 4294967296})";
  std::ofstream(path("wide.json")) << llama << R"("num_attention_heads": 65536, "num_key_value_heads": 65536})";
  std::ofstream(path("garbage.json")) << llama << R"("num_attention_heads": 8, "rope_theta": 1e-300})";
  fs::create_symlink(path("loop.json"), path("loop.json"));
  const std::vector<std::int64_t> zero_heads = {4, 0, 128};
  write_npy(path("q0.npy"), NpyType::f32, zero_heads, {});
  const std::vector<std::int64_t> zero_flat = {4, 0};
  write_npy(path("q0flat.npy"), NpyType::f32, zero_flat, {});
  const std::vector<std::int64_t> p_shape = {4};
  write_npy(path("pos.npy"), NpyType::i64, p_shape, bytes_of(std::vector<std::int64_t>{0, 1, 2, 3}));
  {
    std::ofstream evil(path("evil.npy"), std::ios::binary);
    const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), '\x1b[2J': 1" +
                               std::string(5000, '\n') + "}";
    evil << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(header.size() & 0xff)
         << static_cast<char>(header.size() >> 8) << header << std::string(4, '\0');
  }

  struct Case {
    const char* what;
    std::string args;
    std::vector<std::string> says;
  };
  const std::string apply = "apply --config '" + glm_config_ + "' --positions '" + path("pos.npy") + "' --out-q '" +
                            path("out.npy") + "' --device cpu --q ";
  const std::vector<Case> cases = {
      {"deep config", "info --config '" + path("deep.json") + "'",
       {"deep.json", "nested deeper than the limit of 64 levels"}},
      {"1e400", "info --config '" + path("big_number.json") + "'", {"big_number.json", "not valid JSON", "1e400"}},
      {"2^32 heads", "run --tokens 16 --device cpu --config '" + path("heads.json") + "'",
       {"heads.json", "'num_attention_heads' = 4294967296", "limit of 65536 heads"}},
      {"run batch over its limit", "run --device cpu --config '" + path("wide.json") + "'",
       {"--tokens 4096 x (65536 + 65536 heads) x head_dim 128", "limit of 2147483648", "max_run_elements"}},
      {"rope_theta 1e-300", "info --config '" + path("garbage.json") + "'", {"garbage.json", "theta = 1e-300"}},
      {"symlink loop", "info --config '" + path("loop.json") + "'", {"loop.json", "symbolic links"}},
      {"zero heads", apply + "'" + path("q0.npy") + "'", {"q0.npy: shape [4, 0, 128] has no heads"}},
      {"zero flat heads", apply + "'" + path("q0flat.npy") + "'", {"q0flat.npy: shape [4, 0] has no heads"}},
      {"hostile .npy header", apply + "'" + path("evil.npy") + "'", {"evil.npy", "\\x1b[2J", "..."}},
  };
  for (const Case& c : cases) {
    const CliResult r = run_cli(c.args, hostile);
    expect_refused(r, c.what, c.says);
    EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << c.what << ": a raw escape reached the terminal";
  }
  EXPECT_FALSE(fs::exists(path("out.npy")));
}

}  // namespace
}  // namespace posenc::cli
