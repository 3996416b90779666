#!/usr/bin/env bash
# Runs the test suite in a fresh or reused virtual environment (see setup_venv.sh).
# Arguments go to pytest, e.g. scripts/test.sh -k fixed_attention -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_venv.sh")"
cd "$root"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
