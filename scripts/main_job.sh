#!/usr/bin/env bash
# The main job, from a fresh clone: sets up .venv (torch, fastattn, the training package),
# builds the default eSpeak NG corpus, pre-trains tiny encoders with full and fixed_pattern
# attention, probes them and the log-mel baseline, times them, and prints the report
# (`fastattn report` of those two kinds: Table 2 and Table 1 layouts, plots in the folder).
# 15.6 to 16.4 minutes on 2 CPU cores (docs/main_job.md). Arguments go to `fastattn main`
# (see --help); the working folder (default runs/main) is reused, so a rerun resumes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_venv.sh")"
cd "$root"
"$venv/bin/fastattn" main "$@"
