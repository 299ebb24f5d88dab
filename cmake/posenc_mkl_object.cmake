# Makes posenc_mkl_vml.o: Intel MKL's vmsCos and vmsSin with everything they call, from MKL's static
# libraries, as one relocatable object whose only global symbols are the two entry points, renamed
# posencmkl_vmsCos / posencmkl_vmsSin: no other MKL in the process can collide with them, and
# libposenc.so's version script (which exports posenc_*) keeps them local.
#   cmake -DLINKER=ld -DOBJCOPY=objcopy -DMKL_LIB_DIR=<dir with libmkl_core.a ...> -DOUT=<file> -P posenc_mkl_object.cmake
# src/CMakeLists.txt runs it at build time; scripts/stage-gpu-deps.sh runs it to carry the object
# (about 1.4 MB) to a machine without MKL.
foreach(var LINKER OBJCOPY MKL_LIB_DIR OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "posenc_mkl_object.cmake: -D${var}=... is required")
  endif()
endforeach()
set(archives)
foreach(name mkl_intel_lp64 mkl_sequential mkl_core)  # the LP64 interface, no threads, the kernels
  if(NOT EXISTS "${MKL_LIB_DIR}/lib${name}.a")
    message(FATAL_ERROR "posenc_mkl_object.cmake: ${MKL_LIB_DIR}/lib${name}.a not found")
  endif()
  list(APPEND archives "${MKL_LIB_DIR}/lib${name}.a")
endforeach()
# -m: the inputs are archives only, from which lld (clang's linker: the fuzz preset) cannot infer the
# target; MKL is x86-64 only.
execute_process(
  COMMAND "${LINKER}" -r -m elf_x86_64 -o "${OUT}.tmp" -u vmsCos -u vmsSin --start-group ${archives} --end-group
  RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "posenc_mkl_object.cmake: ${LINKER} -r failed: ${err}")
endif()
# Kept global under both names: GNU objcopy matches --keep-global-symbol after the renaming,
# llvm-objcopy (clang's: the fuzz preset) before it.
execute_process(
  COMMAND "${OBJCOPY}" --redefine-sym vmsCos=posencmkl_vmsCos --redefine-sym vmsSin=posencmkl_vmsSin
          --keep-global-symbol=posencmkl_vmsCos --keep-global-symbol=posencmkl_vmsSin
          --keep-global-symbol=vmsCos --keep-global-symbol=vmsSin "${OUT}.tmp" "${OUT}"
  RESULT_VARIABLE rc ERROR_VARIABLE err)
file(REMOVE "${OUT}.tmp")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "posenc_mkl_object.cmake: ${OBJCOPY} failed: ${err}")
endif()
