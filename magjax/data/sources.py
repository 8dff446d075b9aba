"""Where a job's problems come from (``DataConfig``): the built-in demo tasks or files.

``datasets`` returns the training problems, the held-out problems and the worked
(prompt, response) examples an SFT cold start learns from. A held-out file is read
whenever ``DataConfig.heldout`` names one, whatever the training data. Every file read
leaves a ``LoadReport`` (records loaded, skipped, and why) in ``reports`` when one is
given; ``strict`` makes any skipped record an error.
"""

from __future__ import annotations

import dataclasses

from magjax.data.loaders import LoadReport, read_problems
from magjax.data.synthetic import MATH_FAMILIES, generate
from magjax.types import Problem


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where problems come from: the built-in demo tasks, or files."""

    train: str = "demo"  # "demo" (built-in tasks) or a problem file / dataset directory
    heldout: str | None = None  # evaluation problems; None with "demo": a disjoint generated split
    demo_train_size: int = 2000
    demo_heldout_size: int = 64
    demo_kinds: tuple[str, ...] = ("math", "code")
    demo_difficulties: tuple[int, ...] = (1,)
    demo_math_families: tuple[str, ...] = MATH_FAMILIES  # see data/synthetic.py
    sft_languages: tuple[str, ...] | None = None  # worked solutions only in these languages (None: all)
    sft_code_fraction: float | None = None  # the cold start's share of code solutions (None: as generated)
    seed: int = 0


def read_reported(path: str, *, strict: bool = False, reports: list[LoadReport] | None = None) -> list[Problem]:
    """``read_problems`` whose report joins ``reports``."""
    report = LoadReport(str(path))
    problems = read_problems(path, strict=strict, report=report)
    if reports is not None:
        reports.append(report)
    return problems


def heldout_problems(data: DataConfig, *, strict: bool = False,
                     reports: list[LoadReport] | None = None) -> list[Problem]:
    """The evaluation problems: ``DataConfig.heldout`` if set, else the demo's held-out
    split (with demo training data), else none."""
    if data.heldout:
        return read_reported(data.heldout, strict=strict, reports=reports)
    if data.train != "demo":
        return []
    # The held-out split is drawn first and its math prompts are kept out of training, so
    # it keeps its size however small a task family's space is. The demo's code statements
    # are a small family: held-out code problems share statements but have unseen tests.
    seen, heldout = set(), []
    for t in generate(data.demo_heldout_size, seed=data.seed + 10_000, **_demo_kinds(data)):
        if t.problem.kind != "math" or t.problem.prompt not in seen:
            heldout.append(t.problem)
            seen.add(t.problem.prompt)
    return heldout


def datasets(data: DataConfig, *, strict: bool = False, reports: list[LoadReport] | None = None
             ) -> tuple[list[Problem], list[Problem], list[tuple[str, str]]]:
    """(training problems, held-out problems, worked (prompt, response) examples)."""
    heldout = heldout_problems(data, strict=strict, reports=reports)
    if data.train != "demo":
        return read_reported(data.train, strict=strict, reports=reports), heldout, []
    seen = {p.prompt for p in heldout}
    tasks = [t for t in generate(data.demo_train_size, seed=data.seed, **_demo_kinds(data))
             if t.problem.kind != "math" or t.problem.prompt not in seen]
    chosen = [t for t in tasks if data.sft_languages is None or t.problem.language in data.sft_languages]
    if data.sft_code_fraction is not None:  # keep every math solution, enough code ones for the share
        math = [t for t in chosen if t.problem.kind == "math"]
        code = [t for t in chosen if t.problem.kind == "code"]
        want = round(len(math) * data.sft_code_fraction / max(1e-9, 1 - data.sft_code_fraction))
        chosen = math + code[:want]
    examples = [(t.problem.prompt, t.solution) for t in chosen]
    return [t.problem for t in tasks], heldout, examples


def _demo_kinds(data: DataConfig) -> dict:
    return dict(kinds=data.demo_kinds, difficulties=data.demo_difficulties, math_families=data.demo_math_families)
