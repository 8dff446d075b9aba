"""Tokenizers and chat formatting.

Three implementations of one small protocol (``encode``, ``decode``, ``vocab_size`` and the
special ids): ``HFTokenizer`` reads a local ``tokenizer.json`` through the ``tokenizers``
package, ``TekkenTokenizer`` (``tekken.py``) Mistral's ``tekken.json``, and
``ByteTokenizer`` is the built-in one the CPU demo uses, UTF-8 bytes plus a few whole-word
tokens for the response format, so any text encodes and the demo model's responses stay
short.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence


class Tokenizer(Protocol):
    """``encode`` takes content: text in which a special token's name (``[INST]``, ``</s>``)
    is text, never the control token, so prompts and traces cannot inject structure; only
    the ``<think>`` tags map to thinking tokens where there are some (``THINK_TAGS``).
    Structure (``ChatFormat``) asks ``special_id`` by name. ``decode`` leaves special ids out."""

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def special_id(self, name: str) -> int | None: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message names the file."""


class ByteTokenizer:
    """UTF-8 bytes, three specials and a few format tokens: 272 ids, no file needed."""

    SPECIALS = ("<pad>", "<s>", "</s>")
    # Whole tokens for the pieces every Magistral-format response contains.
    WORDS = ("<think>", "</think>", "\\boxed{", "```python\n", "```cpp\n", "```\n", "```",
             "\\frac{", "[INST]", "[/INST]", "[SYSTEM]", "[/SYSTEM]", "    ")
    # The plain chat format's structure: whole tokens by ``special_id``, bytes in content.
    STRUCTURE = ("[INST]", "[/INST]", "[SYSTEM]", "[/SYSTEM]")
    pad_id, bos_id, eos_id = 0, 1, 2
    _BYTE0 = len(SPECIALS)

    def __init__(self):
        self._word0 = self._BYTE0 + 256
        self.vocab_size = self._word0 + len(self.WORDS)
        # Longest first, so "```python\n" wins over "```".
        self._words = sorted(((w.encode(), self._word0 + i) for i, w in enumerate(self.WORDS)
                              if w not in self.STRUCTURE), key=lambda p: -len(p[0]))

    def encode(self, text: str) -> list[int]:
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            for word, wid in self._words:
                if data.startswith(word, i):
                    ids.append(wid)
                    i += len(word)
                    break
            else:
                ids.append(self._BYTE0 + data[i])
                i += 1
        return ids

    def special_id(self, name: str) -> int | None:
        return self._word0 + self.WORDS.index(name) if name in self.STRUCTURE else None

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for t in ids:
            t = int(t)
            if self._BYTE0 <= t < self._word0:
                out.append(t - self._BYTE0)
            elif self._word0 <= t < self.vocab_size:
                out += self.WORDS[t - self._word0].encode()
            # specials decode to nothing: they are structure, not text
        return out.decode("utf-8", errors="replace")


# Reasoning models with thinking control tokens (Magistral Small 1.1 and later: [THINK],
# [/THINK]) spell them as the <think> tags the rest of magjax reads and writes (the format
# reward, SFT traces, the system prompt): encode turns the tags into those ids, wherever
# they are (the system prompt's mention of them included), decode the ids back into the
# tags. Tokenizers without both tokens leave the tags as text.
THINK_TAGS = (("<think>", "[THINK]"), ("</think>", "[/THINK]"))


class ThinkTags:
    """A tokenizer's thinking tokens as the ``<think>`` tags, both ways; where it lacks either
    token, nothing (the tags stay text). One implementation for every tokenizer kind."""

    def __init__(self, special_ids: dict[str, int]):
        ids = {tag: special_ids[name] for tag, name in THINK_TAGS if name in special_ids}
        self.ids = ids if len(ids) == len(THINK_TAGS) else {}
        self._tag_of = {i: tag for tag, i in self.ids.items()}
        self._pattern = re.compile("|".join(map(re.escape, self.ids))) if self.ids else None

    def encode(self, text: str, encode_text: Callable[[str], list[int]]) -> list[int]:
        """``encode_text`` on the text between tags, each tag as its token."""
        if self._pattern is None:
            return encode_text(text)
        ids, at = [], 0
        for m in self._pattern.finditer(text):
            ids += encode_text(text[at:m.start()]) + [self.ids[m.group()]]
            at = m.end()
        return ids + encode_text(text[at:])

    def decode(self, ids: list[int], decode_run: Callable[[list[int]], str]) -> str:
        """``decode_run`` on the ids between thinking tokens, each of those as its tag."""
        if not self._tag_of:
            return decode_run(ids)
        out, run = [], []
        for i in ids:
            if i in self._tag_of:
                out += [decode_run(run), self._tag_of[i]]
                run = []
            else:
                run.append(i)
        return "".join(out) + decode_run(run)


