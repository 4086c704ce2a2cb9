"""Token mixers by family name. A new family: one file beside these, one line here."""
from edgelin.models.layers.delta_net import DeltaNet
from edgelin.models.layers.gated_delta import GatedDelta
from edgelin.models.layers.gla import GLA
from edgelin.models.layers.lin_attn import LinearizedAttention
from edgelin.models.layers.mamba import Mamba
from edgelin.models.layers.mamba2 import Mamba2
from edgelin.models.layers.mlstm import MLSTM
from edgelin.models.layers.retention import Retention
from edgelin.models.layers.short_conv import GatedShortConv
from edgelin.models.layers.swa import SlidingWindowAttention

MIXERS = {
    "gla": GLA,
    "lin_attn": LinearizedAttention,
    "gated_delta": GatedDelta,
    "delta_net": DeltaNet,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "mlstm": MLSTM,
    "retention": Retention,
    "short_conv": GatedShortConv,
    "swa": SlidingWindowAttention,
}
