// Fuzz target: the posenc CLI in-process (posenc::cli::run_command_line) on argument lists built from the input, in a scratch directory.
//
// The input is the argument list, one argument per line (at most 24 arguments of at most 200
// bytes). At start-up the target makes a scratch directory, fills it with every shipped config
// (configs/*.json) and the llama-3.1 golden fixture (golden/llama-3.1/: .npy inputs, outputs and
// meta.json), and makes it the working directory, so relative paths such as
// `golden/llama-3.1/main.bfloat16.q.npy` name real inputs and outputs land there. Arguments that
// could reach outside it (an absolute path, "..") are refused, and so are argument lists that ask
// for much work (`run` without --tokens, or --tokens/--repeats/--threads above 64): the CLI would
// serve them correctly, only slowly. Pass libFuzzer's corpus and artifact paths absolute
// (scripts/fuzz.sh does): the working directory changes.
//
// Properties: the CLI returns 0, 1 or 2 (never crashes, never throws out); a run that fails
// (exit 1 or 2) leaves the scratch directory exactly as it was: no new file, every existing file
// unchanged (docs/CLI.md's output contract). After each run the directory is restored.
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "command.hpp"
#include "fuzz_check.hpp"

namespace {

namespace fs = std::filesystem;
using posenc::fuzz::require;

constexpr std::size_t max_args = 24;
constexpr std::size_t max_arg_bytes = 200;
constexpr long max_work = 64;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The scratch directory and its pristine contents (relative path -> bytes).
class Workspace {
 public:
  Workspace() {
    char name[] = "/tmp/posenc-fuzz-cli-XXXXXX";
    require(mkdtemp(name) != nullptr, std::string("mkdtemp: ") + std::strerror(errno));
    root_ = name;
    const fs::path source = POSENC_SOURCE_DIR;
    for (const auto& entry : fs::directory_iterator(source / "configs")) {
      if (entry.path().extension() == ".json") files_["configs/" + entry.path().filename().string()] = read_file(entry.path());
    }
    for (const auto& entry : fs::directory_iterator(source / "tests/golden/llama-3.1")) {
      files_["golden/llama-3.1/" + entry.path().filename().string()] = read_file(entry.path());
    }
    restore();
    require(::chdir(root_.c_str()) == 0, std::string("chdir: ") + std::strerror(errno));
  }

  /// True when the directory holds exactly the pristine files.
  bool pristine() const {
    std::size_t seen = 0;
    for (const auto& entry : fs::recursive_directory_iterator(root_)) {
      if (entry.is_directory()) continue;
      const std::string rel = fs::relative(entry.path(), root_).string();
      const auto it = files_.find(rel);
      if (it == files_.end() || !entry.is_regular_file() || read_file(entry.path()) != it->second) return false;
      ++seen;
    }
    return seen == files_.size();
  }

  /// Removes everything and writes the pristine files again.
  void restore() const {
    std::error_code ignored;
    for (const auto& entry : fs::directory_iterator(root_)) fs::remove_all(entry.path(), ignored);
    for (const auto& [rel, bytes] : files_) {
      const fs::path path = root_ / rel;
      fs::create_directories(path.parent_path());
      std::ofstream out(path, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      require(static_cast<bool>(out), "cannot restore " + path.string());
    }
  }

 private:
  fs::path root_;
  std::map<std::string, std::string> files_;
};

Workspace* workspace = nullptr;

/// False for an argument that could name a path outside the working directory.
bool confined(const std::string& arg) {
  if (arg.find("..") != std::string::npos || arg.rfind('~', 0) == 0) return false;
  if (arg.empty() || arg.find('/') == std::string::npos) return true;
  if (arg[0] == '/') return false;
  if (arg[0] == '-' && (arg.size() < 2 || arg[1] != '-')) return false;  // -cVALUE, -abVALUE
  const std::size_t eq = arg.find('=');
  return eq == std::string::npos || eq + 1 >= arg.size() || arg[eq + 1] != '/';
}

/// The value of a work-sizing option is a small decimal number.
bool small_number(const std::string& text) {
  if (text.empty() || text.size() > 3) return false;
  for (const char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return std::strtol(text.c_str(), nullptr, 10) <= max_work;
}

/// False for argument lists that ask the CLI for much work (see the file comment).
bool affordable(const std::vector<std::string>& args) {
  bool run = false;
  bool tokens = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "run") run = true;
    for (const char* option : {"--tokens", "--repeats", "--threads", "-t"}) {
      const std::string name = option;
      if (a.rfind(name, 0) != 0) continue;
      std::string value;
      if (a.size() == name.size()) {
        value = i + 1 < args.size() ? args[i + 1] : "";
      } else if (a[name.size()] == '=') {
        value = a.substr(name.size() + 1);
      } else if (name == "-t") {
        value = a.substr(2);
      } else {
        continue;  // another option starting with the same letters
      }
      if (!small_number(value)) return false;
      if (name == "--tokens" || name == "-t") tokens = true;
    }
  }
  return !run || tokens;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  workspace = new Workspace();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args;
  std::string current;
  for (std::size_t i = 0; i <= size; ++i) {
    if (i == size || data[i] == '\n') {
      args.push_back(current);
      current.clear();
      continue;
    }
    if (data[i] == '\0') return -1;  // not representable in argv
    current.push_back(static_cast<char>(data[i]));
    if (current.size() > max_arg_bytes) return -1;
  }
  if (!args.empty() && args.back().empty()) args.pop_back();  // a final newline
  if (args.size() > max_args) return -1;
  for (const std::string& a : args) {
    if (!confined(a)) return -1;
  }
  if (!affordable(args)) return -1;

  std::vector<char*> argv;
  std::string program = "posenc";
  argv.push_back(program.data());
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int code = posenc::cli::run_command_line(static_cast<int>(argv.size() - 1), argv.data());
  require(code == 0 || code == 1 || code == 2, "exit code " + std::to_string(code));
  if (code != 0) require(workspace->pristine(), "a failed command (exit " + std::to_string(code) + ") changed or left files");
  workspace->restore();
  return 0;
}
