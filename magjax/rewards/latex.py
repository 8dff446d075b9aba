"""A small LaTeX math parser that builds SymPy objects directly, never ``eval``.

Graders built on ``parse_expr``/``sympify`` execute model text as Python; this parser only
knows a fixed grammar (numbers, repeating decimals ``0.\\overline{6}``, + - * / ^, implicit
products, \\frac, \\sqrt, \\binom, factorial, absolute values, floor and ceiling, constants
(``i`` is the imaginary unit), Greek letters as variables, functions with powers and inverses
(``\\cot^2 t``, ``\\sin^{-1} x``, ``\\log_2 8``), degrees inside trigonometric functions) and
refuses anything else with ``LatexError``. Guards stop expressions that would take SymPy
minutes or gigabytes (exponent towers, huge factorials and binomials) before SymPy sees them.
"""

from __future__ import annotations

import re

import sympy

MAX_CHARS = 1000
MAX_DEPTH = 60
MAX_EXPONENT = 10_000  # |integer exponent| SymPy may evaluate exactly
MAX_FACTORIAL = 5_000
MAX_BINOMIAL_N = 1_000_000


class LatexError(ValueError):
    """Text outside the grammar, or outside the guards (too long, too deep, too big)."""


_TOKEN = re.compile(r"""
    (?P<deg>\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![a-zA-Z]))
  | (?P<num>\d+(?:\.\d*)?|\.\d+)
  | (?P<cmd>\\[a-zA-Z]+)
  | (?P<op>[-+*/^!(){}\[\]_|,=])
  | (?P<letter>[a-zA-Z])
  | (?P<space>\s+)
""", re.VERBOSE)

FUNCTIONS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "ln": sympy.log, "log": sympy.log,
             "exp": sympy.exp, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
             "sec": sympy.sec, "csc": sympy.csc, "cot": sympy.cot}
TRIG = {"sin", "cos", "tan", "sec", "csc", "cot"}  # their arguments take degrees: \cos 60^\circ
INVERSE = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan, "sec": sympy.asec, "csc": sympy.acsc,
           "cot": sympy.acot}
CONSTANTS = {"pi": sympy.pi, "infty": sympy.oo, "e": sympy.E}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
         "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
         "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"}  # variables


