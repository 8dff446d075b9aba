"""Math answer equivalence: ``equivalent(gold, pred)``.

Answers are normalised (dollar signs, display wrappers, spacing commands, ``\\dfrac``/``\\tfrac``/
``\\cfrac``, ``\\left``/``\\right``, doubled escapes from JSON-escaped data, thousands separators
``12{,}345`` and ``7,\\!250``, units in ``\\text{}``, ``pct``), then read by a small grammar
(latex.py, never ``eval``) into a structure: a value, an equation, an inequality, an
interval, a set, a tuple, a matrix, an unordered list of several answers, or plain text.
Two answers are equal when their structures match and their parts are equal. The policy,
by category; where it says "rejected" the answer earns nothing, which is the side a
grader must err on (a wrong answer rewarded is a signal RL learns to exploit):

* Values. Exact values compare exactly (``1/2004!`` is not ``1/2006!``; ``10^{-20}`` is not
  ``2\\cdot10^{-20}``), irrational ones to 20 significant digits of a 30-digit evaluation;
  expressions by evaluating both to 30 digits at five fixed points where every variable
  takes values of both signs (SymPy simplification of the difference where evaluation
  fails), so ``\\binom{6}{3}`` is 20, ``e^{2\\pi i}`` is 1, ``\\cos(60^\\circ)`` is 1/2,
  ``\\cot^2 t+1`` is ``\\csc^2 t`` and ``\\sqrt{x^2}`` is ``|x|`` (not x). A repeating decimal
  ``0.\\overline{6}`` is exact (2/3).
* Decimals against exact values. A written decimal answers an exact value it does not equal
  exactly only when it shows at least ``expressions.DECIMAL_DIGITS`` (12) significant digits and is the
  value rounded or truncated in its last digit: ``0.142857142857143`` answers 1/7, ``3.14``
  does not answer ``\\pi`` and ``0.3333`` not 1/3. This is also the policy for ``\\approx``:
  ``y \\approx 5`` states the value 5 and is compared like ``y = 5``; the sign never widens
  the tolerance, since an exact gold asks for an exact answer.
* Percent: ``50\\%``, ``50 pct`` answer 50 and 0.5, and 50 and 0.5 answer them (the sign is
  a unit, as the MATH graders strip it). Degrees: ``90^\\circ`` answers 90 (a
  unit at the top level); inside a trigonometric function the sign converts to radians.
* Labelled and restated answers count when the value matches: ``x = 3``, ``g(x)=3``,
  ``PQ=6, RS=2`` (against ``6, 2``, in that order: bare values against named ones keep
  their order), ``(a,b)=(4,1)``, ``y \\in (0,4]``. When both answers name their value, the
  names must agree: ``x = 3`` does not answer ``y = 3``, nor ``x=3, y=2`` ``x=2, y=3``
  (equations still compare as equations: ``x = (y-1)/2`` answers ``y = 2x+1``). A chain of
  equalities ``y = 2+3 = 5`` states its last member, and only when every member is equal
  (an inconsistent chain is rejected).
* Equations are equal when their two sides are, or when one is a non-zero constant
  multiple of the other after moving everything to one side (``3x-6y+2=0`` and
  ``y=\\frac12x+\\frac13``); a labelled answer meets an equation as ``label = value``.
* Inequalities: ``7 > y`` is ``y < 7``. An inequality, or a chain ``0 < y \\le 4``, that is
  linear in one variable (or in one label such as ``h(t)``) is the interval it describes,
  so ``-2y \\le 6`` answers ``y \\ge -3`` and ``[-3, \\infty)``; other inequalities are equal
  when their sides' differences are positive multiples of each other, strictness equal.
* Intervals: open and closed ends matter (``[1,2)`` is not ``(1,2)``); an infinite end is
  always open. Unions compare as unordered collections of intervals.
* Sets are unordered, tuples ordered; a set is never a tuple (``\\{1,2\\}`` is not ``(1,2)``).
  A bare ``(a, b)`` is the pair or the open interval, whichever the other answer is (both
  readings are in use), but never a closed or half-open one.
* Several answers (``1, 2``; ``3, 8, and 13``; ``(2,9) or (9,2)``; ``;`` separators;
  ``\\pm 7``) form an unordered list, equal to another list or to a set with the same
  members; a one-member set answers with its member.
* Text (``\\text{Monday}``, words) compares case-insensitively, ignoring punctuation.
* A multiple-choice gold with its value, ``\\textbf{(C)}\\ 5``, is answered by the letter
  (``C``, ``(C)``, ``\\text{C}``) or by the value (5); another letter or value is rejected.
* Anything outside the grammar or its guards (latex.py; here no polynomial expansion of a
  power beyond ``expressions.MAX_EXPAND_POWER``), and any check that passes its deadline (pool.py), is
  not equivalent.

Everything here is pure; run it in worker processes (pool.py) for wall-clock and memory
limits, since SymPy can still be slow on legal input.
"""

