"""Mistral's ``tekken.json`` tokenizer (Mistral Small 3.1, Magistral, Mistral Nemo), read locally.

Mistral ships its newer models' tokenizer as one ``tekken.json``, often without a
``tokenizer.json``. The file holds a tiktoken-style byte-level BPE: ``vocab``, a list of
``{"rank", "token_bytes" (base64), "token_str"}`` in rank order; ``config`` with the
pre-tokenizer ``pattern``, ``default_vocab_size`` and ``default_num_special_tokens``; and,
in files of version 7 and later, ``special_tokens`` (``{"rank", "token_str", ...}``).
Ids ``[0, num_special)`` are the special tokens (those the file names, then
``<SPECIAL_{id}>`` fillers); ordinary token ``r`` (rank ``r`` among the first
``default_vocab_size - num_special`` entries) is id ``num_special + r``. Files without
``special_tokens`` (versions up to 7) take Mistral's original twenty.

Encoding is tiktoken's: the pattern splits the text into pieces; a piece that is itself a
token is that token, else its bytes merge pairwise, always the adjacent pair whose
concatenation has the lowest rank. ``_bpe_tokenizer`` states that as a ``tokenizers`` BPE
model (merges from ranks, whole-piece lookup first), so the Rust encoder does the work.
As in ``mistral_common``, text is text: a special token's name in it (``[INST]``, ``</s>``)
is encoded as characters, and control tokens come only from ``special_id`` (the chat
format's structure). The one exception: files with thinking tokens (``[THINK]``,
``[/THINK]``: Magistral Small 1.1 and later) spell them as ``<think>`` tags both ways
(``tokenizer.THINK_TAGS``). Decoding skips the other special ids.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Sequence

from magjax.models.tokenizer import ThinkTags, TokenizerError, tokenizer_file

# Ids 0..19 of a tekken file that names no special tokens (versions up to 7).
LEGACY_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                   "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                   "[TOOL_CONTENT]")


def is_tekken(data: dict) -> bool:
    """Whether a parsed JSON file is a tekken tokenizer (rather than a ``tokenizer.json``)."""
    return isinstance(data.get("vocab"), list) and isinstance(data.get("config"), dict) and "pattern" in data["config"]


def read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{file}: not valid JSON ({err})") from None


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: byte ``b`` as the character ``tokenizers``' ByteLevel
    pre-tokenizer turns it into (printable Latin-1 bytes stand for themselves, the others
    for code points from 256 up, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _bpe_tokenizer(ranked: list[bytes], pattern: str):
    """A ``tokenizers.Tokenizer`` that encodes as tiktoken does with these ranks (ids = ranks)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    byte_chars = _byte_chars()
    as_text = lambda token: "".join(byte_chars[b] for b in token)  # noqa: E731
    vocab = {as_text(token): rank for rank, token in enumerate(ranked)}
    rank_of = {token: rank for rank, token in enumerate(ranked)}
    # tiktoken merges the adjacent pair whose concatenation ranks lowest; as BPE merges,
    # every split of a token into two tokens is a merge with that token's rank.
    merges = []
    for rank, token in enumerate(ranked):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in rank_of and right in rank_of:
                merges.append((rank, as_text(left), as_text(right)))
    merges.sort(key=lambda m: m[0])
    # ignore_merges: a piece that is itself a token is that token, as in tiktoken.
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], ignore_merges=True)
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


class TekkenTokenizer:
    """A ``tekken.json`` as a magjax tokenizer (local file only; nothing is downloaded)."""

    def __init__(self, path: str | os.PathLike, *, data: dict | None = None):
        """``data``: the file's parsed JSON, where the caller has read it already."""
        file = tokenizer_file(path, "tekken.json")
        data = read_json(file) if data is None else data
        if not isinstance(data, dict) or not is_tekken(data):
            raise TokenizerError(f"{file}: not a tekken tokenizer (no 'vocab' list and 'config.pattern')")
        self.path = file
        config = data["config"]
        try:
            num_special = int(config["default_num_special_tokens"])
            self.vocab_size = int(config["default_vocab_size"])
            pattern = str(config["pattern"])
        except (KeyError, TypeError, ValueError) as err:
            raise TokenizerError(f"{file}: config lacks a valid {err}") from None
        specials = self._specials(data.get("special_tokens"), num_special, file)
        ranked = self._ranked(data["vocab"], self.vocab_size - num_special, file)
        self.num_special = num_special
        self._special_ids = {s: i for i, s in enumerate(specials)}
        self._think = ThinkTags(self._special_ids)
        try:
            self._bpe = _bpe_tokenizer(ranked, pattern)
        except Exception as err:  # the Rust side raises plain Exceptions (a bad pattern, say)
            raise TokenizerError(f"{file}: cannot build the tokenizer ({err})") from None
        self.bos_id = self._special_ids.get("<s>")
        self.eos_id = self._special_ids.get("</s>")
        if self.eos_id is None:
            raise TokenizerError(f"{file}: no '</s>' special token")
        self.pad_id = self._special_ids.get("<pad>", self.eos_id)

    @staticmethod
    def _specials(listed, num_special: int, file: Path) -> list[str]:
        if listed is None:
            named = list(LEGACY_SPECIALS[:num_special])
        else:
            try:
                by_rank = sorted((int(t["rank"]), str(t["token_str"])) for t in listed)
            except (KeyError, TypeError, ValueError) as err:
                raise TokenizerError(f"{file}: special_tokens entry lacks a valid {err}") from None
            if [rank for rank, _ in by_rank] != list(range(len(by_rank))) or len(by_rank) > num_special:
                raise TokenizerError(f"{file}: special_tokens must have ranks 0..n-1 with n <= "
                                  f"default_num_special_tokens ({num_special})")
            named = [s for _, s in by_rank]
        specials = named + [f"<SPECIAL_{i}>" for i in range(len(named), num_special)]
        if len(set(specials)) != len(specials):
            raise TokenizerError(f"{file}: special tokens repeat a string")
        return specials

    @staticmethod
    def _ranked(vocab: list, size: int, file: Path) -> list[bytes]:
        if size < 256 or len(vocab) < size:
            raise TokenizerError(f"{file}: default_vocab_size - default_num_special_tokens = {size} ordinary tokens, "
                              f"but the vocab lists {len(vocab)} (and at least the 256 bytes are needed)")
        ranked = []
        for rank, entry in enumerate(vocab[:size]):
            try:
                if int(entry["rank"]) != rank:
                    raise ValueError(f"rank {entry['rank']} at position {rank}")
                ranked.append(base64.b64decode(entry["token_bytes"], validate=True))
            except (KeyError, TypeError, ValueError) as err:
                raise TokenizerError(f"{file}: vocab entry {rank} is malformed ({err})") from None
        if len(set(ranked)) != len(ranked):
            raise TokenizerError(f"{file}: the vocab repeats a token")
        if set(ranked[:256]) != {bytes([b]) for b in range(256)}:  # every text must encode
            raise TokenizerError(f"{file}: the vocab's first 256 tokens are not the 256 single bytes")
        return ranked

    def special_id(self, name: str) -> int | None:
        return self._special_ids.get(name)

    def _text(self, text: str) -> list[int]:
        return [r + self.num_special for r in self._bpe.encode(text, add_special_tokens=False).ids] if text else []

    def _run(self, ids: list[int]) -> str:
        """Ordinary ids as text; special ids left out."""
        return self._bpe.decode([i - self.num_special for i in ids if self.num_special <= i < self.vocab_size],
                                skip_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self._think.encode(text, self._text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._think.decode([int(i) for i in ids], self._run)
