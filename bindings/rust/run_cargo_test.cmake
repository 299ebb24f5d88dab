# CTest driver (cmake -P): `cargo test` of bindings/rust against this build's libposenc.so, offline and locked, target dir in the build tree; then the example.
foreach(var IN ITEMS LIB_DIR TARGET_DIR MANIFEST)
  if(NOT ${var})
    message(FATAL_ERROR "run_cargo_test.cmake: -D ${var}=... is required")
  endif()
endforeach()
if(NOT CARGO)
  # ctest marks the test skipped on this line (SKIP_REGULAR_EXPRESSION); .ci/run prints it as the reason.
  message("rust.cargo_test: Skipped: no cargo found at configure time (Debian: apt-get install cargo; or rustup)")
  return()
endif()

# PRELOAD: a sanitizer runtime the library needs loaded first, given to the programs cargo runs (not to cargo).
set(runner)
if(PRELOAD)
  set(runner --config "target.'cfg(all())'.runner = ['env', 'LD_PRELOAD=${PRELOAD}']")
endif()

foreach(step IN ITEMS test example)
  if(step STREQUAL "test")
    set(args test)
  else()
    set(args run --example glm_decode)
  endif()
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env POSENC_LIB_DIR=${LIB_DIR} CARGO_TARGET_DIR=${TARGET_DIR}
            ${CARGO} ${args} --offline --locked --manifest-path ${MANIFEST} ${runner}
    RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "rust.cargo_test: cargo ${args} failed (${rc})")
  endif()
endforeach()