from __future__ import annotations

import dataclasses
import re

import sympy

from magjax.rewards.expressions import decimal_matches, expr_equal, proportional, too_big_to_expand
from magjax.rewards.latex import LatexError, parse_expression



@dataclasses.dataclass(frozen=True)
class Answer:
    kind: str  # expr | equation | relation | interval | set | tuple | matrix | list | text | choice | invalid
    parts: tuple = ()
    closed: tuple[bool, bool] = (True, True)  # intervals
    percent: bool = False
    text: str = ""  # the words of a text answer
    label: str = ""  # the name a value is given: x in "x = 3", y in "y \in (0, 4]"
    raw: str = ""  # the normalised source
    decimal: str = ""  # the source when the answer is one written decimal number
    strict: bool = False  # relations: d < 0 (strict) or d <= 0
    bare: bool = False  # tuples: a bare "(a, b)", also readable as an open interval


INVALID = Answer("invalid")

_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\displaystyle|\\left|\\right|\\big|\\Big|\\bigg|\\Bigg|\\limits")
_UNIT_TEXT = re.compile(r"([\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z ]*(?:units?|cm|m|km|kg|g|s|sec|seconds|minutes|hours|"
                        r"degrees|dollars|cents|inches|feet|meters|miles|square|cubic|liters|mph)[a-zA-Z^0-9 ]*\}"
                        r"(?:\^\{?[23]\}?)?")  # cm^2
_UNIT_BARE = re.compile(r"^(-?[\d.]+)\s+(?:units?|cm|m|km|kg|g|s|sec|seconds|minutes|hours|degrees|dollars|cents|"
                        r"inches|feet|meters|miles|liters|mph)(?:\^\{?[23]\}?)?$")  # "10 cm" (no \text)
_ESCAPED = re.compile(r"\\\\(?=[A-Za-z{}%$,!;: ])")  # "\\frac" in JSON-escaped data is "\frac"


