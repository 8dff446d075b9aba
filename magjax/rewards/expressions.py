"""Whether two SymPy values are equal, exactly: the comparison behind the math grader.

Symbolic simplification where it is cheap and safe, evaluation at fixed rational points
(both signs for every symbol) at 30 digits where it is not, and a decimal stands for an
exact value only when it carries enough digits (``DECIMAL_DIGITS``). Powers beyond
``MAX_EXPAND_POWER`` are never expanded: such a check would grow without bound.
"""

from __future__ import annotations

import sympy

DECIMAL_DIGITS = 12  # significant digits a decimal needs to stand for an exact value
EXACT_TOL = sympy.Rational(1, 10 ** 20)  # relative, between two exact values evaluated at 30 digits
EVAL_DIGITS = 30
MAX_EXPAND_POWER = 64  # no SymPy expand of (..)^n beyond this: it grows without bound


def _infinite(x) -> bool:
    return x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)


def _numbers_equal(a, b) -> bool:
    if a == b:
        return True
    if (a.is_Rational and b.is_Rational) or _infinite(a) or _infinite(b):
        return False
    try:
        x, y = sympy.N(a, EVAL_DIGITS), sympy.N(b, EVAL_DIGITS)
        diff = abs(x - y)
        scale = max(abs(x), abs(y))
        return bool(diff <= EXACT_TOL * scale) if scale != 0 else bool(diff == 0)
    except (TypeError, ValueError, ArithmeticError):
        return False


def decimal_matches(decimal: str, value) -> bool:
    """A written decimal stands for an exact value: enough significant digits, and the value
    rounded or truncated in the last of them."""
    digits = decimal.lstrip("-").replace(".", "").lstrip("0")
    if len(digits) < DECIMAL_DIGITS or not value.is_number or _infinite(value):
        return False
    try:
        v = sympy.N(value, len(digits) + 10)
        if not v.is_real:
            return False
        place = sympy.Rational(1, 10 ** len(decimal.partition(".")[2]))
        return bool(abs(sympy.Rational(decimal) - v) <= place)
    except (TypeError, ValueError, ArithmeticError):
        return False


def too_big_to_expand(d) -> bool:
    return any(isinstance(p, sympy.Pow) and p.exp.is_Integer and abs(int(p.exp)) > MAX_EXPAND_POWER
               for p in sympy.preorder_traversal(d))


# Evaluation points: non-integers of both signs and several sizes, each symbol its own
# sequence, so |x| differs from x, and sqrt(x^2 y^2) from xy, at some point.
_VALUES = tuple(sympy.Rational(p, q) for p, q in ((7, 5), (-11, 7), (19, 9), (-5, 13), (3, 11), (-23, 6), (41, 17)))


def _points(symbols, count: int = 5):
    ordered = sorted(symbols, key=str)
    for i in range(count):
        yield {s: _VALUES[(i + 3 * j) % len(_VALUES)] for j, s in enumerate(ordered)}


def expr_equal(a, b) -> bool:
    if a == b:
        return True
    if a.is_number and b.is_number:
        return _numbers_equal(a, b)
    d = a - b
    if d == 0:
        return True
    if _infinite(a) or _infinite(b):
        return False
    agreed = 0
    for point in _points(a.free_symbols | b.free_symbols):
        try:
            x, y = a.evalf(EVAL_DIGITS, subs=point), b.evalf(EVAL_DIGITS, subs=point)
        except (TypeError, ValueError, ArithmeticError):
            continue
        if not (x.is_number and y.is_number) or _infinite(x) or _infinite(y):
            continue  # a pole, or a function the evaluator leaves symbolic
        if not _numbers_equal(x, y):
            return False
        agreed += 1
    if agreed >= 3:
        return True
    return _simplifies_to_zero(d)


def _simplifies_to_zero(d) -> bool:
    if too_big_to_expand(d):
        return False
    try:
        return sympy.simplify(d) == 0
    except Exception:  # SymPy raises a zoo of types on odd input
        return False


def proportional(a, b, positive: bool = False) -> bool:
    """Whether a = c b for a non-zero number c (positive when asked): the ratio at the
    evaluation points, or SymPy's cancellation of a / b where evaluation fails."""
    if a == 0 or b == 0:
        return a == b == 0
    if too_big_to_expand(a) or too_big_to_expand(b):
        return False
    ratio, agreed = None, 0
    for point in _points(a.free_symbols | b.free_symbols):
        try:
            x, y = a.evalf(EVAL_DIGITS, subs=point), b.evalf(EVAL_DIGITS, subs=point)
        except (TypeError, ValueError, ArithmeticError):
            continue
        if not (x.is_number and y.is_number) or x == 0 or y == 0 or _infinite(x) or _infinite(y):
            continue  # a root or a pole of one side, or a function left symbolic
        r = x / y
        if ratio is not None and not _numbers_equal(r, ratio):
            return False
        ratio, agreed = r, agreed + 1
    if agreed < 3:
        try:
            ratio = sympy.cancel(sympy.together(a / b))
        except Exception:  # SymPy raises a zoo of types on odd input
            return False
        if ratio.free_symbols:
            return False
    if ratio is None or not ratio.is_number or ratio == 0 or _infinite(ratio):
        return False
    return not positive or bool(ratio.is_positive)
