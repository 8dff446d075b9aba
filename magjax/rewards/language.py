"""Language consistency (SPEC.md §2.4): problem, thinking and answer in one language.

LaTeX and code are stripped first (they are language-neutral and confuse identifiers);
the language is identified by py3langid, whose model ships inside the package (nothing is
downloaded), restricted to the languages a run expects.
"""

from __future__ import annotations

import functools
import re

DEFAULT_LANGUAGES = ("en", "fr", "es", "it", "de", "zh", "ru", "pt", "ja", "ko")
MIN_LETTERS = 12  # shorter texts carry too little evidence to judge


def strip_math_and_code(text: str) -> str:
    text = re.sub(r"```.*?(```|$)", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)", " ", text, flags=re.S)
    text = re.sub(r"\\[a-zA-Z]+\*?(\{[^{}]*\})*", " ", text)
    text = re.sub(r"<\/?think>|[{}_^=+\-*/\\|<>\[\]()0-9]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


@functools.cache
def _identifier(languages: tuple[str, ...]):
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
    """True when all three parts are identified, as the same language.

    A part too short to identify earns nothing: agreement needs evidence.
    """
    found = [identify(t, languages) for t in (problem, thinking, answer)]
    return None not in found and len(set(found)) == 1
