"""The built-in demo tasks: small math and code problems a CPU-sized model can learn.

Math: addition, subtraction and multiplication (written as symbols, family ``arith``, or
with the operation in words of the prompt's language, family ``words``), comparisons
(``larger`` / ``smaller`` of two numbers of ``difficulty`` digits), linear equations
(``a x + b = c``), and fraction sums (answers as reduced ``\\frac``), checkable by the
math verifier. Code: short stdin/stdout programs (read integers, compute, print), in
Python or C++, checkable by the sandbox. Prompts come in several natural languages; each
task carries a worked solution in the Magistral response format (a think section, a short
summary, then ``\\boxed{}`` or a fenced code block) for the SFT cold start. Everything
is a pure function of the seed.
"""

from __future__ import annotations

import dataclasses
import math
import random

from magjax.types import IOTest, Problem

LANGUAGES = ("en", "fr", "es", "de")
MATH_TEMPLATES = {
    "arith": {"en": "Compute {expr}.", "fr": "Calculez {expr}.", "es": "Calcula {expr}.", "de": "Berechne {expr}."},
    "equation": {"en": "Solve for x: {expr}.", "fr": "Résolvez pour x : {expr}.", "es": "Resuelve para x: {expr}.",
                 "de": "Löse nach x auf: {expr}."},
    "fraction": {"en": "Add the fractions {expr}.", "fr": "Additionnez les fractions {expr}.",
                 "es": "Suma las fracciones {expr}.", "de": "Addiere die Brüche {expr}."},
    "words": {"en": "What is {expr}?", "fr": "Combien font {expr} ?", "es": "¿Cuánto es {expr}?",
              "de": "Wie viel ist {expr}?"},
    "larger": {"en": "Which is larger, {expr}?", "fr": "Quel est le plus grand, {expr} ?",
               "es": "¿Cuál es mayor, {expr}?", "de": "Welche Zahl ist größer, {expr}?"},
    "smaller": {"en": "Which is smaller, {expr}?", "fr": "Quel est le plus petit, {expr} ?",
                "es": "¿Cuál es menor, {expr}?", "de": "Welche Zahl ist kleiner, {expr}?"},
}
OR_WORDS = {"en": "or", "fr": "ou", "es": "o", "de": "oder"}
OPERATION_WORDS = {"en": {"+": "plus", "-": "minus", "*": "times"}, "fr": {"+": "plus", "-": "moins", "*": "fois"},
                   "es": {"+": "más", "-": "menos", "*": "por"}, "de": {"+": "plus", "-": "minus", "*": "mal"}}
MATH_FAMILIES = ("arith", "arith", "equation", "fraction")  # drawn uniformly: arithmetic twice as often
CODE_TASKS = {  # name: (statement per language, python body, cpp expression, reference function)
    "sum": ({"en": "Read two integers and print their sum.", "fr": "Lisez deux entiers et affichez leur somme.",
             "es": "Lee dos enteros e imprime su suma.", "de": "Lies zwei ganze Zahlen und gib ihre Summe aus."},
            "a+b", "a+b", lambda a, b: a + b),
    "diff": ({"en": "Read two integers and print the first minus the second.",
              "fr": "Lisez deux entiers et affichez le premier moins le second.",
              "es": "Lee dos enteros e imprime el primero menos el segundo.",
              "de": "Lies zwei ganze Zahlen und gib die erste minus die zweite aus."},
             "a-b", "a-b", lambda a, b: a - b),
    "prod": ({"en": "Read two integers and print their product.", "fr": "Lisez deux entiers et affichez leur produit.",
              "es": "Lee dos enteros e imprime su producto.", "de": "Lies zwei ganze Zahlen und gib ihr Produkt aus."},
             "a*b", "a*b", lambda a, b: a * b),
    "max": ({"en": "Read two integers and print the larger one.", "fr": "Lisez deux entiers et affichez le plus grand.",
             "es": "Lee dos enteros e imprime el mayor.", "de": "Lies zwei ganze Zahlen und gib die größere aus."},
            "max(a,b)", "std::max(a,b)", max),
}


@dataclasses.dataclass(frozen=True)
class DemoTask:
    problem: Problem
    solution: str  # a correct response in the Magistral format


