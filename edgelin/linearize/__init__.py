"""Turn a pretrained softmax-attention model into a constant-memory recurrence (`edgelin linearize`).

convert.py builds the student (each attention layer becomes `lin_attn`, keeping its q/k/v/o);
transfer.py fits each new layer's output to the teacher's attention output (attention transfer);
the whole model is then fine-tuned with edgelin.train.loop.train, optionally distilled from the teacher.
"""
from edgelin.linearize.convert import converted_layers, student_config, to_student
from edgelin.linearize.transfer import TransferConfig, attention_transfer

__all__ = ["TransferConfig", "attention_transfer", "converted_layers", "student_config", "to_student"]
