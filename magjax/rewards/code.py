"""Code correctness: run a program against a problem's tests in the sandbox.

``run_tests(source, language, tests, limits=...)`` compiles C++ once (g++ -std=c++20,
10 s), then runs every test in its own sandboxed process and judges the output outside
the sandbox. Tests are stdin/stdout pairs (compared token by token, optionally with a
float tolerance) or, for Python, HumanEval-style assertion code with an entry point.
Correct means every test passed (Magistral's binary reward).

Identical programs on identical tests are run once: given a ``VerdictCache`` (each
``VerifierPool`` owns one), the verifier's threads share the verdicts of recent
(language, source, tests, limits) items, and a thread that finds the same item already
running waits for it. The G samples of a group often write the same
program (a converging policy almost always does), and each test run is a sandboxed
process. Time-limit verdicts are not kept (they depend on the machine's load).

Assertion tests are run as HumanEval's, MBPP's and LiveCodeBench's harnesses run them: the
program's top-level names are visible to the test code, so a test may call a helper the
program defines (HumanEval's ``poly`` for ``find_zero``, ``encode_cyclic`` for
``decode_cyclic``), and ``check(entry_point)`` runs. The harness only lets plain built-in
values out of the program: the entry point's and every helper's results must be plain (an
object whose ``__eq__`` always says True is rejected, through the candidate, a helper, or a
method of a class the tests construct); names that would shadow a built-in do not reach the
tests, nor do classes that define comparison, conversion or call hooks; the tests get the
built-ins as they were before the program ran. It proves the checks ran to the end by
printing a nonce it received on stdin, so exit code 0 alone never passes a test; the nonce
and the checks are locals of the judging code, and an audit hook denies the program the
ways to reach them (frames, the garbage collector's lists, tracing, ctypes). What stays
open to a program is patching a standard module's functions that the tests call, as in
every harness that runs tests in the program's process; the sandbox still contains it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from magjax import build_cache
from magjax.rewards import sandbox
from magjax.types import AssertTest, IOTest  # noqa: F401  (re-exported for callers)

VERDICTS = ("AC", "WA", "TLE", "MLE", "RE", "CE", "OLE")


@dataclasses.dataclass(frozen=True)
class CodeLimits:
    test: sandbox.Limits = sandbox.Limits(seconds=4.0, memory_mb=300)
    compile: sandbox.Limits = sandbox.Limits(seconds=10.0, memory_mb=2048, output_bytes=64 << 10,
                                             file_bytes=256 << 20)
    float_tolerance: float | None = None  # relative/absolute tolerance for numeric tokens


@dataclasses.dataclass
class CodeResult:
    passed: bool
    verdicts: list[str]
    detail: str = ""  # compiler error or first failure, truncated

    @property
    def summary(self) -> dict[str, int]:
        return {v: self.verdicts.count(v) for v in VERDICTS if v in self.verdicts}


def sample_tests(tests: list, k: int = 20, seed: int | str = 0) -> list:
    """Up to ``k`` tests, the same for every completion of a group (seeded by the group)."""
    if len(tests) <= k:
        return list(tests)
    return random.Random(str(seed)).sample(list(tests), k)


# Python programs run on the interpreter and its standard library alone, as on a judge:
# ``-I -S``, no site packages. Nothing of the trainer's environment (magjax, JAX) is
# importable, and start-up skips site's .pth files, which with an editable install were
# most of a short test's cost (40 ms a start here, 14 ms without). site's exit() and
# quit(), which judges' programs call, are defined first; the program runs as __main__.
_SITE_QUIT = "import site; site.setquit(); del site"
PYTHON_PROGRAM = [sys.executable, "-I", "-S", "-c", _SITE_QUIT + "; import sys; sys.argv = ['solution.py']; del sys; "
                  "exec(compile(open('solution.py', 'rb').read(), 'solution.py', 'exec'))"]


_HARNESS = r'''
def _harness(source, test_code, entry):
    # Everything the judging needs is a local of this call (closures, not module globals), so
    # a program that imports __main__ finds nothing to patch: not the nonce, not the checks.
    import builtins as builtins_module
    import inspect
    import os
    import sys
    import types

    plain_types = (int, float, complex, str, bytes, bool, type(None))
    # Behaviour a value can take over from the tests' comparisons (the always-equal object and kin).
    value_hooks = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__", "__abs__",
                   "__float__", "__int__", "__index__", "__round__", "__hash__", "__contains__", "__iter__",
                   "__getattr__", "__getattribute__", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
                   "__rmul__", "__truediv__", "__rtruediv__", "__mod__", "__pow__", "__neg__", "__pos__",
                   "__instancecheck__", "__subclasscheck__", "__call__", "__getitem__", "__next__", "__reversed__",
                   "__get__", "__set_name__", "__init_subclass__", "__class_getitem__"}

    def plain(v, depth=0):
        t = type(v)
        if t in plain_types:
            return v
        if depth < 50 and t in (list, tuple, set, frozenset):
            return t(plain(x, depth + 1) for x in v)
        if depth < 50 and t is dict:
            return {plain(k, depth + 1): plain(x, depth + 1) for k, x in v.items()}
        raise TypeError(f"candidate returned a {t.__name__}, not a plain built-in value")

    def plain_returns(fn):
        def call(*a, **k):
            return plain(fn(*a, **k))
        call.__name__ = getattr(fn, "__name__", "candidate")
        return call

    def inert_class(c):
        # A class of the program (MBPP's Pair) reaches the tests only if nothing in it can
        # change how its instances compare, convert or answer attribute look-ups.
        return type(c) is type and not any(value_hooks & set(vars(k)) for k in c.__mro__
                                           if k.__module__ != "builtins")

    def plain_class(c):
        # What the tests construct: a subclass whose methods and properties hand out plain
        # values only (Solution().method(...) cannot return a liar); instances still are the
        # program's class for the program's own code.
        wrapped = {}
        for name in dir(c):
            if name.startswith("__"):
                continue
            raw = inspect.getattr_static(c, name)
            if isinstance(raw, staticmethod):
                wrapped[name] = staticmethod(plain_returns(raw.__func__))
            elif isinstance(raw, classmethod):
                wrapped[name] = classmethod(lambda cls, *a, _f=raw.__func__, **k: plain(_f(cls, *a, **k)))
            elif isinstance(raw, property):
                wrapped[name] = property(lambda self, _p=raw: plain(_p.__get__(self)), raw.fset, raw.fdel)
            elif isinstance(raw, types.FunctionType):
                wrapped[name] = lambda self, *a, _f=raw, **k: plain(_f(self, *a, **k))
        return type(c.__name__, (c,), wrapped)

    def visible(program, builtins):
        # The program's top-level names as the tests see them (the field's harnesses run
        # program, tests and check in one namespace): callables return plain values only;
        # names that would shadow a built-in, classes that take over comparisons and objects
        # that are not plain values stay with the program.
        view = {}
        for name, value in program.items():
            if name.startswith("__") or name in builtins:
                continue
            if isinstance(value, types.ModuleType):
                view[name] = value
            elif isinstance(value, type):
                if inert_class(value):
                    view[name] = plain_class(value)
            elif callable(value):  # functions, and built-in callables such as [liar].__getitem__
                view[name] = plain_returns(value)
            else:
                try:
                    view[name] = plain(value)
                except TypeError:
                    pass
        return view

    def no_introspection(event, args):
        # The judging's locals are reachable through frames, the garbage collector's lists,
        # tracing hooks and ctypes; the program gets none of them. ValueError is what the
        # standard library expects of sys._getframe where frames are unavailable (namedtuple,
        # enum and typing carry on without).
        if event == "object.__getattr__" and args[1] not in ("tb_frame", "gi_frame", "cr_frame", "ag_frame"):
            return  # other audited reads (a function's __code__, for inspect.signature) reach no frame
        if event in ("sys._getframe", "sys._current_frames", "object.__getattr__", "gc.get_objects",
                     "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile") or \
                event.startswith("ctypes."):
            raise ValueError(f"{event} is not available to the program under test")

    nonce = b""
    while not nonce.endswith(b"\n"):  # unbuffered: no copy of the line stays in sys.stdin's buffers
        chunk = os.read(0, 64)
        if not chunk:
            break
        nonce += chunk
    nonce = nonce.decode().strip()
    builtins = dict(vars(builtins_module))  # as they were before the program ran
    sys.addaudithook(no_introspection)
    program = {"__name__": "__candidate__"}
    exec(compile(source, "solution.py", "exec"), program)
    fn = program[entry]
    tests = visible(program, builtins)
    tests["__name__"] = "__tests__"
    tests["__builtins__"] = builtins
    exec(compile(test_code, "tests.py", "exec"), tests)
    tests["check"](plain_returns(fn))
    sys.stdout.write("\n" + nonce + "\n")
    sys.stdout.flush()


_harness(_SOURCE, _TESTS, _ENTRY)
'''


def _judge(result: sandbox.RunResult, expected: str | None, tolerance: float | None, nonce: str | None) -> str:
    if result.output_exceeded:
        return "OLE"
    if result.timed_out or result.returncode == -24:  # SIGXCPU: CPU-time limit
        return "TLE"
    if result.memory_exceeded:
        return "MLE"
    if result.returncode != 0:
        return "RE"
    out = result.stdout.decode("utf-8", errors="replace")
    if nonce is not None:
        return "AC" if out.rstrip().endswith(nonce) else "WA"
    return "AC" if _same_tokens(out, expected, tolerance) else "WA"


def _same_tokens(out: str, expected: str, tolerance: float | None) -> bool:
    a, b = out.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if tolerance is None:
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if abs(fx - fy) > tolerance * max(1.0, abs(fy)):
            return False
    return True


CPP_FLAGS = ("-std=c++20", "-O2")
_PCH_LOCK = threading.Lock()


@functools.cache
def precompiled_header_dir() -> str | None:
    """A directory holding ``bits/stdc++.h.gch`` built with CPP_FLAGS, or None.

    Built once per compiler (outside the sandbox: it is our own trusted compile) and
    cached; with ``-I`` on it, ``#include <bits/stdc++.h>`` loads in milliseconds instead
    of a second.
    """
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    with _PCH_LOCK:
        try:
            version = subprocess.run([gxx, "--version"], capture_output=True, text=True, timeout=10).stdout
            key = hashlib.sha256((version + " ".join(CPP_FLAGS)).encode()).hexdigest()[:16]
            root = os.path.join(build_cache.root(), f"pch-{key}")

            def precompile(tmp: str) -> None:
                pre = subprocess.run([gxx, *CPP_FLAGS, "-x", "c++", "-E", "-"], input="#include <bits/stdc++.h>\n",
                                     capture_output=True, text=True, timeout=60)
                header = re.search(r'^# 1 "([^"]*bits/stdc\+\+\.h)"', pre.stdout, re.M)
                if header is None:
                    raise OSError("bits/stdc++.h not found")
                built = subprocess.run([gxx, *CPP_FLAGS, "-x", "c++-header", header.group(1), "-o", tmp],
                                       capture_output=True, timeout=120)
                if built.returncode != 0:
                    raise OSError("precompiling bits/stdc++.h failed")

            build_cache.build_once(os.path.join(root, "bits", "stdc++.h.gch"), precompile)
            return root
        except (OSError, subprocess.TimeoutExpired):
            return None


def _compile_cpp(source: str, workdir: str, limits: CodeLimits) -> tuple[bool, str]:
    with open(os.path.join(workdir, "main.cpp"), "w") as f:
        f.write(source)
    gxx = shutil.which("g++") or "g++"
    pch = precompiled_header_dir()
    include = ["-I", pch] if pch else []
    r = sandbox.run([gxx, *CPP_FLAGS, *include, "-pipe", "-o", "main", "main.cpp"], limits=limits.compile,
                    workdir=workdir)
    if r.timed_out:
        return False, "compilation exceeded its time limit"
    if r.returncode != 0:
        return False, r.stderr.decode("utf-8", errors="replace")[-2000:]
    return True, ""


class VerdictCache:
    """The verdicts of the last ``size`` items, and the items being run now. One per
    verifier pool: no module-level state, so two pools (or a test) never see each other's."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._lock = threading.Lock()
        self._done: collections.OrderedDict[str, CodeResult] = collections.OrderedDict()
        self._running: dict[str, threading.Event] = {}
        self.runs = self.shared = 0  # items run, items answered from another run

    def get(self, key: str, run) -> CodeResult:
        while True:
            with self._lock:
                if key in self._done:
                    self._done.move_to_end(key)
                    self.shared += 1
                    return _copy(self._done[key])
                running = self._running.get(key)
                if running is None:
                    self._running[key] = threading.Event()
                    self.runs += 1
                    break
            running.wait()  # then take its verdict, or run it ourselves if it was not kept
        result = None
        try:
            result = run()
            return result
        finally:
            with self._lock:
                event = self._running.pop(key)
                if result is not None and "TLE" not in result.verdicts:
                    self._done[key] = _copy(result)
                    while len(self._done) > self.size:
                        self._done.popitem(last=False)
            event.set()


