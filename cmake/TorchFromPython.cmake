# Locate the installed torch by asking the Python that will run fastattn.
#
# We do not use find_package(Torch): its Caffe2 config insists on CUDA libraries
# (nvrtc, cuSPARSE headers, ...) at fixed toolkit paths, which a partial toolkit plus
# the NVIDIA pip packages do not provide. Everything fastattn needs is torch's own
# headers and libraries, which torch reports itself.
#
# Defines the target fastattn_torch and the variables TORCH_VERSION,
# TORCH_CUDA_VERSION (empty for a CPU build) and TORCH_NVIDIA_INCLUDE_DIRS.
#
# at::parallel_for is a header template: with torch's OpenMP backend it parallelises only
# in code compiled with -fopenmp and runs serially elsewhere. So fastattn compiles its C++
# with OpenMP when torch has it and links the OpenMP runtime torch ships (same soname):
# one runtime, sized by torch.set_num_threads, serves both.

find_package(Python 3.11 REQUIRED COMPONENTS Interpreter)

set(_query [=[
import glob, os, torch
from torch.utils import cpp_extension
nvidia = []
try:
    import nvidia as _nv
    for root in _nv.__path__:
        nvidia += sorted(glob.glob(os.path.join(root, "*", "include")))
        nvidia += sorted(glob.glob(os.path.join(root, "*", "*", "include")))
except ImportError:
    pass
print(torch.__version__)
print(torch.version.cuda or "")
print(",".join(cpp_extension.include_paths()))
print(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(",".join(nvidia))
print(int(torch._C.has_openmp))
]=])
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "${_query}"
  OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR
    "fastattn needs torch installed in the Python that builds it (${Python_EXECUTABLE}).\n"
    "Install torch first, then build with: pip install --no-build-isolation .\n${_err}")
endif()
string(REPLACE "\n" ";" _lines "${_out}")
list(GET _lines 0 TORCH_VERSION)
list(GET _lines 1 TORCH_CUDA_VERSION)
list(GET _lines 2 _torch_includes)
list(GET _lines 3 _torch_libdir)
list(GET _lines 4 _cxx11_abi)
list(GET _lines 5 TORCH_NVIDIA_INCLUDE_DIRS)
list(GET _lines 6 _torch_openmp)
string(REPLACE "," ";" _torch_includes "${_torch_includes}")
string(REPLACE "," ";" TORCH_NVIDIA_INCLUDE_DIRS "${TORCH_NVIDIA_INCLUDE_DIRS}")
message(STATUS "fastattn: torch ${TORCH_VERSION} (CUDA: '${TORCH_CUDA_VERSION}') from ${_torch_libdir}")

add_library(fastattn_torch INTERFACE)
# SYSTEM: warnings inside torch's headers are not ours to fix, so -Werror ignores them.
target_include_directories(fastattn_torch SYSTEM INTERFACE ${_torch_includes})
target_compile_definitions(fastattn_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_cxx11_abi})
foreach(_lib c10 torch_cpu)
  find_library(_path_${_lib} NAMES ${_lib} PATHS "${_torch_libdir}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(fastattn_torch INTERFACE "${_path_${_lib}}")
endforeach()
set(TORCH_LIBRARY_DIR "${_torch_libdir}")

if(_torch_openmp)
  find_library(_path_torch_gomp NAMES gomp libgomp.so.1 PATHS "${_torch_libdir}" NO_DEFAULT_PATH)
  if(NOT _path_torch_gomp)
    find_package(OpenMP REQUIRED COMPONENTS CXX)
    set(_path_torch_gomp OpenMP::OpenMP_CXX)
  endif()
  target_compile_options(fastattn_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
  target_link_libraries(fastattn_torch INTERFACE "${_path_torch_gomp}")
  message(STATUS "fastattn: OpenMP, as torch, runtime ${_path_torch_gomp}")
endif()
