# Finds NCCL (header and shared library) and defines the imported target
# eplb_nccl. Honours NCCL_ROOT / NCCL_HOME; looks beside the CUDA toolkit.
if(NOT TARGET eplb_nccl)
  find_path(NCCL_INCLUDE_DIR nccl.h
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_INCLUDE_DIRS}
    PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES nccl
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_LIBRARY_DIR}
    PATH_SUFFIXES lib lib64)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "NCCL not found (set NCCL_ROOT): include=${NCCL_INCLUDE_DIR} lib=${NCCL_LIBRARY}")
  endif()
  add_library(eplb_nccl INTERFACE IMPORTED)
  set_target_properties(eplb_nccl PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${NCCL_LIBRARY}")
endif()