def tokenizer_file(path: str | os.PathLike, name: str) -> Path:
    """``path`` itself, or the file ``name`` in the directory ``path``; it must exist."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.exists():
        raise TokenizerError(f"{file}: tokenizer file not found")
    return file


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (local file only; nothing is downloaded)."""

    def __init__(self, path: str | os.PathLike):
        import tokenizers  # imported here so the demo path does not need it

        file = tokenizer_file(path, "tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as err:  # the Rust side raises plain Exceptions
            raise TokenizerError(f"{file}: cannot load tokenizer ({err})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        special = _special_tokens(file.parent)
        self.bos_id = self._id(special.get("bos_token"), file)
        self.eos_id = self._id(special.get("eos_token"), file)
        pad = self._id(special.get("pad_token"), file)
        if self.eos_id is None:
            raise TokenizerError(f"{file}: no eos_token in tokenizer_config.json or special_tokens_map.json")
        self.pad_id = pad if pad is not None else self.eos_id
        self.path = file
        self._special_ids = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        # Content is text: special tokens' names in it are not parsed as the tokens.
        self._tok.encode_special_tokens = True
        self._think = ThinkTags(self._special_ids)

    def _id(self, token, file) -> int | None:
        if token is None:
            return None
        token = token["content"] if isinstance(token, dict) else token
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise TokenizerError(f"{file}: special token {token!r} is not in the vocabulary")
        return tid

    def special_id(self, name: str) -> int | None:
        return self._special_ids.get(name)

    def encode(self, text: str) -> list[int]:
        return self._think.encode(text, lambda piece: self._tok.encode(piece, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._think.decode([int(i) for i in ids], lambda run: self._tok.decode(run, skip_special_tokens=True))


def _special_tokens(directory: Path) -> dict:
    found = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if file.exists():
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise TokenizerError(f"{file}: not valid JSON ({err})") from None
            found |= {k: v for k, v in data.items() if k.endswith("_token") and v is not None}
    return found


def check_vocab(tokenizer: Tokenizer, vocab_size: int):
    """A tokenizer whose ids do not fit the model's embedding is a configuration error."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}")


def load_tokenizer(spec: str) -> Tokenizer:
    """``"byte"`` for the built-in tokenizer; else a ``tokenizer.json`` or ``tekken.json`` file,
    or a directory holding one (``tokenizer.json`` first, as transformers would read it)."""
    if spec == "byte":
        return ByteTokenizer()
    from magjax.models import tekken

    path = Path(spec)
    if path.is_dir():
        if (path / "tokenizer.json").exists():
            return HFTokenizer(path)
        if (path / "tekken.json").exists():
            return tekken.TekkenTokenizer(path)
        raise TokenizerError(f"{path}: no tokenizer.json or tekken.json in this directory")
    if path.suffix == ".json" and path.exists():
        data = tekken.read_json(path)  # parsed once: a tekken file is handed over as read
        if isinstance(data, dict) and tekken.is_tekken(data):
            return tekken.TekkenTokenizer(path, data=data)
    return HFTokenizer(path)


# ----------------------------------------------------------------------------- chat format

SYSTEM_PROMPT = (
    "A user will ask you to solve a task. First draft your thinking process inside "
    "<think> and </think>: think as casually and as long as you need, check your work, "
    "and try more than one approach if the first fails. Then, after </think>, write a "
    "concise, self-contained summary of your reasoning that ends with the final answer: "
    "for a math problem put it in \\boxed{}, for a programming task give the whole "
    "program in one fenced code block naming its language. Write both your thinking and "
    "your summary in the same language as the task."
)


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How a system prompt and a user message become the prompt.

    ``style``: ``plain`` (the demo's), ``mistral`` ([SYSTEM_PROMPT]/[INST] tags), ``chatml``
    (Qwen) or ``llama3`` (header ids). The response starts right after it. The prompt is
    structure (the style's control tokens, by id where the tokenizer has them) around
    content (the system prompt and the user message, encoded as text): a message that
    spells ``[/INST]`` cannot end its instruction.
    """

    style: str = "plain"
    system_prompt: str | None = SYSTEM_PROMPT

    def __post_init__(self):
        if self.style not in ("plain", "mistral", "chatml", "llama3"):
            raise ValueError(f"ChatFormat.style must be plain, mistral, chatml or llama3, got {self.style!r}")

    def segments(self, user: str) -> list[tuple[bool, str]]:
        """The prompt as ``(is_control_token, text)`` pieces, in order."""
        sys, T, C = self.system_prompt, False, True
        if self.style in ("plain", "mistral"):
            open_sys, close_sys = ("[SYSTEM]", "[/SYSTEM]") if self.style == "plain" else ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
            head = [(C, open_sys), (T, sys), (C, close_sys)] if sys else []
            return head + [(C, "[INST]"), (T, user), (C, "[/INST]")]
        if self.style == "chatml":
            turn = lambda role, text: [(C, "<|im_start|>"), (T, f"{role}\n{text}"), (C, "<|im_end|>"), (T, "\n")]  # noqa: E731
            return (turn("system", sys) if sys else []) + turn("user", user) + [(C, "<|im_start|>"), (T, "assistant\n")]
        header = lambda role: [(C, "<|start_header_id|>"), (T, role), (C, "<|end_header_id|>")]  # noqa: E731
        turn = lambda role, text: header(role) + [(T, f"\n\n{text}"), (C, "<|eot_id|>")]  # noqa: E731
        return (turn("system", sys) if sys else []) + turn("user", user) + header("assistant") + [(T, "\n\n")]

    def render(self, user: str) -> str:
        """The prompt as text (for display and logs)."""
        return "".join(text for _, text in self.segments(user))

    def encode(self, tokenizer: Tokenizer, user: str) -> list[int]:
        ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        for control, text in self.segments(user):
            token = tokenizer.special_id(text) if control else None
            # A tokenizer without the control token (the byte tokenizer's few, a small
            # test vocabulary) spells its name.
            ids += [token] if token is not None else tokenizer.encode(text)
        return ids