def _copy(r: CodeResult) -> CodeResult:
    return dataclasses.replace(r, verdicts=list(r.verdicts))


def run_tests(source: str, language: str, tests: list, limits: CodeLimits = CodeLimits(),
              deadline: float | None = None, *, verdicts: VerdictCache | None = None) -> CodeResult:
    """Runs ``source`` against ``tests``; stops at the first failure (the reward is binary).

    ``deadline`` (a ``time.monotonic()`` instant) caps the whole item: past it, the next
    test is not started and the item fails with a TLE verdict. ``verdicts``: answer an
    identical item from a recent or concurrent run kept there (see the module docstring);
    None runs it.
    """
    if verdicts is None:
        return _run_tests(source, language, tests, limits, deadline)
    key = hashlib.sha256(repr((language, source, tests, limits)).encode()).hexdigest()
    return verdicts.get(key, lambda: _run_tests(source, language, tests, limits, deadline))


def _run_tests(source: str, language: str, tests: list, limits: CodeLimits, deadline: float | None) -> CodeResult:
    if language not in ("python", "cpp"):
        raise ValueError(f"unsupported language {language!r} (python, cpp)")
    if not tests:
        raise ValueError("no tests to run")
    workdir = tempfile.mkdtemp(prefix="magjax-code-")
    try:
        if language == "cpp":
            if any(isinstance(t, AssertTest) for t in tests):
                raise ValueError("assertion tests are Python only")
            ok, err = _compile_cpp(source, workdir, limits)
            if not ok:
                return CodeResult(False, ["CE"], err)
            argv = [os.path.join(workdir, "main")]
        else:
            with open(os.path.join(workdir, "solution.py"), "w") as f:
                f.write(source)
        verdicts, detail = [], ""
        for test in tests:
            if deadline is not None and time.monotonic() > deadline:
                verdicts.append("TLE")
                detail = f"test {len(verdicts)}: item deadline passed before it started"
                break
            nonce = None
            if isinstance(test, AssertTest):
                nonce = secrets.token_hex(16)
                program = (f"{_SITE_QUIT}\n_SOURCE = {source!r}\n_TESTS = {test.code!r}\n_ENTRY = {test.entry_point!r}\n"
                           f"{_HARNESS}")
                with open(os.path.join(workdir, "harness.py"), "w") as f:
                    f.write(program)
                argv, stdin, expected = [sys.executable, "-I", "-S", "harness.py"], nonce + "\n", None
            else:
                if language == "python":
                    argv = PYTHON_PROGRAM
                stdin, expected = test.stdin, test.stdout
            result = sandbox.run(argv, stdin=stdin.encode(), limits=limits.test, workdir=workdir)
            verdict = _judge(result, expected, limits.float_tolerance, nonce)
            verdicts.append(verdict)
            if verdict != "AC":
                detail = f"test {len(verdicts)}: {verdict}: " + result.stderr.decode("utf-8", errors="replace")[-500:]
                break
        return CodeResult(all(v == "AC" for v in verdicts) and len(verdicts) == len(tests), verdicts, detail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def program_outputs(source: str, language: str, stdins: list[str], limits: CodeLimits = CodeLimits()) -> list[str | None]:
    """The stdout of ``source`` on each input, or None where it failed (used to validate tests)."""
    workdir = tempfile.mkdtemp(prefix="magjax-code-")
    try:
        if language == "cpp":
            ok, _ = _compile_cpp(source, workdir, limits)
            if not ok:
                return [None] * len(stdins)
            argv = [os.path.join(workdir, "main")]
        else:
            with open(os.path.join(workdir, "solution.py"), "w") as f:
                f.write(source)
            argv = PYTHON_PROGRAM
        outputs = []
        for stdin in stdins:
            r = sandbox.run(argv, stdin=stdin.encode(), limits=limits.test, workdir=workdir)
            ok = not (r.timed_out or r.output_exceeded or r.returncode != 0)
            outputs.append(r.stdout.decode("utf-8", errors="replace") if ok else None)
        return outputs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
