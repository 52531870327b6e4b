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


def word_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary and merge list under which each of `words` is one token.

    Built on the byte vocabulary, so any other text still tokenizes (by characters). For each word in
    turn, BPE is run with the merges so far and, while the word is more than one token, a merge of its
    first two tokens is appended at the lowest priority. Appending at the lowest priority never changes
    an earlier word's segmentation: at each of its steps a merge of higher priority applied.
    """
    vocab = byte_level_vocab()
    merges: list[tuple[str, str]] = []
    rank: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        if not word or any(ord(ch) > 127 or ch.isspace() for ch in word):
            raise ValueError(f"word_merges takes lowercase ASCII words without spaces, got {word!r}")
        tokens = list(word[:-1]) + [word[-1] + "</w>"]
        while len(tokens) > 1:
            pairs = [(rank[p], i) for i, p in enumerate(zip(tokens, tokens[1:])) if p in rank]
            if pairs:
                _, i = min(pairs)
            else:
                i = 0
                rank[(tokens[0], tokens[1])] = len(merges)
                merges.append((tokens[0], tokens[1]))
            tokens[i:i + 2] = [tokens[i] + tokens[i + 1]]
            vocab.setdefault(tokens[i], len(vocab))
    # the special tokens keep the last ids, as in CLIP's own vocabulary
    for special in (BOS, EOS):
        vocab[special] = vocab.pop(special)
    vocab = {tok: i for i, tok in enumerate(vocab)}
    return vocab, merges


def build_word_tokenizer(words: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary holds `words` whole (a world's words are one token each), and
    any other text by characters."""
    vocab, merges = word_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
