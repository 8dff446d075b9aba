"""Language consistency (SPEC.md §2.4): problem, thinking and answer in one language.

The judgement rests on the reasoning: the problem and the thinking must be identified, as
the same language. The answer part joins them when it has words to judge (then it must
agree too); a bare ``\\boxed{55}`` or a code block has none, and is no reason to withhold
the reward.

LaTeX and code are stripped first (they are language-neutral and confuse identifiers);
the language is identified by py3langid, whose model ships inside the package (nothing is
downloaded), restricted to the languages a run expects.
"""

from __future__ import annotations

import functools
import re
import threading

DEFAULT_LANGUAGES = ("en", "fr", "es", "it", "de", "zh", "ru", "pt", "ja", "ko")
MIN_LETTERS = 12  # shorter texts carry too little evidence to judge


def strip_math_and_code(text: str) -> str:
    text = re.sub(r"```.*?(```|$)", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)", " ", text, flags=re.S)
    text = re.sub(r"\\[a-zA-Z]+\*?(\{[^{}]*\})*", " ", text)
    text = re.sub(r"<\/?think>|[{}_^=+\-*/\\|<>\[\]()0-9]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_LOADING = threading.Lock()


def _identifier(languages: tuple[str, ...]):
    # Loading the model takes about a second; the verifier's threads all ask at once at the
    # start of a run, and functools.cache alone would let each of them load it.
    with _LOADING:
        return _load_identifier(languages)


@functools.cache
def _load_identifier(languages: tuple[str, ...]):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
    ident.set_languages(list(languages))
    return ident


def identify(text: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> str | None:
    """ISO 639-1 code of ``text`` after stripping, or None when there is too little text."""
    clean = strip_math_and_code(text)
    if sum(c.isalpha() for c in clean) < MIN_LETTERS:
        return None
    return _identifier(tuple(languages)).classify(clean)[0]


def consistent(problem: str, thinking: str, answer: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> bool:
    """True when the problem and the thinking are identified as one language, and the
    answer, if it has words enough to identify, is in it too.

    A problem or thinking too short to identify earns nothing: agreement needs evidence.
    """
    found = [identify(t, languages) for t in (problem, thinking)]
    if None in found or found[0] != found[1]:
        return False
    said = identify(answer, languages)
    return said is None or said == found[0]
