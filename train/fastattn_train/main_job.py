"""The main job: pre-train tiny Audio ALBERT encoders with `full` and `fixed_pattern`
attention on the bundled eSpeak NG corpus, probe them and the log-mel features with the
paper's four probes, time them, and print the report: the `fastattn report` of those two
kinds on the default corpus, with the probes' epochs capped (fastattn_train.report.cpu_probes):
15.6 to 16.4 minutes on 2 CPU cores from a fresh clone, setup included, half of them
probing (docs/main_job.md).

Everything lands in one working folder (the report folder, see `fastattn report --help`) and
is reused when it is there, so a rerun, or a run that was interrupted, picks up where it
stopped: OUT/corpus, OUT/features, OUT/runs/<kind>/seed0, OUT/probes, OUT/timing, and the
report, OUT/report.md, OUT/report.json and its plots.
"""

from __future__ import annotations

from pathlib import Path

from fastattn_train.report import ReportSettings, run_report
from fastattn_train.report.summary import markdown

STEPS = 800  # pre-training steps per model: the tiny config's, about 4 minutes for both on 2 cores


def run(out: Path, kinds: list[str], *, steps: int = STEPS) -> dict:
    # The report's stage lines are the job's progress display; no per-step bars in its log.
    report = run_report(ReportSettings(out=Path(out), kinds=tuple(kinds), steps=steps, overrides=("progress=false",)))
    print(markdown(report))
    return report
