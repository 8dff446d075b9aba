"""Reading problem sets: JSONL, Parquet, and Hugging Face ``datasets`` saved to disk.

One record per problem with the fields of ``magjax.types.Problem``; code tests are either
``{"stdin": ..., "stdout": ...}`` pairs or ``{"code": ..., "entry_point": ...}`` assertion
tests. Common alternative spellings are accepted (``question``/``problem`` for ``prompt``,
``solution_answer``/``final_answer`` for ``answer``, ``input_output`` with parallel
``inputs``/``outputs`` lists as in contest datasets). A bad record is reported with its
file, line (or row) and reason; by default it is skipped and counted, in strict mode it
raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from magjax.types import AssertTest, IOTest, Problem


class ProblemFormatError(ValueError):
    """A record that is not a valid problem; the message names file, line and reason."""


@dataclasses.dataclass
class LoadReport:
    path: str
    loaded: int = 0
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)  # "file:line: reason"


_ALIASES = {"prompt": ("prompt", "question", "problem", "statement"),
            "answer": ("answer", "final_answer", "solution_answer", "gold"),
            "id": ("id", "problem_id", "uid", "task_id")}


def _field(record: dict, name: str):
    for key in _ALIASES.get(name, (name,)):
        if record.get(key) is not None:
            return record[key]
    return None


def _tests(record: dict) -> tuple:
    raw = record.get("tests")
    if raw is None and record.get("input_output") is not None:  # contest sets: {"inputs": [...], "outputs": [...]}
        io = record["input_output"]
        io = json.loads(io) if isinstance(io, str) else io
        raw = [{"stdin": i, "stdout": o} for i, o in zip(io["inputs"], io["outputs"])]
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, list):
        raise ValueError(f"tests must be a list, got {type(raw).__name__}")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ValueError(f"test {i} is a {type(t).__name__}, not an object")
        if "stdin" in t or "input" in t:
            stdin, stdout = t.get("stdin", t.get("input")), t.get("stdout", t.get("output"))
            if not isinstance(stdin, str) or not isinstance(stdout, str):
                raise ValueError(f"test {i}: stdin and stdout must be strings")
            out.append(IOTest(stdin, stdout))
        elif "code" in t:
            if not isinstance(t.get("entry_point"), str):
                raise ValueError(f"test {i}: an assertion test needs an entry_point")
            out.append(AssertTest(t["code"], t["entry_point"]))
        else:
            raise ValueError(f"test {i} has neither stdin/stdout nor code")
    return tuple(out)


def problem_from_record(record: dict, default_id: str) -> Problem:
    """Validates one record into a Problem; raises ValueError naming the bad field."""
    if not isinstance(record, dict):
        raise ValueError(f"a problem must be a JSON object, got {type(record).__name__}")
    kind = record.get("kind")
    if kind is None:
        kind = "code" if (record.get("tests") is not None or record.get("input_output") is not None) else "math"
    prompt = _field(record, "prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("missing or empty field 'prompt'")
    answer = _field(record, "answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ValueError(f"field 'answer' must be a string or number, got {type(answer).__name__}")
    for name, types in (("difficulty", (int, float)), ("pass_rate", (int, float)), ("language", (str,)),
                        ("code_language", (str,))):
        if record.get(name) is not None and not isinstance(record[name], types):
            raise ValueError(f"field {name!r} has the wrong type ({type(record[name]).__name__})")
    return Problem(
        id=str(_field(record, "id") if _field(record, "id") is not None else default_id), kind=kind, prompt=prompt,
        answer=None if answer is None else str(answer), tests=_tests(record),
        code_language=record.get("code_language") or (record.get("language_code") if kind == "code" else None),
        language=record.get("language") or "en", difficulty=record.get("difficulty"),
        pass_rate=record.get("pass_rate"), source=record.get("source"),
        solutions=tuple(record.get("solutions") or ()))


def _records(path: Path):
    """(location, record or exception) for every record of a file or dataset directory."""
    if path.is_dir():
        files = sorted(path.glob("*.arrow")) + sorted(path.glob("*.parquet"))
        if not files:
            raise ProblemFormatError(f"{path}: a directory without .arrow or .parquet files")
        for f in files:
            yield from _records(f)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{n}", ValueError(f"bad JSON ({err.msg.removesuffix(' at')}, column {err.colno})")
    elif suffix in (".parquet", ".arrow"):
        import pyarrow.ipc
        import pyarrow.parquet

        if suffix == ".parquet":
            table = pyarrow.parquet.read_table(path)
        else:  # datasets' save_to_disk writes Arrow IPC streams
            with open(path, "rb") as fh:
                table = pyarrow.ipc.open_stream(fh).read_all()
        for n, row in enumerate(table.to_pylist(), start=1):
            yield f"{path}:row {n}", row
    else:
        raise ProblemFormatError(f"{path}: unknown problem file type {suffix!r} (.jsonl, .parquet, dataset dir)")


def read_problems(path: str | os.PathLike, *, strict: bool = False, report: LoadReport | None = None) -> list[Problem]:
    """All valid problems of ``path``; bad records are counted in ``report`` (or raise if strict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such problem file")
    report = report if report is not None else LoadReport(str(path))
    problems, seen = [], set()
    for where, record in _records(path):
        try:
            if isinstance(record, Exception):
                raise record
            problem = problem_from_record(record, default_id=where.rsplit(":", 1)[-1].replace("row ", "row-"))
            if problem.id in seen:
                raise ValueError(f"duplicate id {problem.id!r}")
        except (ValueError, KeyError, TypeError) as err:
            message = f"{where}: {err}"
            if strict:
                raise ProblemFormatError(message) from None
            report.skipped += 1
            report.errors.append(message)
            continue
        seen.add(problem.id)
        problems.append(problem)
    report.loaded = len(problems)
    return problems


def problem_to_record(p: Problem) -> dict:
    """The inverse of ``problem_from_record`` (for writing filtered sets)."""
    record = {"id": p.id, "kind": p.kind, "prompt": p.prompt, "language": p.language}
    if p.answer is not None:
        record["answer"] = p.answer
    if p.tests:
        record["tests"] = [{"stdin": t.stdin, "stdout": t.stdout} if isinstance(t, IOTest)
                           else {"code": t.code, "entry_point": t.entry_point} for t in p.tests]
        record["code_language"] = p.code_language
    if p.solutions:
        record["solutions"] = list(p.solutions)
    for name in ("difficulty", "pass_rate", "source"):
        if getattr(p, name) is not None:
            record[name] = getattr(p, name)
    return record


def write_problems(problems: list[Problem], path: str | os.PathLike):
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps(problem_to_record(p), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
