# CTest coverage of what users run: the .npy codec, the CLI end to end and on every shipped config,
# and the installed CMake package (a find_package consumer). Included from tests/CMakeLists.txt.

if(TARGET posenc_cli)
  posenc_add_test(test_npy LABELS cpu SOURCES test_npy.cpp)
  target_link_libraries(test_npy PRIVATE posenc_npy)

  posenc_add_test(test_cli LABELS cpu SOURCES test_cli.cpp)
  target_link_libraries(test_cli PRIVATE posenc_npy)
  target_compile_definitions(test_cli PRIVATE POSENC_CLI_PATH="$<TARGET_FILE:posenc_cli>")
  add_dependencies(test_cli posenc_cli)

  # Smoke tests: `info` on the embedded default and on every configs/*.json, and the main job
  # (`run`, verified against float64, non-zero exit on a bound violation) on the CPU in each dtype
  # and on every config. The GPU run reports "Skipped" where no GPU can be used.
  set(cli_cpu_tests cli.info.default)
  add_test(NAME cli.info.default COMMAND posenc_cli info)
  file(GLOB cli_configs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/configs/*.json)
  foreach(config IN LISTS cli_configs)
    get_filename_component(name ${config} NAME_WLE)
    add_test(NAME cli.info.${name} COMMAND posenc_cli info --config ${config})
    add_test(NAME cli.run.${name} COMMAND posenc_cli run --config ${config} --tokens 256 --device cpu --repeats 3)
    list(APPEND cli_cpu_tests cli.info.${name} cli.run.${name})
  endforeach()
  foreach(dtype IN ITEMS bf16 f16 f32)
    add_test(NAME cli.run.cpu.${dtype} COMMAND posenc_cli run --tokens 256 --device cpu --dtype ${dtype} --repeats 3)
    list(APPEND cli_cpu_tests cli.run.cpu.${dtype})
  endforeach()
  add_test(NAME cli.run.cpu.accurate
    COMMAND posenc_cli run --tokens 256 --device cpu --dtype f32 --numerics accurate --repeats 3)
  list(APPEND cli_cpu_tests cli.run.cpu.accurate)
  set_tests_properties(${cli_cpu_tests} PROPERTIES LABELS cpu)

  add_test(NAME cli.run.gpu COMMAND posenc_cli run --device gpu)
  set_tests_properties(cli.run.gpu PROPERTIES LABELS gpu
    SKIP_REGULAR_EXPRESSION "--device gpu: no GPU available")
endif()

if(POSENC_INSTALL)
  set(consumer_args)
  if(CMAKE_CXX_FLAGS)
    # A library built with sanitizers (the debug preset) links only into code built with them too.
    list(APPEND consumer_args "-DCMAKE_CXX_FLAGS=${CMAKE_CXX_FLAGS}")
  endif()
  if(POSENC_WITH_CUDA)
    # The package's find_dependency(CUDAToolkit) must find the toolkit this build used.
    get_filename_component(cuda_root ${CUDAToolkit_BIN_DIR} DIRECTORY)
    list(APPEND consumer_args -DCUDAToolkit_ROOT=${cuda_root})
  endif()
  add_test(NAME package.find_package_consumer
    COMMAND ${CMAKE_COMMAND}
      -D POSENC_BUILD_DIR=${PROJECT_BINARY_DIR}
      -D CONSUMER_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/consumer
      -D WORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/consumer
      -D GENERATOR=${CMAKE_GENERATOR}
      -D CXX_COMPILER=${CMAKE_CXX_COMPILER}
      -D CONFIG=$<CONFIG>
      "-DCONSUMER_ARGS=${consumer_args}"
      -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run_consumer_test.cmake)
  set_tests_properties(package.find_package_consumer PROPERTIES LABELS cpu TIMEOUT 900)
endif()

# `posenc check --fixture` on golden families (plain RoPE, a layer-typed config, M-RoPE with three
# position streams) must pass on the CPU; test_cli corrupts a fixture copy and expects exit 1.
if(TARGET posenc_cli)
  target_compile_definitions(test_cli PRIVATE POSENC_GOLDEN_DIR="${CMAKE_CURRENT_SOURCE_DIR}/golden"
                                              POSENC_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  foreach(family IN ITEMS llama-3.1 gemma3-global qwen2-vl)
    add_test(NAME cli.check.${family}
      COMMAND posenc_cli check --fixture ${CMAKE_CURRENT_SOURCE_DIR}/golden/${family} --device cpu)
    set_tests_properties(cli.check.${family} PROPERTIES LABELS cpu)
  endforeach()
endif()

# `posenc info` names the GLM generation, its position scheme and mask pattern for GLM configs.
if(TARGET posenc_cli)
  add_test(NAME cli.info.glm_scheme.chatglm-6b COMMAND posenc_cli info --config ${PROJECT_SOURCE_DIR}/configs/chatglm-6b.json)
  set_tests_properties(cli.info.glm_scheme.chatglm-6b PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "GLM +ChatGLM-6B.*positions +2-D \\(position, block\\).*mask +prefix-LM")
  add_test(NAME cli.info.glm_scheme.glm-4-9b-chat COMMAND posenc_cli info --config ${PROJECT_SOURCE_DIR}/configs/glm-4-9b-chat.json)
  set_tests_properties(cli.info.glm_scheme.glm-4-9b-chat PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "GLM +ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B.*mask +causal")
endif()

# `posenc info` shows the MLA geometry (rope slice of the query, the latent cache row) for MLA configs.
if(TARGET posenc_cli)
  add_test(NAME cli.info.mla.deepseek-v3 COMMAND posenc_cli info --config ${PROJECT_SOURCE_DIR}/configs/deepseek-v3.json)
  set_tests_properties(cli.info.mla.deepseek-v3 PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "MLA +query head 192 = nope 128 \\+ rope 64.*cache +layout mla, one row of 576 = latent 512")
endif()
