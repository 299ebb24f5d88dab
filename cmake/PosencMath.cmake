# The math libraries torch calls on an x86-64 CPU, which HfArithmetic::torch_cpu reproduces (docs/NUMERICS.md §3.4):
#   SLEEF (Debian libsleef-dev; required): the powf of torch's vectorized pow kernel.
#   Intel MKL (PyPI mkl-static; POSENC_MKL, ON by default): vmsCos/vmsSin, torch's cos and sin.
# Defines posenc_link_math(target), which src/CMakeLists.txt calls for the library.
# .deps/prefix: what scripts/stage-gpu-deps.sh carries to the GPU machine (no libsleef-dev there).
find_path(POSENC_SLEEF_INCLUDE_DIR sleef.h HINTS "${PROJECT_SOURCE_DIR}/.deps/prefix/include")
find_library(POSENC_SLEEF_LIBRARY sleef HINTS "${PROJECT_SOURCE_DIR}/.deps/prefix/lib")
if(NOT POSENC_SLEEF_INCLUDE_DIR OR NOT POSENC_SLEEF_LIBRARY)
  message(FATAL_ERROR "posenc: SLEEF not found (sleef.h, libsleef): apt-get install libsleef-dev "
                      "(scripts/setup.sh installs it), or set CMAKE_PREFIX_PATH to a SLEEF install")
endif()

option(POSENC_MKL "posenc: link Intel MKL's vmsCos/vmsSin (torch's CPU cos/sin: HfArithmetic::torch_cpu). OFF builds without MKL and refuses torch_cpu" ON)
set(POSENC_MKL_ROOT "" CACHE PATH
    "posenc: MKL install holding lib/libmkl_core.a (PyPI mkl-static), or lib/posenc_mkl_vml.o (scripts/stage-gpu-deps.sh); empty: search the defaults")

set(POSENC_MKL_OBJECT "")
if(POSENC_MKL)
  # The first place holding either MKL's static libraries or a staged posenc_mkl_vml.o wins.
  set(roots "${POSENC_MKL_ROOT}" "$ENV{MKLROOT}" /opt/posenc/mkl "${PROJECT_SOURCE_DIR}/.deps/mkl")
  if(Python_EXECUTABLE)  # a Python build environment with `pip install mkl-static`
    execute_process(COMMAND "${Python_EXECUTABLE}" -c "import sys; print(sys.prefix)"
                    OUTPUT_VARIABLE python_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    list(APPEND roots "${python_prefix}")
  endif()
  set(POSENC_MKL_CORE "")
  set(POSENC_MKL_PREBUILT "")
  foreach(root IN LISTS roots)
    foreach(dir "${root}/lib" "${root}/lib/intel64")
      if(root AND NOT POSENC_MKL_CORE AND NOT POSENC_MKL_PREBUILT)
        if(EXISTS "${dir}/libmkl_core.a")
          set(POSENC_MKL_CORE "${dir}/libmkl_core.a")
        elseif(EXISTS "${dir}/posenc_mkl_vml.o")
          set(POSENC_MKL_PREBUILT "${dir}/posenc_mkl_vml.o")
        endif()
      endif()
    endforeach()
  endforeach()
  set(POSENC_MKL_OBJECT "${CMAKE_CURRENT_BINARY_DIR}/posenc_mkl_vml.o")
  if(POSENC_MKL_CORE)
    get_filename_component(mkl_lib_dir "${POSENC_MKL_CORE}" DIRECTORY)
    add_custom_command(OUTPUT "${POSENC_MKL_OBJECT}"
      COMMAND "${CMAKE_COMMAND}" -DLINKER=${CMAKE_LINKER} -DOBJCOPY=${CMAKE_OBJCOPY} -DMKL_LIB_DIR=${mkl_lib_dir}
              -DOUT=${POSENC_MKL_OBJECT} -P "${PROJECT_SOURCE_DIR}/cmake/posenc_mkl_object.cmake"
      DEPENDS "${POSENC_MKL_CORE}" "${PROJECT_SOURCE_DIR}/cmake/posenc_mkl_object.cmake"
      COMMENT "Extracting MKL's vmsCos/vmsSin from ${mkl_lib_dir}" VERBATIM)
    message(STATUS "posenc: Intel MKL from ${mkl_lib_dir} (torch_cpu cos/sin)")
  elseif(POSENC_MKL_PREBUILT)
    configure_file("${POSENC_MKL_PREBUILT}" "${POSENC_MKL_OBJECT}" COPYONLY)
    message(STATUS "posenc: Intel MKL's vmsCos/vmsSin from ${POSENC_MKL_PREBUILT} (torch_cpu cos/sin)")
  else()
    message(FATAL_ERROR
      "posenc: Intel MKL's static libraries (libmkl_core.a) not found under POSENC_MKL_ROOT, MKLROOT, "
      "/opt/posenc/mkl or .deps/mkl. scripts/setup.sh installs them (PyPI mkl-static into /opt/posenc/mkl); "
      "or configure with -DPOSENC_MKL=OFF: the CPU engine then refuses hf_arithmetic torch_cpu (its default).")
  endif()
else()
  message(STATUS "posenc: POSENC_MKL=OFF: hf_arithmetic torch_cpu (the CPU engine's default) is refused")
endif()

function(posenc_link_math target)
  target_include_directories(${target} PRIVATE "${POSENC_SLEEF_INCLUDE_DIR}")
  target_link_libraries(${target} PRIVATE "${POSENC_SLEEF_LIBRARY}")
  if(POSENC_MKL_OBJECT)
    target_sources(${target} PRIVATE "${POSENC_MKL_OBJECT}")
    set_source_files_properties("${POSENC_MKL_OBJECT}" PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
    target_compile_definitions(${target} PRIVATE POSENC_WITH_MKL=1)
    target_link_libraries(${target} PRIVATE ${CMAKE_DL_LIBS} Threads::Threads m)
  endif()
endfunction()
