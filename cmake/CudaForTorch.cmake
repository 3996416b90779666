# Decide whether to build the CUDA kernels and set up nvcc for torch's headers.
#
# AUTO builds them when torch has CUDA and nvcc is found; ON fails loudly when either
# is missing; OFF never builds them. Defines FASTATTN_WITH_CUDA and, when it is true,
# the target fastattn_torch_cuda.

set(FASTATTN_WITH_CUDA OFF)
if(NOT FASTATTN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(TORCH_CUDA_VERSION AND CMAKE_CUDA_COMPILER)
    set(FASTATTN_WITH_CUDA ON)
  elseif(FASTATTN_CUDA STREQUAL "ON")
    message(FATAL_ERROR
      "FASTATTN_CUDA=ON, but torch ${TORCH_VERSION} has CUDA: '${TORCH_CUDA_VERSION}' and "
      "nvcc: '${CMAKE_CUDA_COMPILER}'. Install a CUDA build of torch and put nvcc on the PATH "
      "(or set CUDACXX), or build with FASTATTN_CUDA=OFF.")
  else()
    message(STATUS "fastattn: building without CUDA (torch CUDA: '${TORCH_CUDA_VERSION}', nvcc: '${CMAKE_CUDA_COMPILER}')")
  endif()
endif()

set(FASTATTN_BUILT_WITH_CUDA_PY False)
set(FASTATTN_CUDA_ARCHS_BUILT "")
if(NOT FASTATTN_WITH_CUDA)
  return()
endif()

# bfloat16 tensor-core products (WMMA) need compute capability 8.0 (Ampere) or newer.
foreach(_arch ${FASTATTN_CUDA_ARCHS})
  string(REGEX MATCH "^[0-9]+" _number "${_arch}")
  if(_number LESS 80)
    message(FATAL_ERROR "FASTATTN_CUDA_ARCHS: fastattn's CUDA kernels need architecture 80 or newer, got '${_arch}'")
  endif()
endforeach()

# Set before enable_language so CMake's compiler check does not pick its own default.
set(CMAKE_CUDA_ARCHITECTURES ${FASTATTN_CUDA_ARCHS})
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(FASTATTN_BUILT_WITH_CUDA_PY True)
set(FASTATTN_CUDA_ARCHS_BUILT "${FASTATTN_CUDA_ARCHS}")
message(STATUS "fastattn: CUDA ${CUDAToolkit_VERSION} kernels for architectures ${FASTATTN_CUDA_ARCHS}")

add_library(fastattn_torch_cuda INTERFACE)
find_library(_path_c10_cuda NAMES c10_cuda PATHS "${TORCH_LIBRARY_DIR}" NO_DEFAULT_PATH REQUIRED)
target_link_libraries(fastattn_torch_cuda INTERFACE "${_path_c10_cuda}" CUDA::cudart)
# A partial toolkit lacks some library headers that torch's CUDA headers include
# (cusparse.h, cublas_v2.h); the NVIDIA pip packages beside torch carry them.
# They come after the toolkit's own include folder, so a full toolkit wins.
target_include_directories(fastattn_torch_cuda SYSTEM INTERFACE
  ${CUDAToolkit_INCLUDE_DIRS} ${TORCH_NVIDIA_INCLUDE_DIRS})
# The same defines torch.utils.cpp_extension passes to nvcc: torch's Half and BFloat16
# bring their own conversions, which clash with CUDA's.
target_compile_options(fastattn_torch_cuda INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
    --expt-relaxed-constexpr
    $<$<BOOL:${FASTATTN_WERROR}>:--Werror=all-warnings -Xcompiler=-Wall,-Werror>>)