def tokenize(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_CHARS:
        raise LatexError(f"answer longer than {MAX_CHARS} characters")
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise LatexError(f"unexpected character {text[pos]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group()))
    depth = 0
    for _, t in tokens:
        depth += t in "({[" and 1 or (-1 if t in ")}]" else 0)
        if depth > MAX_DEPTH:
            raise LatexError(f"brackets nested deeper than {MAX_DEPTH}")
    return tokens


class _Parser:
    """Recursive descent: sum := product (('+'|'-') product)*; product := power (('*'|'/'|implicit) power)*;
    power := unary ('^' unary)? with postfix '!'; atoms: numbers, letters, groups, commands."""

    def __init__(self, tokens):
        self.tokens, self.i = tokens, 0
        self.trig_depth = 0  # inside a trigonometric function's argument, a degree sign means pi/180

    def peek(self, k=0):
        j = self.i + k
        return self.tokens[j] if j < len(self.tokens) else (None, None)

    def take(self, value=None):
        kind, tok = self.peek()
        if tok is None or (value is not None and tok != value):
            raise LatexError(f"expected {value!r}, found {tok!r}")
        self.i += 1
        return kind, tok

    def parse(self):
        expr = self.sum()
        if self.i != len(self.tokens):
            raise LatexError(f"unexpected {self.peek()[1]!r}")
        return expr

    def sum(self):
        expr = self.product()
        while self.peek()[1] in ("+", "-", "\\pm"):
            op = self.take()[1]
            if op == "\\pm":
                raise LatexError("\\pm inside an expression")
            rhs = self.product()
            expr = expr + rhs if op == "+" else expr - rhs
        return expr

    def _starts_atom(self):
        kind, tok = self.peek()
        if tok is None:
            return False
        if kind in ("num", "letter"):
            return True
        if kind == "cmd":
            return tok[1:] in ("frac", "sqrt", "binom", "lfloor", "lceil") or tok[1:] in CONSTANTS or \
                tok[1:] in FUNCTIONS or tok[1:] in GREEK
        return tok in ("(", "{")

    def product(self):
        expr = self.power()
        while True:
            tok = self.peek()[1]
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                expr = expr * self.power()
            elif tok in ("/", "\\div"):
                self.take()
                expr = expr / self.power()
            elif self._starts_atom():  # implicit product: 2\pi, 3x, (a)(b)
                expr = expr * self.power()
            else:
                return expr

    def power(self):
        if self.peek()[1] in ("-", "+"):
            sign = self.take()[1]
            inner = self.power()
            return -inner if sign == "-" else inner
        base = self.postfix(self.atom())
        if self.peek()[1] == "^":
            self.take()
            exponent = self.postfix(self.atom(exponent=True)) if self.peek()[1] not in ("-", "+") else self.power()
            return _guarded_pow(base, exponent)
        return base

    def postfix(self, expr):
        while self.peek()[1] == "!" or self.peek()[0] == "deg":
            kind, _ = self.take()
            if kind == "deg":  # a unit at the top level (90^\circ answers 90), an angle inside \cos
                expr = expr * sympy.pi / 180 if self.trig_depth else expr
                continue
            if not (expr.is_Integer and 0 <= expr <= MAX_FACTORIAL):
                raise LatexError("factorial of a non-integer or too large a number")
            expr = sympy.factorial(expr)
        return expr

    def group(self):
        self.take("{")
        expr = self.sum()
        self.take("}")
        return expr

    def atom(self, exponent=False):
        kind, tok = self.take()
        if kind == "num":
            # Exponents like 10^23 bind one digit in LaTeX; longer ones need braces.
            if exponent and len(tok) > 1 and "." not in tok:
                self.tokens.insert(self.i, ("num", tok[1:]))
                tok = tok[0]
            if self.peek()[1] == "\\overline" and not exponent:  # 0.1\overline{6}: a repeating decimal
                return self._repeating(tok)
            return sympy.Rational(tok)
        if kind == "letter":
            if self.peek()[1] == "_":  # x_1 is one symbol
                self.take()
                sub = self.take()[1] if self.peek()[1] != "{" else "".join(t for _, t in self._raw_group())
                return sympy.Symbol(f"{tok}_{sub}")
            return {"e": sympy.E, "i": sympy.I}.get(tok) or sympy.Symbol(tok)
        if tok == "|":
            expr = self.sum()
            self.take("|")
            return sympy.Abs(expr)
        if tok in ("\\lfloor", "\\lceil"):
            expr = self.sum()
            self.take("\\rfloor" if tok == "\\lfloor" else "\\rceil")
            return sympy.floor(expr) if tok == "\\lfloor" else sympy.ceiling(expr)
        if tok == "(":
            expr = self.sum()
            self.take(")")
            return expr
        if tok == "{":
            self.i -= 1
            return self.group()
        if kind == "cmd":
            name = tok[1:]
            if name == "frac":  # \frac12 takes single-character arguments
                return self.argument() / self.argument()
            if name == "binom":
                return _guarded_binomial(self.argument(), self.argument())
            if name == "sqrt":
                if self.peek()[1] == "[":
                    self.take("[")
                    n = self.sum()
                    self.take("]")
                    return sympy.root(self.group(), n)
                return sympy.sqrt(self.group() if self.peek()[1] == "{" else self.atom())
            if name in CONSTANTS:
                return CONSTANTS[name]
            if name in GREEK:
                return sympy.Symbol(name)
            if name in FUNCTIONS:
                return self._function(name)
        raise LatexError(f"unsupported {tok!r}")

    def _function(self, name):
        """``\\sin x``, ``\\sin(x)``, ``\\cot^2 t`` (the square of cot t), ``\\sin^{-1} x`` (arcsin),
        ``\\log_2 8`` (base 2)."""
        fn, power, base = FUNCTIONS[name], None, None
        if name == "log" and self.peek()[1] == "_":
            self.take()
            base = self.argument()
        if self.peek()[1] == "^":
            self.take()
            power = self.argument()
            if power == -1 and name in INVERSE:
                fn, power = INVERSE[name], None
        self.trig_depth += name in TRIG
        try:
            if self.peek()[1] in ("(", "{"):
                arg = self.postfix(self.atom())
            else:  # \sin 2x is sin(2x); the argument ends at an operator or another command
                arg = self.power()
                while self.peek()[0] in ("num", "letter") or (self.peek()[0] == "cmd" and
                                                              self.peek()[1][1:] in GREEK | {"pi"}):
                    arg = arg * self.power()
        finally:
            self.trig_depth -= name in TRIG
        value = fn(arg) if base is None else sympy.log(arg, base)
        return value if power is None else _guarded_pow(value, power)

    def _repeating(self, digits: str):
        """``0.1\\overline{6}`` = 1/6: the digits under the bar repeat forever."""
        self.take("\\overline")
        repeat = "".join(t for _, t in self._raw_group())
        if not repeat.isdigit() or len(repeat) > 50:
            raise LatexError("\\overline over something other than digits")
        head, _, decimals = digits.partition(".")
        fixed = sympy.Rational(digits.rstrip(".") or "0")
        return fixed + sympy.Rational(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(decimals))

    def argument(self):
        """A command argument: a braced group, or one character (one digit of a number)."""
        if self.peek()[1] == "{":
            return self.group()
        return self.atom(exponent=True)

    def _raw_group(self):
        self.take("{")
        out = []
        while self.peek()[1] != "}":
            out.append(self.take())
        self.take("}")
        return out


def _guarded_pow(base, exponent):
    if exponent.is_number and base.is_number:
        if exponent.is_Integer and abs(int(exponent)) > MAX_EXPONENT and abs(base) != 1:
            raise LatexError("exponent too large to evaluate")
        if exponent.is_Rational and abs(exponent.q) > MAX_EXPONENT:
            raise LatexError("exponent too large to evaluate")
        if not exponent.is_Rational and any(isinstance(a, sympy.Pow) for a in sympy.preorder_traversal(exponent)):
            raise LatexError("exponent tower")
    return sympy.Pow(base, exponent)


def _guarded_binomial(n, k):
    if n.is_Integer and k.is_Integer and (abs(n) > MAX_BINOMIAL_N or min(abs(k), abs(n - k)) > MAX_FACTORIAL):
        raise LatexError("binomial coefficient too large to evaluate")
    return sympy.binomial(n, k)


def parse_expression(text: str):
    """One expression (no commas, no relations) as a SymPy object."""
    return _Parser(tokenize(text)).parse()
