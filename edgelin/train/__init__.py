"""Training: byte-level data, the training loop (single process or torchrun + DDP), QAT."""
from edgelin.train.data import ByteData
from edgelin.train.loop import TrainConfig, TrainResult, evaluate, train
from edgelin.train.qat import QATScheme, prepare_qat, quantize_weights_

__all__ = ["ByteData", "QATScheme", "TrainConfig", "TrainResult", "evaluate", "prepare_qat", "quantize_weights_", "train"]
