#!/usr/bin/env bash
# Makes a virtual environment with torch, builds fastattn into it and prints its path.
#
#   FASTATTN_VENV   where (default: .venv in the source folder)
#   FASTATTN_TORCH  which torch (default: torch==2.13.0, the CPU build); set it to the
#                   torch your machine should run, e.g. "torch==2.14.1" for CUDA 13.0
#   FASTATTN_CUDA, FASTATTN_CUDA_ARCHS, FASTATTN_WERROR  passed on to the build (README)
#
# Re-running it reuses the environment and rebuilds fastattn, so edits to csrc/ land.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTATTN_VENV:-$root/.venv}"
torch_spec="${FASTATTN_TORCH:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
# --no-compile: byte-compiling every installed module (torch's thousands) took 40 of the 70 s
# of the install on 2 cores; Python compiles the few a run imports on first use instead.
install=("$venv/bin/python" -m pip --disable-pip-version-check -q install --no-compile)
# The build tools, then the test and train extras of pyproject.toml.
"${install[@]}" "$torch_spec" numpy scikit-build-core ninja pytest hypothesis \
  librosa soundfile soxr espeakng-loader==0.2.4 pyyaml scikit-learn matplotlib >&2
# --no-build-isolation: build against the torch above, the one that will load the library.
"${install[@]}" --no-build-isolation --no-deps --force-reinstall "$root" >&2
echo "$venv"
