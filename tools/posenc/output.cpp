// OutputFiles: each output written to a temporary beside its target, flushed, then all renamed into place together.
#include "output.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "posenc/error.hpp"

namespace posenc::cli {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& path, const std::string& what, int error) {
  throw Error(ErrorKind::io, path + ": " + what + ": " + std::strerror(error));
}

/// The file a write to `path` replaces: `path`, or where its chain of symlinks ends (writing
/// through a symlink updates its target, as opening it for writing would).
std::string resolve(const std::string& path) {
  std::error_code ec;
  const fs::file_status link = fs::symlink_status(path, ec);
  if (ec || !fs::is_symlink(link)) return path;
  const fs::path target = fs::weakly_canonical(path, ec);
  if (ec) throw Error(ErrorKind::io, path + ": cannot follow the symlink: " + ec.message());
  return target.string();
}

/// Permission bits of the new file: the replaced file's, else what open(2) would give (0666 less
/// the umask; umask can only be read by setting it, and nothing else creates files meanwhile).
mode_t new_file_mode(const std::string& resolved) {
  struct stat st;
  if (::stat(resolved.c_str(), &st) == 0) return st.st_mode & 07777;
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return 0666 & ~mask;
}

// ---- temporaries removed when the command is interrupted (SIGINT, SIGTERM, SIGHUP) --------------
//
// A signal handler may only touch lock-free atomics and fixed storage: each slot holds a path,
// published by setting its flag after the path is written, and withdrawn by clearing the flag.

constexpr std::size_t max_pending = 16;
std::array<std::array<char, PATH_MAX>, max_pending> pending_paths{};
std::array<std::atomic<bool>, max_pending> pending_used{};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void remove_pending_and_reraise(int signal) {
  for (std::size_t i = 0; i < max_pending; ++i)
    if (pending_used[i].load()) (void)::unlink(pending_paths[i].data());
  (void)std::signal(signal, SIG_DFL);
  (void)std::raise(signal);
}

/// Installs the handler for the signals that end a command from outside, unless the process
/// ignores them or has its own handler.
void install_interrupt_handler() {
  static const bool installed = [] {
    for (const int signal : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(signal, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        struct sigaction action {};
        action.sa_handler = &remove_pending_and_reraise;
        ::sigemptyset(&action.sa_mask);
        (void)::sigaction(signal, &action, nullptr);
      }
    }
    return true;
  }();
  (void)installed;
}

/// Registers `path` for removal on interruption; returns its slot, or max_pending when the path
/// is too long or every slot is taken (the file is then only removed on ordinary failures).
std::size_t register_pending(const std::string& path) {
  install_interrupt_handler();
  if (path.size() >= PATH_MAX) return max_pending;
  for (std::size_t i = 0; i < max_pending; ++i) {
    if (pending_used[i].load()) continue;
    std::memcpy(pending_paths[i].data(), path.c_str(), path.size() + 1);
    pending_used[i].store(true);
    return i;
  }
  return max_pending;
}

void withdraw_pending(std::size_t slot) {
  if (slot < max_pending) pending_used[slot].store(false);
}

/// Flushes a directory's entries (the renames) to the device; best effort, as not every file
/// system can open a directory for it.
void sync_directory(const std::string& file) {
  const fs::path parent = fs::path(file).parent_path();
  const int fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}

}  // namespace

OutputFiles::OutputFiles(WriteFunction write) : write_(write != nullptr ? write : &::write) {}

OutputFiles::~OutputFiles() {
  for (const Staged& s : staged_) {
    withdraw_pending(s.slot);
    if (s.replaced) continue;  // committed, or restored by roll_back()
    (void)::unlink(s.temporary.c_str());
    // The target still is the file the backup links to: the backup is redundant.
    if (!s.backup.empty()) (void)::unlink(s.backup.c_str());
  }
}

void OutputFiles::stage(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces) {
  Staged s;
  s.target = path;
  s.resolved = resolve(path);
  const fs::path resolved(s.resolved);
  const fs::path dir = resolved.parent_path().empty() ? fs::path(".") : resolved.parent_path();
  // A hidden name beside the target (the same file system, so rename() is atomic); the target's
  // name is cut so that the whole stays within NAME_MAX.
  std::string hidden = ".";  // built by appending: GCC 12 warns falsely (-Wrestrict) on "." + string
  hidden += resolved.filename().string().substr(0, 200);
  hidden += ".posenc-XXXXXX";
  std::string name = (dir / hidden).string();
  const int fd = ::mkstemp(name.data());
  if (fd < 0) fail(path, "cannot create a temporary file in " + dir.string(), errno);
  s.temporary = name;
  s.slot = register_pending(name);
  staged_.push_back(s);  // from here on the destructor (or an interrupting signal) removes the temporary

  const auto fail_closing = [&](const std::string& what, int error) {
    (void)::close(fd);
    fail(path, what, error);
  };
  for (const std::span<const std::byte> piece : pieces) {
    const std::byte* data = piece.data();
    std::size_t left = piece.size();
    while (left > 0) {
      const ssize_t wrote = write_(fd, data, left);
      if (wrote < 0) {
        if (errno == EINTR) continue;
        fail_closing("write error", errno);
      }
      if (wrote == 0) fail_closing("write error", EIO);
      data += wrote;
      left -= static_cast<std::size_t>(wrote);
    }
  }
  if (::fchmod(fd, new_file_mode(s.resolved)) != 0) fail_closing("cannot set the permissions", errno);
  // Delayed allocation (ext4, XFS, NFS) may report a full device only here or at close.
  if (::fsync(fd) != 0) fail_closing("write error while flushing to the device", errno);
  if (::close(fd) != 0) fail(path, "write error while closing", errno);
}

void OutputFiles::commit() {
  // Hard links keep every old target reachable until all renames have succeeded. No link: no
  // old target (ENOENT), a directory (which the rename will refuse), or a file system without
  // hard links, where a failed later rename cannot restore this target.
  for (Staged& s : staged_) {
    struct stat st;
    s.existed = ::lstat(s.resolved.c_str(), &st) == 0;
    const std::string backup = s.temporary + ".old";
    if (s.existed && ::link(s.resolved.c_str(), backup.c_str()) == 0) s.backup = backup;
  }
  for (Staged& s : staged_) {
    if (::rename(s.temporary.c_str(), s.resolved.c_str()) != 0) {
      const int error = errno;
      roll_back();
      fail(s.target, "cannot move the complete output into place (every output is left as it was)", error);
    }
    s.replaced = true;
    withdraw_pending(s.slot);  // the name is gone (a signal meanwhile unlinks nothing)
  }
  for (const Staged& s : staged_) sync_directory(s.resolved);
  for (const Staged& s : staged_)
    if (!s.backup.empty()) (void)::unlink(s.backup.c_str());
  staged_.clear();
}

void OutputFiles::roll_back() noexcept {
  for (Staged& s : staged_) {
    if (!s.replaced) continue;
    if (!s.backup.empty()) {
      if (::rename(s.backup.c_str(), s.resolved.c_str()) == 0) s.backup.clear();
      // else: the old contents stay in the backup file, which is kept.
    } else if (!s.existed) {
      (void)::unlink(s.resolved.c_str());  // there was no file before
    }  // else: the old file could not be linked and is gone; the new one stays.
  }
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;  // both exist: the same inode
  std::error_code ec_a;
  std::error_code ec_b;
  const fs::path ca = fs::weakly_canonical(a, ec_a);
  const fs::path cb = fs::weakly_canonical(b, ec_b);
  return !ec_a && !ec_b && ca == cb;
}

}  // namespace posenc::cli
