# Packaging test: `cmake --install` into a temporary prefix, then a tiny
# downstream project (tests/consumer) does find_package(eplb) and links
# eplb::eplb, builds and runs. Host-only: no GPU, no download.
get_filename_component(_eplb_cuda_root "${CUDAToolkit_BIN_DIR}" DIRECTORY)
add_test(NAME packaging_find_package
  COMMAND ${CMAKE_COMMAND}
    -DEPLB_BUILD_DIR=${PROJECT_BINARY_DIR}
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/packaging
    -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/consumer
    -DGENERATOR=${CMAKE_GENERATOR}
    -DC_COMPILER=${CMAKE_C_COMPILER}
    -DCONFIG=$<CONFIG>
    -DCUDA_ROOT=${_eplb_cuda_root}
    -DNCCL_INCLUDE_DIR=${NCCL_INCLUDE_DIR}
    -DNCCL_LIBRARY=${NCCL_LIBRARY}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/packaging_test.cmake)
set_tests_properties(packaging_find_package PROPERTIES LABELS host TIMEOUT 600
                     RESOURCE_LOCK eplb_install)