def normalize(text: str) -> str:
    s = text.strip().strip("$").strip()
    if "\\begin" not in s and "\\\\" in s:  # matrices use "\\" for rows; elsewhere it is a doubled escape
        s = _ESCAPED.sub(r"\\", s)
    s = re.sub(r"^\\\[|\\\]$|^\\\(|\\\)$", "", s).strip()
    s = re.sub(r"\\(?:boxed|fbox)\s*(?=\{)", "", s)  # a box inside the answer is just a group
    s = re.sub(r"\\[dtc]frac", r"\\frac", s).replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = s.replace("−", "-").replace("\\neq", "\\ne")
    s = re.sub(r"(\d)\{,\}(?=\d{3})", r"\1", s)  # 12{,}345
    s = re.sub(r"(\d),\s*\\!\s*(?=\d{3})", r"\1", s)  # 7,\! 250,\! 000
    s = _SPACING.sub(" ", s)
    s = _UNIT_TEXT.sub(r"\1", s)  # units after a number: "10\text{ cm}" is 10
    s = re.sub(r"^\\text\{\s*(-?[\d.]+(?:\s+[A-Za-z]+)?)\s*\}$", r"\1", s)  # \text{10}, \text{10 cm}
    s = _UNIT_BARE.sub(r"\1", s)
    s = re.sub(r"\s*(?:\\text\{\s*(?:pct|percent)\s*\}|\bpct\b|\bpercent\b)\s*$", r"\\%", s)
    s = re.sub(r"\\mathrm\{e\}", "e", s)
    s = re.sub(r"\\(?:mathrm|mathbf|textbf|boldsymbol|mathit|operatorname)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\infinity", "\\infty")
    s = s.replace("\\lvert", "|").replace("\\rvert", "|").replace("\\varnothing", "\\emptyset")
    s = s.replace("\\langle", "(").replace("\\rangle", ")")  # a vector <1, 2> is the tuple (1, 2)
    s = re.sub(r"(\^\s*\{\s*\\circ\s*\}|\^\s*\\circ)\s*(?:\\text\{\s*[CF]\s*\}|[CF](?![A-Za-z]))", r"\1", s)  # 30^\circ C
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}([, ]\d{3})+(\.\d+)?", s):  # thousands separators: 1,000 or 1\,000
        s = s.replace(",", "").replace(" ", "")
    return s


