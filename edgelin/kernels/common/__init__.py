from edgelin.kernels.common.chunk_utils import chunk_local_cumsum, next_block

__all__ = ["chunk_local_cumsum", "next_block"]
