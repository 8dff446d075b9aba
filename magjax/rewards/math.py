"""Math answer equivalence: ``equivalent(gold, pred)``.

Answers are normalised (dollar signs, spacing commands, \\dfrac, \\left/\\right, units in
\\text{}, degrees, thousands separators), then read into a small structure: a number or
expression, an equation, an interval (open/closed ends matter), a set (unordered), a tuple
(ordered), a matrix, an unordered list of several answers, or plain text. Two answers are
equal when their structures match and their parts are equal:

* exact numbers compare exactly (so 1/2004! differs from 1/2006!), inexact ones with a
  *relative* tolerance (so 10^-20 differs from 2*10^-20, where an absolute one says equal);
* expressions compare by SymPy simplification of their difference, falling back to
  evaluation at random points;
* a set never equals a tuple, an open interval never a closed one.

Everything here is pure; run it in worker processes (pool.py) for wall-clock and memory
limits, since SymPy can still be slow on legal input.
"""

from __future__ import annotations

import dataclasses
import random
import re

import sympy

from magjax.rewards.latex import LatexError, parse_expression

REL_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Answer:
    kind: str  # expr | equation | interval | set | tuple | matrix | list | text
    parts: tuple = ()
    closed: tuple[bool, bool] = (True, True)  # intervals
    percent: bool = False
    text: str = ""  # plain-text form (text answers), or the variable of "x = 3"
    raw: str = ""  # the normalised source


_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\displaystyle|\\left|\\right|\\big|\\Big|\\limits")
_UNIT_TEXT = re.compile(r"([\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z ]*(?:units?|cm|m|km|kg|g|s|sec|seconds|minutes|hours|"
                        r"degrees|dollars|cents|inches|feet|meters|miles|square|cubic|liters|mph)[a-zA-Z^0-9 ]*\}")


def normalize(text: str) -> str:
    s = text.strip().strip("$").strip()
    s = re.sub(r"^\\\[|\\\]$", "", s).strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("−", "-")
    s = _SPACING.sub(" ", s)
    s = _UNIT_TEXT.sub(r"\1", s)  # units after a number: "10\text{ cm}" is 10
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|°", "", s)
    s = re.sub(r"\\mathrm\{e\}", "e", s)
    s = re.sub(r"\\(?:mathrm|mathbf|textbf|boldsymbol|mathit)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\infinity", "\\infty")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}([, ]\d{3})+(\.\d+)?", s):  # thousands separators: 1,000 or 1\,000
        s = s.replace(",", "").replace(" ", "")
    return s


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Splits at separators outside brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if s.startswith("\\{", i) or c in "([":
            depth += 1
        elif s.startswith("\\}", i) or c in ")]":
            depth -= 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def parse_answer(text: str) -> Answer:
    s = normalize(text)
    try:
        return dataclasses.replace(_parse(s), raw=s)
    except LatexError:
        if re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", s):
            return Answer("text", text=_plain(s), raw=s)
        raise


def _parse(s: str) -> Answer:
    m = re.fullmatch(r"\\text\{(.*)\}", s)
    if m and not re.search(r"\d", m.group(1)):
        return Answer("text", text=_plain(m.group(1)))
    s = re.sub(r"\\text\{\s*(and|or)\s*\}", ",", s)
    percent = bool(re.search(r"\\?%$", s))
    s = re.sub(r"\\?%$", "", s).strip()
    if m := re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s, re.S):
        rows = [r for r in re.split(r"\\\\", m.group(1)) if r.strip()]
        return Answer("matrix", tuple(tuple(_expr(c) for c in r.split("&")) for r in rows))
    if s.startswith("\\{") and s.endswith("\\}"):
        return Answer("set", tuple(_expr(p) for p in _split_top(s[2:-2]) if p))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        inner = _split_top(s[1:-1])
        if len(inner) == 2 and s[0] + s[-1] not in ("()",):
            return Answer("interval", (_expr(inner[0]), _expr(inner[1])), closed=(s[0] == "[", s[-1] == "]"))
        if len(inner) >= 2:
            return Answer("tuple", tuple(_expr(p) for p in inner))
    parts = _split_top(s)
    if len(parts) > 1:
        return Answer("list", tuple(parse_answer(p) for p in parts if p))
    if "\\pm" in s:
        a, b = s.split("\\pm", 1)
        a = a or "0"
        return Answer("list", (parse_answer(f"{a}+({b})"), parse_answer(f"{a}-({b})")))
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if re.fullmatch(r"[a-zA-Z](_\{?\w+\}?)?", lhs.strip()):
            answer = parse_answer(rhs)  # x = 3 answers "3"
            return dataclasses.replace(answer, text=lhs.strip())
        return Answer("equation", (_expr(lhs), _expr(rhs)))
    return Answer("expr", (_expr(s),), percent=percent)


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{" and 1 or (-1 if c in ")]}" else 0)
        if depth < 0:
            return False
    return depth == 0


