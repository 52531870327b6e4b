"""An offline byte-level CLIP tokenizer for tiny models: no vocabulary download, real CLIP code path.

transformers 5 builds `CLIPTokenizer` from in-memory `vocab`/`merges` (file arguments are ignored),
so the vocabulary is constructed here: 256 byte symbols, their end-of-word forms, and the two
special tokens. With no merges every character is one token, which keeps captions well under 77.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The GPT-2/CLIP reversible byte -> printable unicode table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def byte_level_vocab() -> dict[str, int]:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_byte_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A working CLIPTokenizer with a 514-token byte vocabulary (ids < 514)."""
    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=model_max_length)
