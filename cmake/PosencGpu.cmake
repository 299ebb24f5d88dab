# Decides which GPU backends this build compiles: CUDA with nvcc, HIP with hipcc (same sources).
include(CheckLanguage)

set(POSENC_WITH_CUDA OFF)
if(NOT POSENC_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper; override with -DCMAKE_CUDA_ARCHITECTURES=90 to build for one card.
      set(CMAKE_CUDA_ARCHITECTURES "80;90")
    endif()
    enable_language(CUDA)
    # CMake < 3.26 does not know nvcc's C++20 flag; nvcc >= 12 accepts it.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(POSENC_WITH_CUDA ON)
  elseif(POSENC_CUDA STREQUAL "ON")
    message(FATAL_ERROR "POSENC_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "posenc: CUDA engine ${POSENC_WITH_CUDA}")

# HIP. One GPU backend per build: where CUDA is the backend, hipcc only compile-checks the same
# sources (posenc_hip_check, nothing links it); without CUDA, hipcc builds the GPU engine for real
# and posenc links the HIP runtime (libamdhip64). The `hip` preset asks for the latter explicitly.
set(POSENC_WITH_HIP OFF)
set(POSENC_WITH_HIP_CHECK OFF)
if(NOT POSENC_HIP STREQUAL "OFF")
  find_program(POSENC_HIPCC hipcc)
  if(NOT POSENC_HIPCC)
    if(POSENC_HIP STREQUAL "ON")
      message(FATAL_ERROR "POSENC_HIP=ON but hipcc was not found (Debian: apt-get install hipcc libamdhip64-dev)")
    endif()
  elseif(POSENC_WITH_CUDA)
    if(POSENC_HIP STREQUAL "ON")
      message(FATAL_ERROR "POSENC_HIP=ON with the CUDA engine: a build has one GPU backend; set POSENC_CUDA=OFF "
                          "(the `hip` preset does) or POSENC_HIP=AUTO for a HIP compile check beside CUDA")
    endif()
    set(POSENC_WITH_HIP_CHECK ON)
  else()
    find_library(POSENC_AMDHIP64 amdhip64 HINTS /opt/rocm/lib)
    if(POSENC_AMDHIP64)
      set(POSENC_WITH_HIP ON)
    elseif(POSENC_HIP STREQUAL "ON")
      message(FATAL_ERROR "POSENC_HIP=ON but the HIP runtime libamdhip64 was not found (Debian: libamdhip64-dev)")
    else()
      set(POSENC_WITH_HIP_CHECK ON)
      message(STATUS "posenc: hipcc found without libamdhip64: HIP compile check only")
    endif()
  endif()
endif()
message(STATUS "posenc: HIP engine ${POSENC_WITH_HIP}; HIP compile check of the GPU sources ${POSENC_WITH_HIP_CHECK}")

# The AMD targets hipcc compiles for: POSENC_HIP_ARCHITECTURES when set, else every one of CDNA2
# (gfx90a), CDNA3 (gfx942), RDNA2 (gfx1030) and RDNA3 (gfx1100) that this hipcc can target, probed
# once per hipcc with a one-line kernel. Debian 12's hipcc 5.2.3 targets gfx90a and gfx1030 only
# (clang 15 rejects gfx942; its device libraries lack gfx1100): docs/ARCHITECTURE.md says what a
# newer ROCm adds.
set(POSENC_HIP_TARGETS ${POSENC_HIP_ARCHITECTURES})
if((POSENC_WITH_HIP OR POSENC_WITH_HIP_CHECK) AND NOT POSENC_HIP_TARGETS)
  if(NOT POSENC_HIP_PROBED_FOR STREQUAL POSENC_HIPCC)
    set(probe_dir ${PROJECT_BINARY_DIR}/hip-target-probe)
    file(WRITE ${probe_dir}/probe.cu "#include <hip/hip_runtime.h>\n__global__ void posenc_probe(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    set(supported)
    foreach(arch IN ITEMS gfx90a gfx942 gfx1030 gfx1100)
      execute_process(
        COMMAND ${POSENC_HIPCC} -x hip --offload-arch=${arch} -c ${probe_dir}/probe.cu -o ${probe_dir}/${arch}.o
        RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
      if(rc EQUAL 0)
        list(APPEND supported ${arch})
      else()
        string(REGEX MATCH "error: [^\n]*" reason "${err}")
        message(STATUS "posenc: hipcc cannot target ${arch}: ${reason}")
      endif()
    endforeach()
    if(NOT supported)
      message(FATAL_ERROR "posenc: hipcc (${POSENC_HIPCC}) targets none of gfx90a, gfx942, gfx1030, gfx1100; "
                          "set POSENC_HIP_ARCHITECTURES")
    endif()
    set(POSENC_HIP_PROBED_FOR ${POSENC_HIPCC} CACHE INTERNAL "the hipcc whose targets were probed")
    set(POSENC_HIP_PROBED_TARGETS "${supported}" CACHE INTERNAL "the AMD targets that hipcc compiles for")
  endif()
  set(POSENC_HIP_TARGETS ${POSENC_HIP_PROBED_TARGETS})
endif()
if(POSENC_WITH_HIP OR POSENC_WITH_HIP_CHECK)
  message(STATUS "posenc: HIP targets ${POSENC_HIP_TARGETS}")
endif()

# The GPU backend compiled into libposenc (posenc::gpu::backend_name(), the CMake package's
# posenc_BACKEND, posenc.pc's `backend` variable).
if(POSENC_WITH_CUDA)
  set(POSENC_BACKEND cuda)
elseif(POSENC_WITH_HIP)
  set(POSENC_BACKEND hip)
else()
  set(POSENC_BACKEND none)
endif()