def _untext(s: str) -> str:
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", s)


def _plain(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def _expr(s: str):
    s = s.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?[eE][-+]?\d+", s):  # scientific notation
        mantissa, exp = re.split(r"[eE]", s)
        s = f"{mantissa}\\cdot10^{{{exp}}}"
    return parse_expression(s)


def _numbers_equal(a, b) -> bool:
    if a.is_Rational and b.is_Rational:
        return a == b
    if a == b:
        return True
    try:
        x, y = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
    except (TypeError, ValueError):
        return False
    return abs(x - y) <= REL_TOL * max(abs(x), abs(y)) or (x == y)


def expr_equal(a, b) -> bool:
    if a == b:
        return True
    if a.is_number and b.is_number:
        if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
            return a == b
        return _numbers_equal(a, b)
    symbols = a.free_symbols | b.free_symbols
    try:
        if sympy.simplify(a - b) == 0:
            return True
    except Exception:  # SymPy raises a zoo of types on odd input
        pass
    rng = random.Random(0)
    for _ in range(4):
        point = {s: sympy.Rational(rng.randint(-97, 97), rng.randint(1, 13)) for s in symbols}
        try:
            if not _numbers_equal(sympy.N(a.subs(point), 30), sympy.N(b.subs(point), 30)):
                return False
        except (TypeError, ValueError, ZeroDivisionError):
            return False
    return True


def answers_equal(gold: Answer, pred: Answer) -> bool:
    if gold.kind == "text" or pred.kind == "text":  # words compare as words, whatever they parsed as
        return _plain(_untext(gold.raw)) == _plain(_untext(pred.raw))
    if gold.kind == "list" or pred.kind == "list":
        g = gold.parts if gold.kind == "list" else (gold,)
        p = pred.parts if pred.kind == "list" else (pred,)
        return _multiset_equal(list(g), list(p), answers_equal)
    if "equation" in (gold.kind, pred.kind):  # "y = 1 - x" answers "x + y = 1"
        gold, pred = _as_equation(gold), _as_equation(pred)
    if gold.kind != pred.kind:
        return False
    if gold.kind == "expr":
        (a,), (b,) = gold.parts, pred.parts
        if gold.percent != pred.percent:  # "50%" answers "50" and "0.5"
            scaled = a / 100 if gold.percent else b / 100
            return expr_equal(a, b) or expr_equal(scaled, b if gold.percent else a)
        return expr_equal(a, b)
    if gold.kind == "equation":
        (gl, gr), (pl, pr) = gold.parts, pred.parts
        return (expr_equal(gl, pl) and expr_equal(gr, pr)) or expr_equal(gl - gr, pl - pr) or \
            expr_equal(gl - gr, pr - pl)
    if gold.kind == "interval":
        return gold.closed == pred.closed and all(map(expr_equal, gold.parts, pred.parts))
    if gold.kind == "set":
        return _multiset_equal(list(gold.parts), list(pred.parts), expr_equal)
    if gold.kind == "tuple":
        return len(gold.parts) == len(pred.parts) and all(map(expr_equal, gold.parts, pred.parts))
    if gold.kind == "matrix":
        return [len(r) for r in gold.parts] == [len(r) for r in pred.parts] and all(
            expr_equal(a, b) for ra, rb in zip(gold.parts, pred.parts) for a, b in zip(ra, rb))
    return False


def _as_equation(answer: Answer) -> Answer:
    if answer.kind == "expr" and answer.text:
        return Answer("equation", (parse_expression(answer.text), answer.parts[0]), raw=answer.raw)
    return answer


def _multiset_equal(gold: list, pred: list, eq) -> bool:
    if len(gold) != len(pred):
        return False
    remaining = list(pred)
    for g in gold:
        for i, p in enumerate(remaining):
            if eq(g, p):
                del remaining[i]
                break
        else:
            return False
    return True


def equivalent(gold: str, pred: str) -> bool:
    """True when ``pred`` (the content of the last \\boxed{}) answers ``gold``."""
    if normalize(gold) == normalize(pred):
        return True
    try:
        return answers_equal(parse_answer(gold), parse_answer(pred))
    except (LatexError, RecursionError):
        return False


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in ``text``, braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return text[i:j]
    return None
