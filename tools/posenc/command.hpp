// Subcommand registry and exit-code policy of the posenc CLI: each subcommand is one file that registers itself.
//
// A subcommand file defines a setup function and registers it at static-initialization time:
//
//     namespace {
//     posenc::cli::Runner setup_info(CLI::App& app) { ...add options...; return [opts] { ...; return 0; }; }
//     [[maybe_unused]] const bool registered =
//         posenc::cli::register_command({"info", "Print the RoPE spec ...", setup_info});
//     }
//
// tools/posenc/CMakeLists.txt compiles every *.cpp of this folder into the executable, so adding a
// subcommand (check, bench) is adding its file.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace posenc::cli {

/// Exit codes: 0 success; 1 the request was accepted but failed (verification failed, GPU or
/// write error); 2 the request could not be accepted (bad flags, config, input files, shapes).
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;
inline constexpr int exit_usage = 2;

/// An error the CLI reports with its own exit code (main prints "posenc <cmd>: error: <what>").
class CliError : public std::runtime_error {
 public:
  CliError(int exit_code, const std::string& message)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

/// Shorthands for the two kinds of CliError.
[[noreturn]] void usage_error(const std::string& message);
[[noreturn]] void run_failure(const std::string& message);

/// What a subcommand does once its options are parsed; returns the exit code.
using Runner = std::function<int()>;

struct Command {
  const char* name;
  const char* summary;
  /// Adds the subcommand's options to `app` (bound to state the Runner captures).
  std::function<Runner(CLI::App& app)> setup;
};

/// Adds `command` to the registry; returns true so it can initialize a namespace-scope constant.
bool register_command(Command command);

/// Every registered subcommand, sorted by name.
std::vector<Command> registered_commands();

/// The whole CLI, as `posenc argv[1] ...` runs it (main.cpp): parses, runs the subcommand, prints
/// errors to stderr and returns the exit code. Holds no state between calls, so tests and the
/// fuzzer (fuzz/fuzz_cli.cpp) call it in-process.
int run_command_line(int argc, char** argv);

}  // namespace posenc::cli
