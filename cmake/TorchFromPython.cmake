# Locate the installed torch by asking the Python that will run fastattn.
#
# We do not use find_package(Torch): its Caffe2 config insists on CUDA libraries
# (nvrtc, cuSPARSE headers, ...) at fixed toolkit paths, which a partial toolkit plus
# the NVIDIA pip packages do not provide. Everything fastattn needs is torch's own
# headers and libraries, which torch reports itself.
#
# Defines the target fastattn_torch and the variables TORCH_VERSION,
# TORCH_CUDA_VERSION (empty for a CPU build) and TORCH_NVIDIA_INCLUDE_DIRS.

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
list(LENGTH _lines _n)
if(_n LESS 6)
  list(APPEND _lines "")  # an empty last line (no NVIDIA packages) is dropped by strip
endif()
list(GET _lines 0 TORCH_VERSION)
list(GET _lines 1 TORCH_CUDA_VERSION)
list(GET _lines 2 _torch_includes)
list(GET _lines 3 _torch_libdir)
list(GET _lines 4 _cxx11_abi)
list(GET _lines 5 TORCH_NVIDIA_INCLUDE_DIRS)
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
