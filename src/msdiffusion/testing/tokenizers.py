"""Tokenizers for random-weight models, written to a folder (no downloads): a CLIP BPE that splits
into characters (or keeps a small world's words whole) and a made-up WordPiece vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["char_tokenizer", "bert_tokenizer"]


def char_tokenizer(directory: str | Path | None = None, words: Sequence[str] = ()):
    """A CLIP BPE tokenizer written to ``directory``: the byte-level alphabet, plus merges that make
    each of ``words`` one token (a small world's vocabulary); everything else is split into
    characters.

    Any prompt tokenises, and offsets map tokens back to characters exactly as with the real CLIP
    BPE.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory or tempfile.mkdtemp(prefix="msdiffusion-tok-"))
    directory.mkdir(parents=True, exist_ok=True)
    # The GPT-2/CLIP byte → unicode alphabet (printable stand-ins for every byte).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    alphabet = [chr(c) for c in chars]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges: list[str] = []
    # Longer words first: their merges take precedence, so "and" never splits "sand".
    for word in sorted(
        dict.fromkeys(w.lower() for w in words if len(w) > 1), key=len, reverse=True
    ):
        # left to right: "b a" → "ba", "ba l" → "bal", "bal l</w>" → "ball</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def bert_tokenizer(directory: Path, size: int) -> Any:
    """A WordPiece tokenizer written to ``directory``: ``size`` made-up words that keep BERT's
    special ids ([CLS] 101, [SEP] 102, "." 1012 — Grounding DINO's text masks look for them),
    plus a few real words and the letters."""
    from transformers import BertTokenizer

    def made_up(i: int) -> str:  # letters only, so random captions still read as words
        return "q" + "".join(chr(97 + (i // 26**k) % 26) for k in range(4))

    vocab = [made_up(i) for i in range(size)]
    for i, token in {
        0: "[PAD]",
        100: "[UNK]",
        101: "[CLS]",
        102: "[SEP]",
        103: "[MASK]",
        1012: ".",
    }.items():
        vocab[i] = token
    words = [
        "a",
        "the",
        "and",
        "of",
        "on",
        "in",
        "with",
        "red",
        "blue",
        "green",
        "yellow",
        "square",
        "circle",
        "dog",
        "cat",
        "man",
        "ball",
        ",",
    ]
    for i, token in enumerate(
        words + [chr(c) for c in range(97, 123)] + ["##" + chr(c) for c in range(97, 123)]
    ):
        vocab[200 + i] = token
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(path))
