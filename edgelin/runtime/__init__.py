"""The torch-free runtime: load a model package and generate (numpy + a back end only)."""

from edgelin.runtime.backends import BACKENDS, Backend, available_backends, get_backend, register_backend
from edgelin.runtime.batch import BatchDecoder
from edgelin.runtime.chat import Chat
from edgelin.runtime.chat_template import ChatTemplate
from edgelin.runtime.conversation import Conversation
from edgelin.runtime.generate import Generation, generate, generate_text
from edgelin.runtime.prefix_cache import CachedPrefix, Prefill, PrefixCache, prefill
from edgelin.runtime.package import (
    FORMAT_VERSION, GraphSpec, Manifest, StateSpec, package_size_bytes, read_package, write_package,
)
from edgelin.runtime.sampling import GREEDY, SamplingConfig, package_sampling, probabilities, sample
from edgelin.runtime.session import Session, State
from edgelin.runtime.speculative import (
    Drafter, ModelDrafter, PromptLookupDrafter, SpeculativeGeneration, speculative_generate,
)
from edgelin.runtime.state import load_state, save_state, state_fingerprint
from edgelin.runtime.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, encode_prompt, load_tokenizer

__all__ = [
    "BACKENDS", "Backend", "available_backends", "get_backend", "register_backend",
    "BatchDecoder", "Conversation", "CachedPrefix", "Prefill", "PrefixCache", "prefill",
    "Drafter", "ModelDrafter", "PromptLookupDrafter", "SpeculativeGeneration", "speculative_generate",
    "Chat", "ChatTemplate",
    "Generation", "generate", "generate_text",
    "FORMAT_VERSION", "GraphSpec", "Manifest", "StateSpec", "package_size_bytes", "read_package", "write_package",
    "GREEDY", "SamplingConfig", "package_sampling", "probabilities", "sample",
    "Session", "State",
    "load_state", "save_state", "state_fingerprint",
    "ByteTokenizer", "HFTokenizer", "Tokenizer", "encode_prompt", "load_tokenizer",
]
