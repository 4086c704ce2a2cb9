from edgelin.kernels.common.chunk_utils import autotune, chunk_local_cumsum, next_block, warps_stages

__all__ = ["autotune", "chunk_local_cumsum", "next_block", "warps_stages"]