def _depths(s: str) -> list[int]:
    """The bracket depth at each character (a bracket counts at its own position)."""
    out, depth, i = [0] * len(s), 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            out[i] = out[i + 1] = depth
            i += 2
            continue
        depth += (s[i] in "([{") - (s[i] in ")]}")
        out[i] = depth
        i += 1
    return out


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Splits at separators outside brackets (any opening bracket closes any closing one:
    half-open intervals)."""
    parts, start, depth = [], 0, _depths(s)
    i = 0
    while i < len(s):
        command_goes_on = sep.startswith("\\") and s[i + len(sep):i + len(sep) + 1].isalpha()  # \cup, not \cupcake
        if s.startswith(sep, i) and depth[i] == 0 and not command_goes_on:
            parts.append(s[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


_RELATION = re.compile(r"\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt|approx|in|neq|ne)(?![a-zA-Z])|<=|>=|=|<|>")
_OPS = {"\\leqslant": "<=", "\\leq": "<=", "\\le": "<=", "<=": "<=", "\\geqslant": ">=", "\\geq": ">=",
        "\\ge": ">=", ">=": ">=", "\\lt": "<", "<": "<", "\\gt": ">", ">": ">", "=": "=", "\\approx": "=",
        "\\in": "in", "\\neq": "!=", "\\ne": "!="}
_GREEK_NAME = r"\\(?:alpha|beta|gamma|delta|theta|phi|varphi|omega|lambda|mu|sigma|tau|rho)(?![A-Za-z])"
_TRIG_NAME = r"\\(?:sin|cos|tan|cot|sec|csc)\s*"
_NAME = ("(?:" + rf"(?:{_TRIG_NAME})?{_GREEK_NAME}|{_TRIG_NAME}[A-Za-z]"  # \theta, \tan\theta, \sin A
         r"|[A-Za-z]+(?:_\{?[\w,]+\}?)?'*(?:\^\{?-1\}?)?(?:\([^()=<>]*\))?"  # x, a_1, f'(x), f^{-1}(x), PQ
         r"|\\overline\{[A-Za-z]+\}|\\text\{[A-Za-z ]+\})")  # \overline{AB}, \text{Area}
_LABEL = re.compile(rf"(?:m\s*)?(?:\\angle\s*)?{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\)")
_WORDS = re.compile(r"(?=.*[A-Za-z]{2})[A-Za-z][A-Za-z .']*[A-Za-z.]")  # a word ("no"), not a product ("x y")


def _split_relations(s: str) -> tuple[list[str], list[str]]:
    """Members and relation operators at the top level: "0 < y \\le 4" -> (["0", "y", "4"], ["<", "<="])."""
    depth = _depths(s)
    members, ops, start = [], [], 0
    for m in _RELATION.finditer(s):
        if depth[m.start()] == 0:
            members.append(s[start:m.start()].strip())
            ops.append(_OPS[m.group()])
            start = m.end()
    members.append(s[start:].strip())
    return members, ops


def parse_answer(text: str) -> Answer:
    s = normalize(text)
    try:
        return dataclasses.replace(_parse(s), raw=s)
    except LatexError:
        if _WORDS.fullmatch(s):
            return Answer("text", text=_plain(s), raw=s)
        raise


def _parse(s: str) -> Answer:
    m = re.fullmatch(r"\\text\{(.*)\}", s)
    if m and not re.search(r"\d", m.group(1)):
        return Answer("text", text=_plain(m.group(1)))
    if _WORDS.fullmatch(s):  # "Monday", "no": words, not products of symbols
        return Answer("text", text=_plain(s))
    if m := re.fullmatch(r"(?:\\text\{\s*)?\(([A-E])\)(?:\s*\})?\s*(\S.*)", s):  # (C) 5: a choice and its value
        return Answer("choice", (m.group(1).lower(), parse_answer(m.group(2))))
    s = re.sub(r"\\text\{\s*(and|or)\s*\}|(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])", ",", s).strip()
    s = re.sub(r"^,|,\s*(?=,)|,$", "", s).strip()  # "3, 8, and 13" left an empty member
    percent = bool(re.search(r"\\?%$", s))
    s = re.sub(r"\\?%$", "", s).strip()
    if m := re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s, re.S):
        rows = [r for r in re.split(r"\\\\", m.group(1)) if r.strip()]
        return Answer("matrix", tuple(tuple(_expr(c) for c in r.split("&")) for r in rows))
    whole = _bracketed(s)
    if whole is None:
        for sep in (";", ","):
            parts = [p for p in _split_top(s, sep) if p]
            if len(parts) > 1:
                return Answer("list", tuple(parse_answer(p) for p in parts))
        parts = _split_top(s, "\\cup")
        if len(parts) > 1:
            return Answer("list", tuple(parse_answer(p) for p in parts))
        members, ops = _split_relations(s)
        if ops:
            return _relation(members, ops)
    if s in ("\\emptyset", "\\{\\}"):
        return Answer("set", ())
    if re.fullmatch(r"\\mathbb\{R\}|\\R|\\mathbb R", s):
        return Answer("interval", (-sympy.oo, sympy.oo), closed=(False, False))
    if whole == "set":
        builder = re.fullmatch(r"\s*([A-Za-z])\s*(?:\||\\mid|:)\s*(.+)", s[2:-2])
        if builder:  # \{x \mid x > 2\}: the set its condition describes
            return dataclasses.replace(parse_answer(builder.group(2)), label=builder.group(1))
        return Answer("set", tuple(parse_answer(p) for p in _split_top(s[2:-2]) if p))
    if whole == "round":
        inner = _split_top(s[1:-1])
        if len(inner) >= 2:
            return Answer("tuple", tuple(_expr(p) for p in inner), bare=len(inner) == 2)
    if whole == "interval":
        inner = _split_top(s[1:-1])
        if len(inner) == 2:
            return _interval(_expr(inner[0]), _expr(inner[1]), s[0] == "[", s[-1] == "]")
        if len(inner) > 2:
            return Answer("tuple", tuple(_expr(p) for p in inner))
    if "\\pm" in s or "\\mp" in s:
        a, b = re.split(r"\\pm|\\mp", s, maxsplit=1)
        a = a.strip() or "0"
        return Answer("list", (parse_answer(f"{a}+({b})"), parse_answer(f"{a}-({b})")))
    decimal = s if re.fullmatch(r"-?\d*\.\d+", s) else ""
    return Answer("expr", (_expr(s),), percent=percent, decimal=decimal)


def _bracketed(s: str) -> str | None:
    """Whether the whole of ``s`` is one bracket: "set", "round" (a tuple or open interval),
    "interval" (at least one square end), or None."""
    if s.startswith("\\{") and s.endswith("\\}") and _balanced(s[2:-2]):
        return "set"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        return "round" if s[0] + s[-1] == "()" else "interval"
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{" and 1 or (-1 if c in ")]}" else 0)
        if depth < 0:
            return False
    return depth == 0


def _interval(lo, hi, left_closed: bool, right_closed: bool) -> Answer:
    return Answer("interval", (lo, hi), closed=(left_closed and lo.is_finite is not False,
                                                right_closed and hi.is_finite is not False))


def _relation(members: list[str], ops: list[str]) -> Answer:
    if "!=" in ops:
        raise LatexError("\\neq answers are not graded")
    if ops == ["in"]:
        if not _LABEL.fullmatch(members[0]):
            raise LatexError(f"{members[0]!r} is not a name")
        return dataclasses.replace(parse_answer(members[1]), label=members[0])
    if set(ops) == {"="}:
        label = members[0] if _LABEL.fullmatch(members[0]) else ""
        values = members[1:] if label else members
        if len(values) == 1:
            return dataclasses.replace(parse_answer(values[0]), label=label)
        parsed = [parse_answer(v) for v in values]
        if not label and len(values) == 2 and any(_free(p) for p in parsed):
            return Answer("equation", (_expr(values[0]), _expr(values[1])))
        # A chain "y = 2 + 3 = 5" states its last member, when every member agrees.
        if all(answers_equal(p, parsed[-1]) for p in parsed[:-1]):
            return dataclasses.replace(parsed[-1], label=label)
        return INVALID
    if "in" in ops or "=" in ops or not (set(ops) <= {"<", "<="} or set(ops) <= {">", ">="}) or len(ops) > 2:
        raise LatexError("a mixed chain of relations")
    sides = [_side(m) for m in members]
    pieces = [_inequality(sides[i], ops[i], sides[i + 1]) for i in range(len(ops))]
    if len(pieces) == 1:
        return pieces[0]
    a, b = pieces
    if a.kind == b.kind == "interval" and a.label == b.label:  # 0 < y <= 4: both ends on y
        return _intersect(a, b)
    raise LatexError("a chain of inequalities in more than one variable")


def _side(text: str):
    """One side of an inequality: a name such as h(t) or PQ is one variable."""
    if _LABEL.fullmatch(text) and not re.fullmatch(r"[A-Za-z](_\{?\w+\}?)?", text) and text not in ("e", "i"):
        return sympy.Symbol(re.sub(r"\s+", "", text))
    return _expr(text)


def _inequality(lhs, op: str, rhs) -> Answer:
    d = lhs - rhs if op in ("<", "<=") else rhs - lhs  # d < 0 or d <= 0
    strict = op in ("<", ">")
    symbols = d.free_symbols
    if len(symbols) == 1:
        (x,) = symbols
        poly = _linear(d, x)
        if poly is not None:
            a, b = poly  # a x + b < 0
            bound = -b / a
            if a > 0:
                return Answer("interval", (-sympy.oo, bound), closed=(False, not strict), label=str(x))
            return Answer("interval", (bound, sympy.oo), closed=(not strict, False), label=str(x))
    if not symbols:
        raise LatexError("an inequality between numbers")
    return Answer("relation", (d,), strict=strict)


def _linear(d, x):
    """(a, b) with d = a x + b and a a non-zero real number, or None."""
    if too_big_to_expand(d):  # Poly expands: (x+1)^9999 would take minutes
        return None
    try:
        poly = sympy.Poly(d, x)
    except sympy.PolynomialError:
        return None
    if poly.degree() != 1:
        return None
    a, b = poly.all_coeffs()
    if not (a.is_number and b.is_number and a.is_real and b.is_real and a != 0):
        return None
    return a, b


def _intersect(a: Answer, b: Answer) -> Answer:
    """The intersection of two intervals of one variable (the two halves of 0 < y <= 4)."""
    ends = []
    for side, pick in ((0, max), (1, min)):
        (x, x_closed), (y, y_closed) = (a.parts[side], a.closed[side]), (b.parts[side], b.closed[side])
        if x == y:
            ends.append((x, x_closed and y_closed))
            continue
        comparison = x > y if pick is max else x < y
        if comparison not in (sympy.true, sympy.false):
            raise LatexError("interval ends that do not compare")
        ends.append((x, x_closed) if comparison == sympy.true else (y, y_closed))
    (lo, lo_closed), (hi, hi_closed) = ends
    return Answer("interval", (lo, hi), closed=(lo_closed, hi_closed), label=a.label)


def _free(answer: Answer) -> bool:
    return answer.kind != "text" and any(getattr(p, "free_symbols", None) for p in answer.parts)


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


def answers_equal(gold: Answer, pred: Answer) -> bool:
    if "invalid" in (gold.kind, pred.kind):
        return False
    if "choice" in (gold.kind, pred.kind):
        choice, other = (gold, pred) if gold.kind == "choice" else (pred, gold)
        letter, value = choice.parts
        if other.kind == "choice":
            return other.parts[0] == letter
        return _plain(_untext(other.raw)) == letter or answers_equal(value, other)
    if gold.kind == "text" or pred.kind == "text":  # words compare as words, whatever they parsed as
        return _plain(_untext(gold.raw or gold.text)) == _plain(_untext(pred.raw or pred.text))
    if gold.label and pred.label and _label(gold.label) != _label(pred.label):
        # Two names: "x = 3" does not answer "y = 3", but "x = (y-1)/2" answers "y = 2x + 1".
        return gold.kind == pred.kind == "expr" and answers_equal(_as_equation(gold), _as_equation(pred))
    collections_ = ("list", "set")
    if gold.kind in collections_ or pred.kind in collections_:
        g = gold.parts if gold.kind in collections_ else (gold,)
        p = pred.parts if pred.kind in collections_ else (pred,)
        if gold.kind == "set" and pred.kind == "set" or len(g) != 1 or len(p) != 1:
            return _members_equal(list(g), list(p))
        return (gold.kind, pred.kind) != ("list", "list") and answers_equal(g[0], p[0])
    if "equation" in (gold.kind, pred.kind):  # "y = 1 - x" answers "x + y = 1"
        gold, pred = _as_equation(gold), _as_equation(pred)
    if gold.kind == pred.kind == "expr" and gold.label and pred.label:
        if _values_equal(gold, pred):
            return True
        gold, pred = _as_equation(gold), _as_equation(pred)  # "x = (y-1)/2" answers "y = 2x + 1"
    if {gold.kind, pred.kind} == {"interval", "tuple"}:  # a bare (a, b) read as an open interval
        tup = gold if gold.kind == "tuple" else pred
        if not tup.bare:
            return False
        gold, pred = (_interval(*tup.parts, False, False) if x is tup else x for x in (gold, pred))
    if gold.kind != pred.kind:
        return False
    if gold.kind == "expr":
        return _values_equal(gold, pred)
    if gold.kind == "equation":
        (gl, gr), (pl, pr) = gold.parts, pred.parts
        return (expr_equal(gl, pl) and expr_equal(gr, pr)) or proportional(gl - gr, pl - pr)
    if gold.kind == "relation":
        return gold.strict == pred.strict and proportional(gold.parts[0], pred.parts[0], positive=True)
    if gold.kind == "interval":
        return gold.closed == pred.closed and all(map(expr_equal, gold.parts, pred.parts))
    if gold.kind == "tuple":
        return len(gold.parts) == len(pred.parts) and all(map(expr_equal, gold.parts, pred.parts))
    if gold.kind == "matrix":
        return [len(r) for r in gold.parts] == [len(r) for r in pred.parts] and all(
            expr_equal(a, b) for ra, rb in zip(gold.parts, pred.parts) for a, b in zip(ra, rb))
    return False


def _values_equal(gold: Answer, pred: Answer) -> bool:
    (a,), (b,) = gold.parts, pred.parts
    if _value_equal(gold, pred, a, b):
        return True
    if gold.percent and not pred.percent:  # "50%" answers "50" and "0.5"
        return _value_equal(gold, pred, a / 100, b)
    if pred.percent and not gold.percent:
        return _value_equal(gold, pred, a, b / 100)
    return False


def _value_equal(gold: Answer, pred: Answer, a, b) -> bool:
    if expr_equal(a, b):
        return True
    if gold.decimal and not pred.decimal:
        return decimal_matches(gold.decimal, b)
    if pred.decimal and not gold.decimal:
        return decimal_matches(pred.decimal, a)
    return False


def _as_equation(answer: Answer) -> Answer:
    if answer.kind == "expr" and answer.label:
        try:
            label = _side(answer.label)
        except LatexError:
            return answer
        return Answer("equation", (label, answer.parts[0]), raw=answer.raw)
    return answer


def _label(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _named(members: list[Answer]) -> bool:
    """Every member labelled, each with its own name: "x=2, y=3" (not the roots "x=1, x=2")."""
    labels = [_label(m.label) for m in members]
    return all(labels) and len(set(labels)) == len(labels)


def _members_equal(gold: list[Answer], pred: list[Answer]) -> bool:
    """Several answers are unordered, but values named on one side and bare on the other
    ("PQ=6, RS=2" against "6, 2") keep their order: "2, 6" would give PQ the value 2."""
    if _named(gold) != _named(pred) and not any(m.label for m in (pred if _named(gold) else gold)):
        return len(gold) == len(pred) and all(map(answers_equal, gold, pred))
    return _multiset_equal(gold, pred, answers_equal)


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


def _unspaced(s: str) -> str:
    """Without spaces, but for those between digits ("1 : 2" is "1:2"; "2 3" is not "23")."""
    return re.sub(r"(?<!\d) | (?!\d)", "", s)


def equivalent(gold: str, pred: str) -> bool:
    """True when ``pred`` (the content of the last \\boxed{}) answers ``gold``."""
    if _unspaced(normalize(gold)) == _unspaced(normalize(pred)):
        return True
    try:
        return answers_equal(parse_answer(gold), parse_answer(pred))
    except (LatexError, RecursionError):
        return False
    except MemoryError:
        raise  # the worker that ran out is replaced (workers.py)
    except Exception:  # SymPy's own errors on odd but legal input: not shown equal, so not equal
        return False


def last_boxed(text: str) -> str | None:
    """The content of the last outermost ``\\boxed{...}`` in ``text``, braces balanced.

    Only ``\\boxed`` counts, as in the format check (format.py): an ``\\fbox`` is not an
    answer. A box nested in another is part of the outer answer: in
    ``\\boxed{\\boxed{1/2}+1}`` the answer is ``\\boxed{1/2}+1`` (3/2), not 1/2.
    """
    found, pos = None, 0
    while (m := BOXED.search(text, pos)) is not None:
        depth = 1
        for j in range(m.end(), len(text)):
            depth += (text[j] == "{") - (text[j] == "}")
            if depth == 0:
                found, pos = text[m.end():j], j + 1
                break
        else:
            return found  # an unclosed box ends the answer part
    return found


BOXED = re.compile(r"\\boxed\s*\{")
