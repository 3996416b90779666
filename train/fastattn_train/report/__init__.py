"""The paper's comparison across attention kinds (its Tables 1 and 2 and Figure 5) on one
corpus: `run_report(ReportSettings(out=..., kinds=...))`, or `fastattn report` on the command
line."""

from .experiment import ReportSettings, cpu_probes, ensure_corpus, parse_kinds, run_report
from .summary import BASELINE, COLUMNS, phoneme_verdicts

__all__ = ["ReportSettings", "run_report", "parse_kinds", "cpu_probes", "ensure_corpus", "BASELINE", "COLUMNS",
           "phoneme_verdicts"]
