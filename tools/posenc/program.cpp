// The process entry point of the posenc executable: the CLI itself is posenc::cli::run_command_line (main.cpp).
#include "command.hpp"

int main(int argc, char** argv) { return posenc::cli::run_command_line(argc, argv); }
