"""What the user sees of a run: the live progress view, `metrics.jsonl`, and the HTML report."""

from fedhpc.report.html import write_report
from fedhpc.report.metrics_log import MetricsLog, read_events
from fedhpc.report.progress import ProgressView

__all__ = ["MetricsLog", "ProgressView", "read_events", "write_report"]
