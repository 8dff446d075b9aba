"""Writes tests/data/tekken/: a small tekken.json and Mistral's own encodings of test texts.

Run once with mistral_common installed (CI does not need it):

    python tests/data/make_tekken_fixture.py

The tokenizer is Mistral's tekken_240911.json (shipped inside mistral_common) cut to its
first 2,000 ordinary tokens, with a version-11 ``special_tokens`` list (the layout of
Magistral's files: the twenty original specials, then [ARGS], [CALL_ID], [THINK] and
[/THINK] among the filler ids). ``reference.json`` holds, per text, the ids of
``Tekkenizer.encode`` and of ``decode``; and, per (system, user) pair, the prompt ids of
``MistralTokenizer.encode_chat_completion``, which magjax's ``ChatFormat("mistral")`` must
reproduce. The texts cover scripts, digits, whitespace runs, code and LaTeX, and a
``<think>`` trace beside its pieces (magjax spells [THINK] and [/THINK] as those tags;
mistral_common encodes the tags as text).
"""

import json
import pathlib
import random

import mistral_common
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

OUT = pathlib.Path(__file__).parent / "tekken"
SOURCE = pathlib.Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
ORDINARY = 2000
NUM_SPECIAL = 1000
NAMED = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
         "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
         "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
LATER = {32: "[ARGS]", 33: "[CALL_ID]", 34: "[THINK]", 35: "[/THINK]"}

TEXTS = [
    "Hello, world!", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\r\n\r\nend",
    "Quel est le résultat de 12 × 7 ? Réponds en français.", "Wie viel ist 3/4 + 1/8? Straße, Ärger",
    "¿Cuántos números primos hay menores que 100?", "数学問題：x² + 2x + 1 = 0 を解け。",
    "Привет, как дела? 1234567890", "مرحبا بالعالم", "emoji 🙂🚀👍🏽 and a ZWJ family 👩‍👩‍👧",
    "\\frac{1}{2} + \\sqrt{x^2} = \\boxed{42}", "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))",
    "#include <bits/stdc++.h>\nint main(){std::cout<<1<<'\\n';}",
    "<think>Let me think: 2+2=4.</think>\nThe answer is \\boxed{4}.", "Let me think: 2+2=4.",
    "\nThe answer is \\boxed{4}.", "a" * 120, " " * 40 + "x", "\n\n\n\n",
    "MixedCASEWordsAndCamelCaseIdentifiersHTTPServer", "1,000,000.00 and 3.14159e-10", "x" + "\u0301" * 5,
    "I'm sure we'll see they've gone", "___--==++**//\\\\||",
]
CHATS = [
    ("You are a careful solver. Put the answer in \\boxed{}.", "What is 17 * 23?"),
    ("Réfléchis d'abord, puis réponds en français.", "Combien font 2 + 2 ?"),
    ("", "Write a Python program that prints the first 10 primes."),
]


def main():
    source = json.loads(SOURCE.read_text())
    specials = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(NAMED)]
    specials += [{"rank": i, "token_str": LATER.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                 for i in range(len(NAMED), NUM_SPECIAL)]
    data = {"config": {**source["config"], "num_vocab_tokens": ORDINARY,
                       "default_vocab_size": NUM_SPECIAL + ORDINARY, "version": "v11"},
            "vocab": source["vocab"][:ORDINARY], "special_tokens": specials}
    OUT.mkdir(exist_ok=True)
    (OUT / "tekken.json").write_text(json.dumps(data, ensure_ascii=False))

    tok = Tekkenizer.from_file(OUT / "tekken.json")
    rng = random.Random(0)
    def random_text():
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FF), rng.randint(0x4E00, 0x4FFF),
                                       rng.randint(0x1F300, 0x1F64F), 10, 32])) for _ in range(rng.randint(1, 30)))

    texts = TEXTS + [random_text() for _ in range(40)]
    ids = [tok.encode(t, bos=False, eos=False) for t in texts]
    chat_tok = MistralTokenizer.from_file(str(OUT / "tekken.json"))
    chats = []
    for system, user in CHATS:
        messages = ([SystemMessage(content=system)] if system else []) + [UserMessage(content=user)]
        tokens = chat_tok.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
        chats.append({"system": system, "user": user, "ids": tokens})
    reference = {"texts": texts, "ids": ids, "decoded": [tok.decode(i) for i in ids], "chats": chats,
                 "mistral_common": mistral_common.__version__}
    (OUT / "reference.json").write_text(json.dumps(reference, ensure_ascii=False, indent=0))


if __name__ == "__main__":
    main()
