#!/usr/bin/env bash
# The main job, for now: fixed_attention against its pure-PyTorch reference, with timings.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_venv.sh")"
cd "$root"
"$venv/bin/python" scripts/demo.py "$@"
