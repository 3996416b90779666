#!/usr/bin/env bash
# Everything fastattn checks on a GPU, in one call: build in place against the installed
# torch, run the test suite (the CUDA tests run there), compute-sanitizer memcheck and
# racecheck over the CUDA kernel tests, then the benchmarks.
#
#   scripts/gpu_check.sh [LOG_DIR]     (default: $OUT, else ./gpu-logs)
#
# Needs torch with CUDA, nvcc, cmake, ninja, scikit-build-core, pytest and hypothesis
# already installed (no package registry is assumed). FASTATTN_CUDA_ARCHS picks the
# architectures (default: this GPU's only, for a fast build).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
logs="${1:-${OUT:-$root/gpu-logs}}"
mkdir -p "$logs"
cd "$root"
python=${PYTHON:-python3}
status=0
step() {  # step NAME COMMAND...: run, log to LOG_DIR/NAME.log, remember failures
  local name=$1; shift
  echo "=== $name: $*"
  local begin=$SECONDS
  if "$@" > "$logs/$name.log" 2>&1; then echo "    ok ($((SECONDS - begin)) s)"; else
    echo "    FAILED ($((SECONDS - begin)) s), last lines of $logs/$name.log:"; tail -n 30 "$logs/$name.log"; status=1; fi
}

arch=$("$python" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))")
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
step build env FASTATTN_CUDA=ON FASTATTN_WERROR=ON FASTATTN_CUDA_ARCHS="${FASTATTN_CUDA_ARCHS:-$arch}" \
  "$python" -m pip install --no-build-isolation --no-deps --force-reinstall -v .
# The training package's tests run on the CPU in CI; its dependencies (librosa, eSpeak NG)
# are not on a GPU machine without a package registry.
step tests "$python" -m pytest -p no:cacheprovider -ra tests --ignore-glob='tests/test_train_*'
# The sanitizers slow every kernel a hundredfold: the CUDA cases without compile or hypothesis.
kernel_tests=(-p no:cacheprovider -q -x tests/test_fixed_attention.py tests/test_lsh.py tests/test_sparse_attention.py
              -k "cuda and not compile and not random_shapes and not hash_matches and not topk_matches")
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$python" -m pytest "${kernel_tests[@]}"
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$python" -m pytest "${kernel_tests[@]}"
step bench_lsh "$python" bench/lsh.py --device cuda --markdown "$logs/benchmarks.md"
# Random lists stop at T = 8192: their dense (B, H, T, T) mask for SDPA needs 26 GB at 16384.
step bench_sparse_attention_random "$python" bench/sparse_attention.py --device cuda --dtype bfloat16 \
  --patterns random --lengths 1024,4096,8192 --markdown "$logs/benchmarks.md"
step bench_sparse_attention_strided "$python" bench/sparse_attention.py --device cuda --dtype bfloat16 \
  --patterns strided --lengths 1024,4096,8192,16384 --markdown "$logs/benchmarks.md"
step bench_encoder "$python" bench/encoder.py --device cuda --markdown "$logs/benchmarks.md"
for dtype in bfloat16 float16; do
  step "bench_fixed_attention_$dtype" "$python" bench/fixed_attention.py --device cuda --dtype "$dtype" \
    --markdown "$logs/benchmarks.md"
done
exit $status
