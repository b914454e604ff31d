"""Defaults of ``oneepoch prepare``, importable without numpy (for a fast ``--help``)."""

DEFAULT_VOCAB_SIZE = 4096  # small: the output head dominates the cost of small CPU models
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_SHARD_TOKENS = 64 << 20
DEFAULT_MAX_DOC_CHARS = 1 << 20
DEFAULT_SAMPLE_CHARS = 32 << 20  # text the BPE is trained on, at most
