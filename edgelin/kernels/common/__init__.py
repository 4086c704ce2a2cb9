from edgelin.kernels.common.chunk_utils import INTERPRET, autotune, chunk_local_cumsum, next_block, warps_stages

__all__ = ["INTERPRET", "autotune", "chunk_local_cumsum", "next_block", "warps_stages"]
