# Finds NCCL (header and shared library) and defines the imported target
# eplb_nccl. Honours NCCL_ROOT / NCCL_HOME; looks beside the CUDA toolkit.
# Sets NCCL_FOUND. Missing NCCL is a fatal error unless EPLB_NCCL_QUIET is
# set (the installed package config sets it, so that a consumer's
# find_package(eplb) reports "not found" instead of stopping).
set(NCCL_FOUND TRUE)
if(NOT TARGET eplb_nccl)
  find_path(NCCL_INCLUDE_DIR nccl.h
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_INCLUDE_DIRS}
    PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES nccl
    HINTS ${NCCL_ROOT} $ENV{NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_LIBRARY_DIR}
    PATH_SUFFIXES lib lib64)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    set(NCCL_FOUND FALSE)
    set(NCCL_NOT_FOUND_MESSAGE
        "NCCL not found (set NCCL_ROOT): include=${NCCL_INCLUDE_DIR} lib=${NCCL_LIBRARY}")
    if(NOT EPLB_NCCL_QUIET)
      message(FATAL_ERROR "${NCCL_NOT_FOUND_MESSAGE}")
    endif()
  else()
    add_library(eplb_nccl INTERFACE IMPORTED)
    set_target_properties(eplb_nccl PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${NCCL_LIBRARY}")
  endif()
endif()
