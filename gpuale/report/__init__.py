"""HTML reports of finished gpuale run folders (needs the ``report`` extra).

``write_report(run_dir)`` reads only the files of a run folder and writes ``report.html``
with figures in ``run_dir/figures/``; ``write_study_index`` links several reports.
matplotlib is imported only when a report is written, never on ``import gpuale``.
"""

from gpuale.report.html import (
    INSTALL_HINT,
    ReportUnavailable,
    report_available,
    report_is_current,
    write_report,
    write_study_index,
)

__all__ = [
    "INSTALL_HINT",
    "ReportUnavailable",
    "report_available",
    "report_is_current",
    "write_report",
    "write_study_index",
]
