# HIP compile check: builds every src/gpu/*.cu with hipcc for POSENC_HIP_ARCHITECTURES into a static library in ALL (nothing runs it).
#
# CMake's HIP language needs a ROCm CMake package that distributions do not ship, so hipcc is
# driven directly: one custom command per source, then the objects are archived. The point is that
# CI proves the one-source CUDA/HIP promise (src/gpu/vendor.hpp is the only switch) on every change.
file(GLOB POSENC_HIP_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/gpu/*.cu)
file(GLOB POSENC_HIP_DEPENDS CONFIGURE_DEPENDS
  ${PROJECT_SOURCE_DIR}/src/gpu/*.hpp
  ${PROJECT_SOURCE_DIR}/src/gpu/*.cuh
  ${PROJECT_SOURCE_DIR}/src/core/*.hpp
  ${PROJECT_SOURCE_DIR}/include/posenc/*.hpp)

set(posenc_hip_flags
  -x hip -std=c++20 -O2 -fPIC
  -DPOSENC_WITH_HIP=1
  -I${PROJECT_SOURCE_DIR}/include -I${PROJECT_SOURCE_DIR}/src
  -Wall -Wextra -Wshadow)
if(POSENC_WERROR)
  list(APPEND posenc_hip_flags -Werror)
endif()
foreach(arch IN LISTS POSENC_HIP_ARCHITECTURES)
  list(APPEND posenc_hip_flags --offload-arch=${arch})
endforeach()

set(posenc_hip_objects)
foreach(source IN LISTS POSENC_HIP_SOURCES)
  get_filename_component(name ${source} NAME_WE)
  set(object ${CMAKE_CURRENT_BINARY_DIR}/hip/${name}.o)
  add_custom_command(
    OUTPUT ${object}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/hip
    COMMAND ${POSENC_HIPCC} ${posenc_hip_flags} -c ${source} -o ${object}
    DEPENDS ${source} ${POSENC_HIP_DEPENDS}
    COMMENT "hipcc (${POSENC_HIP_ARCHITECTURES}) ${name}.cu"
    VERBATIM)
  list(APPEND posenc_hip_objects ${object})
endforeach()

set_source_files_properties(${posenc_hip_objects} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
add_library(posenc_hip_check STATIC ${posenc_hip_objects})
set_target_properties(posenc_hip_check PROPERTIES LINKER_LANGUAGE CXX)
