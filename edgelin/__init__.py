"""edgelin: linear-recurrent language models on edge CPUs and NPUs."""

__version__ = "0.1.0"
