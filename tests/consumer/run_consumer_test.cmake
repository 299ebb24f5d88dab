# CTest driver (cmake -P): install the posenc build into a scratch prefix, then configure, build and
# run tests/consumer against it, so the installed package is proven the way users consume it.
foreach(var IN ITEMS POSENC_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer_test.cmake: -D ${var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${name} failed (${rc}):\n${ARGN}\n${out}")
  endif()
  message(STATUS "consumer test: ${name}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
step(install ${CMAKE_COMMAND} --install ${POSENC_BUILD_DIR} --prefix ${prefix} --config ${CONFIG})
# Only the scratch prefix may satisfy find_package: no package registry, no build tree.
step(configure ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
  -DCMAKE_BUILD_TYPE=${CONFIG} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF ${CONSUMER_ARGS})
step(build ${CMAKE_COMMAND} --build ${WORK_DIR}/build --config ${CONFIG})
find_program(consumer posenc_consumer PATHS ${WORK_DIR}/build ${WORK_DIR}/build/${CONFIG} NO_DEFAULT_PATH REQUIRED)
step(run ${consumer})
message(STATUS "${step_output}")
if(NOT EXISTS ${prefix}/bin/posenc)
  message(FATAL_ERROR "consumer test: the install has no bin/posenc")
endif()
