// The posenc CLI as a function (run_command_line): builds the subcommands from the registry, parses, runs, maps errors to exit codes.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "command.hpp"
#include "posenc/error.hpp"
#include "posenc/version.hpp"

namespace {

using posenc::cli::exit_failure;
using posenc::cli::exit_usage;

/// Runs a subcommand and turns every exception into a message on stderr and an exit code.
int run_reporting_errors(const char* name, const posenc::cli::Runner& runner) {
  try {
    return runner();
  } catch (const posenc::cli::CliError& e) {
    std::fprintf(stderr, "posenc %s: error: %s\n", name, e.what());
    return e.exit_code();
  } catch (const posenc::Error& e) {
    // A request posenc refused (bad shape, position, config) is the caller's to fix: usage (2).
    // A failure while serving an accepted request (vendor, unsupported, io, overflow) is 1.
    const posenc::ErrorKind kind = e.kind();
    const bool refused = kind == posenc::ErrorKind::config ||
                         kind == posenc::ErrorKind::invalid_argument ||
                         kind == posenc::ErrorKind::out_of_range;
    std::fprintf(stderr, "posenc %s: %s error: %s\n", name, posenc::to_string(kind), e.what());
    return refused ? exit_usage : exit_failure;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "posenc %s: error: out of host memory\n", name);
    return exit_failure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "posenc %s: error: %s\n", name, e.what());
    return exit_failure;
  }
}

}  // namespace

int posenc::cli::run_command_line(int argc, char** argv) {
  CLI::App app{"posenc: rotary position embeddings (RoPE) for LLM queries and keys, on CPU and GPU.\n"
               "Exit codes: 0 ok, 1 failed (verification, device, write), 2 bad usage, config or input."};
  app.name("posenc");
  app.set_version_flag("--version", posenc::version_string);
  app.require_subcommand(1);

  const std::vector<posenc::cli::Command> commands = posenc::cli::registered_commands();
  std::vector<std::pair<CLI::App*, posenc::cli::Runner>> subcommands;
  for (const posenc::cli::Command& command : commands) {
    CLI::App* sub = app.add_subcommand(command.name, command.summary);
    subcommands.emplace_back(sub, command.setup(*sub));
  }

  // CLI11 reports an unknown first word as "A subcommand is required"; name it instead.
  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const posenc::cli::Command& command : commands) {
      known += (known.empty() ? "" : ", ") + std::string(command.name);
      found = found || command.name == std::string_view(argv[1]);
    }
    if (!found) {
      std::fprintf(stderr, "posenc: unknown subcommand '%s' (expected one of: %s; see posenc --help)\n",
                   argv[1], known.c_str());
      return exit_usage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version "fail" with exit code 0; every real parse error is a usage error.
    const int printed = app.exit(e);
    return printed == 0 ? 0 : exit_usage;
  }
  for (const auto& [sub, runner] : subcommands) {
    if (sub->parsed()) return run_reporting_errors(sub->get_name().c_str(), runner);
  }
  return exit_usage;  // unreachable: require_subcommand(1)
}
