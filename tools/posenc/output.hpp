// The files a CLI command writes, made visible all together or not at all (temporary files renamed into place).
//
// The contract (docs/CLI.md, "Outputs"): every output is written in full to a temporary file in
// the directory of its target, flushed to the device, and renamed over the target only once every
// output of the command is complete. Any failure before that (a write error, a full device, a
// file-size limit, a directory that cannot be written) removes the temporaries and leaves every
// target as it was, so `--out-q` naming the `--q` input cannot destroy it. A failure while the
// renames run puts back the targets already replaced (from hard-linked backups). SIGINT, SIGTERM
// and SIGHUP remove the temporaries before the process ends. Only a process killed outright
// (SIGKILL, power loss) can leave a temporary `.<name>.posenc-XXXXXX` behind; the targets are then
// still either all old or renamed one by one.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace posenc::cli {

class OutputFiles {
 public:
  /// How bytes reach a file descriptor: ::write, or a test's fault injection (e.g. writing to
  /// /dev/full instead, to see ENOSPC).
  using WriteFunction = ssize_t (*)(int fd, const void* data, std::size_t size);

  explicit OutputFiles(WriteFunction write = nullptr);
  /// Removes every temporary not committed.
  ~OutputFiles();
  OutputFiles(const OutputFiles&) = delete;
  OutputFiles& operator=(const OutputFiles&) = delete;

  /// Writes `pieces`, one after the other, to a new temporary file beside `path` (a symlink is
  /// followed to its target) and flushes it to the device. Throws posenc::Error(io) naming `path`
  /// and the system's reason.
  void stage(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces);

  /// Renames every staged file over its target, in staging order. Throws posenc::Error(io) naming
  /// the target when a rename fails, after restoring the targets already replaced.
  void commit();

 private:
  struct Staged {
    std::string target;     ///< the path as the user named it, for messages
    std::string resolved;   ///< where the file goes (symlinks followed)
    std::string temporary;  ///< the complete new contents
    std::string backup;     ///< a hard link to the previous target while committing; empty: none
    bool existed = false;   ///< a previous target existed when the commit began
    bool replaced = false;  ///< renamed over the target during this commit
    std::size_t slot = 0;   ///< where the temporary is registered for removal on SIGINT/SIGTERM/SIGHUP
  };
  void roll_back() noexcept;

  WriteFunction write_;
  std::vector<Staged> staged_;
};

/// True when `a` and `b` name the same file: the same path after resolving symlinks and `..`, or
/// the same existing inode (hard links).
bool same_file(const std::string& a, const std::string& b);

}  // namespace posenc::cli