def _math_task(rng: random.Random, i: int, language: str, difficulty: int,
               families: tuple[str, ...] = MATH_FAMILIES) -> DemoTask:
    lo, hi = 10 ** (difficulty - 1) if difficulty > 1 else 0, 10 ** difficulty - 1
    family = rng.choice(families)
    if family in ("arith", "words"):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        op = rng.choice("+-*") if difficulty < 3 else rng.choice("+-")
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr = f"{a}{op}{b}" if family == "arith" else f"{a} {OPERATION_WORDS[language][op]} {b}"
        think = f"{a}{op}{b}={answer}"
        boxed = str(answer)
    elif family in ("larger", "smaller"):
        a, b = rng.sample(range(lo, hi + 1), 2)  # `difficulty` digits: one-digit numbers at 1
        answer = max(a, b) if family == "larger" else min(a, b)
        expr = f"{a} {OR_WORDS[language]} {b}"
        think = f"{max(a, b)}>{min(a, b)}"
        boxed = str(answer)
    elif family == "equation":
        a, x = rng.randint(2, 3 + 3 * difficulty), rng.randint(-5 * difficulty, 5 * difficulty)
        b = rng.randint(-10 * difficulty, 10 * difficulty)
        expr = f"{a}x{'+' if b >= 0 else '-'}{abs(b)}={a * x + b}"
        think = f"{a}x={a * x + b}{'-' if b >= 0 else '+'}{abs(b)}={a * x}, x={x}"
        boxed = str(x)
    else:
        p, q = rng.randint(1, 3 * difficulty), rng.randint(2, 4 * difficulty)
        r, s = rng.randint(1, 3 * difficulty), rng.randint(2, 4 * difficulty)
        num, den = p * s + r * q, q * s
        g = math.gcd(num, den)
        expr = f"\\frac{{{p}}}{{{q}}}+\\frac{{{r}}}{{{s}}}"
        boxed = str(num // g) if den // g == 1 else f"\\frac{{{num // g}}}{{{den // g}}}"
        think = f"{p}*{s}+{r}*{q}={num}, {q}*{s}={den}, {boxed}"
    prompt = MATH_TEMPLATES[family][language].format(expr=expr)
    problem = Problem(f"math-{family}-{i:05d}", "math", prompt, answer=boxed, language=language,
                      difficulty=float(difficulty), source="magjax.synthetic")
    return DemoTask(problem, f"<think>{think}</think>\\boxed{{{boxed}}}")


def _code_task(rng: random.Random, i: int, language: str, difficulty: int, code_language: str) -> DemoTask:
    name = rng.choice(sorted(CODE_TASKS))
    statements, py_expr, cpp_expr, fn = CODE_TASKS[name]
    bound = 10 ** (difficulty + 1)
    tests = []
    for _ in range(5):
        a, b = rng.randint(-bound, bound), rng.randint(-bound, bound)
        tests.append(IOTest(f"{a} {b}\n", f"{fn(a, b)}\n"))
    if code_language == "python":
        code = f"a,b=map(int,input().split())\nprint({py_expr})\n"
    else:
        code = ("#include <bits/stdc++.h>\nint main(){long long a,b;std::cin>>a>>b;"
                f"std::cout<<{cpp_expr}<<\"\\n\";}}\n")
    prompt = statements[language] + (" (Python)" if code_language == "python" else " (C++)")
    problem = Problem(f"code-{name}-{i:05d}", "code", prompt, tests=tuple(tests), code_language=code_language,
                      language=language, difficulty=float(difficulty), source="magjax.synthetic")
    fence = "python" if code_language == "python" else "cpp"
    return DemoTask(problem, f"<think>{name} of a and b: {py_expr}</think>```{fence}\n{code}```")


def generate(n: int, *, seed: int = 0, kinds: tuple[str, ...] = ("math", "code"),
             languages: tuple[str, ...] = LANGUAGES, difficulties: tuple[int, ...] = (1, 2),
             code_languages: tuple[str, ...] = ("python",),
             math_families: tuple[str, ...] = MATH_FAMILIES) -> list[DemoTask]:
    """``n`` demo tasks, cycling through ``kinds``; a pure function of its arguments."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        language, difficulty = rng.choice(languages), rng.choice(difficulties)
        if kind == "math":
            tasks.append(_math_task(rng, i, language, difficulty, math_families))
        else:
            tasks.append(_code_task(rng, i, language, difficulty, rng.choice(code_languages)))
    return tasks


def wrong_solution(task: DemoTask) -> str:
    """A well-formatted response with a wrong answer (for checking the reward)."""
    if task.problem.kind == "math":
        return f"<think>guess</think>\\boxed{{{task.problem.answer}+1}}"
    return "<think>guess</think>```" + task.problem.code_language + "\n" + (
        "print(0)\n" if task.problem.code_language == "python" else "int main(){}\n") + "```"
