// The subcommand registry (a function-local static, so registration order across files is safe).
#include "command.hpp"

#include <algorithm>
#include <string_view>

namespace posenc::cli {
namespace {

std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}

}  // namespace

void usage_error(const std::string& message) { throw CliError(exit_usage, message); }

void run_failure(const std::string& message) { throw CliError(exit_failure, message); }

bool register_command(Command command) {
  registry().push_back(std::move(command));
  return true;
}

std::vector<Command> registered_commands() {
  std::vector<Command> sorted = registry();
  std::sort(sorted.begin(), sorted.end(), [](const Command& a, const Command& b) {
    return std::string_view(a.name) < std::string_view(b.name);
  });
  return sorted;
}

}  // namespace posenc::cli
