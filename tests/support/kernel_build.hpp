// Test support: selects the CPU engine's kernel build (POSENC_CPU_ISA) for engines constructed while it lives.
#pragma once

#include <cstdlib>
#include <string>

namespace posenc::test {

/// "baseline", "avx2" and "avx512" (AVX-512 without the AVX512-BF16 kernels) cap the instruction
/// set (POSENC_CPU_ISA), "native" leaves the choice to the CPU's features (AVX512-BF16 where
/// present). A cap above what the CPU has changes nothing, so every value runs everywhere.
class KernelBuild {
 public:
  explicit KernelBuild(const std::string& isa) {
    if (isa == "native") {
      unsetenv("POSENC_CPU_ISA");
    } else {
      setenv("POSENC_CPU_ISA", isa.c_str(), 1);
    }
  }
  ~KernelBuild() { unsetenv("POSENC_CPU_ISA"); }
  KernelBuild(const KernelBuild&) = delete;
  KernelBuild& operator=(const KernelBuild&) = delete;
};

}  // namespace posenc::test
