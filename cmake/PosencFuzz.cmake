# POSENC_FUZZ: instrument every posenc target for libFuzzer (coverage) with AddressSanitizer and
# UndefinedBehaviorSanitizer; fuzz/CMakeLists.txt then links the fuzz targets with libFuzzer's main.
# Needs clang with its runtime libraries (Debian: clang and libclang-rt-<version>-dev, which
# `POSENC_FUZZ=1 scripts/setup.sh` installs). Included before any target is defined.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "POSENC_FUZZ needs clang (libFuzzer ships with it), not ${CMAKE_CXX_COMPILER_ID}: "
                      "configure with the fuzz preset (cmake --preset fuzz) or -DCMAKE_CXX_COMPILER=clang++")
endif()
if(POSENC_CUDA STREQUAL "ON" OR POSENC_HIP STREQUAL "ON")
  message(FATAL_ERROR "POSENC_FUZZ builds the host code only: set POSENC_CUDA=OFF and POSENC_HIP=OFF")
endif()
set(POSENC_CUDA OFF)  # AUTO means OFF here (the normal variable hides the cache entry)
set(POSENC_HIP OFF)

# Every UBSan finding aborts (no recovery), so libFuzzer records it as a crash with its input.
set(POSENC_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
add_compile_options(-fsanitize=fuzzer-no-link ${POSENC_FUZZ_SANITIZERS} -g)
add_link_options(${POSENC_FUZZ_SANITIZERS})

include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer,address,undefined")
check_cxx_source_compiles("
  #include <cstddef>
  #include <cstdint>
  extern \"C\" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }"
  POSENC_HAVE_LIBFUZZER)
unset(CMAKE_REQUIRED_FLAGS)
if(NOT POSENC_HAVE_LIBFUZZER)
  string(REGEX MATCH "^[0-9]+" clang_major "${CMAKE_CXX_COMPILER_VERSION}")
  message(FATAL_ERROR "clang cannot link -fsanitize=fuzzer: install its runtime (Debian: "
                      "libclang-rt-${clang_major}-dev), or run POSENC_FUZZ=1 scripts/setup.sh")
endif()
