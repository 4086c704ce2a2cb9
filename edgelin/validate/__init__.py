"""FP vs quantized: loss, KL, top-1 agreement, SNR per layer and state, drift over long horizons."""
from edgelin.validate.metrics import compare_packages
from edgelin.validate.report import report_json, write_report

__all__ = ["compare_packages", "report_json", "write_report"]
