# hipcc builds every src/gpu/*.cu for POSENC_HIP_TARGETS (cmake/PosencGpu.cmake): into posenc itself (the HIP engine,
# POSENC_WITH_HIP) or into posenc_hip_check beside a CUDA engine (compile check; nothing links it).
#
# CMake's HIP language needs a ROCm CMake package that Debian 12 does not ship in a usable form, so
# hipcc is driven directly: one custom command per source. Non-relocatable HIP objects carry their
# device code and register it from a static constructor, so the host linker links them like any
# object, with the HIP runtime (libamdhip64). Included from src/CMakeLists.txt.
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
foreach(arch IN LISTS POSENC_HIP_TARGETS)
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
    COMMENT "hipcc (${POSENC_HIP_TARGETS}) ${name}.cu"
    VERBATIM)
  list(APPEND posenc_hip_objects ${object})
endforeach()

set_source_files_properties(${posenc_hip_objects} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
if(POSENC_WITH_HIP)
  target_sources(posenc PRIVATE ${posenc_hip_objects})
  target_link_libraries(posenc PUBLIC ${POSENC_AMDHIP64})
else()
  add_library(posenc_hip_check STATIC ${posenc_hip_objects})
  set_target_properties(posenc_hip_check PROPERTIES LINKER_LANGUAGE CXX)
endif()
