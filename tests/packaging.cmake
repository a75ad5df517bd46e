# Packaging test: `cmake --install` into a temporary prefix, then a tiny
# downstream project (tests/consumer) does find_package(eplb) and links
# eplb::eplb, builds and runs, and compiles an engine's kernels on the
# installed device header. Host-only: no GPU, no download.
get_filename_component(_eplb_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
add_test(NAME packaging_find_package
  COMMAND ${CMAKE_COMMAND}
    -DEPLB_BUILD_DIR=${PROJECT_BINARY_DIR}
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/packaging
    -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/consumer
    -DGENERATOR=${CMAKE_GENERATOR}
    -DC_COMPILER=${CMAKE_C_COMPILER}
    -DCUDA_COMPILER=${CMAKE_CUDA_COMPILER}
    -DCUDA_HOST_COMPILER=${CMAKE_CUDA_HOST_COMPILER}
    -DCONFIG=$<CONFIG>
    -DCUDA_ROOT=${_eplb_cuda_root}
    -DNCCL_INCLUDE_DIR=${NCCL_INCLUDE_DIR}
    -DNCCL_LIBRARY=${NCCL_LIBRARY}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/packaging_test.cmake)
set_tests_properties(packaging_find_package PROPERTIES LABELS host TIMEOUT 600
                     RESOURCE_LOCK eplb_install)

# The shared library exports the C API and nothing else (no C++ symbols that
# could clash with an engine's own copies of the standard library).
find_program(EPLB_NM nm)
if(EPLB_NM)
  add_test(NAME packaging_exports_only_c_api
    COMMAND ${CMAKE_COMMAND} -DNM=${EPLB_NM} -DLIB=$<TARGET_FILE:eplb>
      -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/exports_test.cmake)
  set_tests_properties(packaging_exports_only_c_api PROPERTIES LABELS host)
endif()
