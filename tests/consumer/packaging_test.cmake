# Driver of the packaging test (cmake -P): installs the build tree into a
# fresh prefix, then configures, builds and runs tests/consumer against that
# prefix only. Needs no GPU and downloads nothing.
#
# Inputs (-D): EPLB_BUILD_DIR, WORK_DIR, CONSUMER_SOURCE_DIR, GENERATOR,
# C_COMPILER, CUDA_COMPILER and CUDA_HOST_COMPILER (optional), CONFIG, CUDA_ROOT,
# NCCL_INCLUDE_DIR, NCCL_LIBRARY.
cmake_minimum_required(VERSION 3.25)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
run_step("cmake --install" ${CMAKE_COMMAND} --install ${EPLB_BUILD_DIR} --prefix ${prefix}
         ${config_args})

foreach(f include/eplb/eplb.h include/eplb/eplb_device.cuh)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "install did not produce ${prefix}/${f}")
  endif()
endforeach()
file(GLOB_RECURSE config_file ${prefix}/*/eplbConfig.cmake)
file(GLOB_RECURSE targets_file ${prefix}/*/eplbTargets.cmake)
if(NOT config_file OR NOT targets_file)
  message(FATAL_ERROR "install did not produce eplbConfig.cmake and eplbTargets.cmake")
endif()

# The project's CUDA compiler (and its host compiler) where given; else the
# consumer finds nvcc as any project would.
set(cuda_args)
if(CUDA_COMPILER)
  list(APPEND cuda_args -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER})
endif()
if(CUDA_HOST_COMPILER)
  list(APPEND cuda_args -DCMAKE_CUDA_HOST_COMPILER=${CUDA_HOST_COMPILER})
endif()
run_step("configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build}
         -G ${GENERATOR} -DCMAKE_C_COMPILER=${C_COMPILER} ${cuda_args} -DCMAKE_BUILD_TYPE=Release
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
         -DCUDAToolkit_ROOT=${CUDA_ROOT} -DNCCL_INCLUDE_DIR=${NCCL_INCLUDE_DIR}
         -DNCCL_LIBRARY=${NCCL_LIBRARY})

# The package must come from the prefix, never from the build tree.
file(STRINGS ${build}/CMakeCache.txt eplb_dir_line REGEX "^eplb_DIR:")
string(REGEX REPLACE "^eplb_DIR:[A-Z]+=" "" eplb_dir "${eplb_dir_line}")
string(FIND "${eplb_dir}" "${prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "consumer found eplb at '${eplb_dir}', not under ${prefix}")
endif()

run_step("build consumer" ${CMAKE_COMMAND} --build ${build})

find_program(consumer_exe consumer PATHS ${build} ${build}/Release NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "consumer executable not found in ${build}")
endif()
run_step("run consumer" ${consumer_exe})
if(NOT step_output MATCHES "consumer: ok")
  message(FATAL_ERROR "consumer printed: ${step_output}")
endif()
message(STATUS "${step_output}")

# The installed command-line tool starts from the prefix (it finds libeplb
# through its runpath, with nothing in the loader's cache or path).
if(EXISTS ${prefix}/bin/eplb)
  run_step("installed eplb --version" ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH
           ${prefix}/bin/eplb --version)
  if(NOT step_output MATCHES "^eplb [0-9]+\\.[0-9]+\\.[0-9]+")
    message(FATAL_ERROR "installed eplb --version printed: ${step_output}")
  endif()
endif()
file(REMOVE_RECURSE ${WORK_DIR})
