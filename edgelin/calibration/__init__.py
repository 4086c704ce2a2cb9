"""Recurrent-aware calibration: text streams through the FP step graphs, states carried."""
from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.streams import default_text, make_streams, read_text
from edgelin.calibration.table import CalibrationTable

__all__ = ["CalibrationTable", "calibrate_package", "default_text", "make_streams", "read_text"]
