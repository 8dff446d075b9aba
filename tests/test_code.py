"""Code correctness and the sandbox against hostile programs, in Python and C++."""

import os
import socket
import threading
import time
import uuid

import pytest

from magjax.rewards import sandbox
from magjax.rewards.code import CodeLimits, run_tests, sample_tests
from magjax.types import AssertTest, IOTest

FAST = CodeLimits(test=sandbox.Limits(seconds=2.0, memory_mb=300))
ADD = [IOTest("1 2\n", "3\n"), IOTest("5 7\n", "12\n")]


def _marked_processes() -> set[str]:
    """Processes carrying the marker of a sandbox run started by this process (runs of
    other processes, such as another test worker's, are not this test's to judge)."""
    mine = f"{sandbox.MARKER}={os.getpid()}-".encode()
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(entry.startswith(mine) for entry in f.read().split(b"\0")):
                    found.add(pid)
        except OSError:
            continue
    return found


@pytest.fixture
def survivors():
    """A check for sandboxed processes that outlived their run. Processes already there
    when the test began (another run's) are not this test's; a process killed an instant
    ago may still be on its way out of /proc, so the check looks again briefly."""
    before = _marked_processes()

    def check():
        for _ in range(40):
            left = _marked_processes() - before
            if not left:
                return []
            time.sleep(0.05)
        return sorted(left)

    return check


@pytest.fixture
def listener():
    """A TCP server on loopback counting the connections it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join()
    srv.close()


def test_the_isolation_tier_is_reported():
    assert sandbox.tier() in ("namespaces", "rlimits")


@pytest.mark.parametrize("source, tests, verdicts", [
    ("a, b = map(int, input().split())\nprint(a + b)", ADD, ["AC", "AC"]),
    ("a, b = map(int, input().split())\nprint(a - b)", ADD, ["WA"]),
    ("print(1/0)", ADD, ["RE"]),
    ("def add(a, b):\n    return a + b", [AssertTest("def check(c):\n    assert c(2, 3) == 5\n", "add")], ["AC"]),
    ("def add(a, b):\n    return a - b", [AssertTest("def check(c):\n    assert c(2, 3) == 5\n", "add")], ["RE"]),
])
def test_python_verdicts(source, tests, verdicts):
    result = run_tests(source, "python", tests, FAST)
    assert result.verdicts == verdicts and result.passed == (verdicts == ["AC"] * len(tests))


@pytest.mark.parametrize("source, verdict", [
    # A judge's Python: the interpreter and its standard library, run as __main__ ...
    ("import sys, heapq, fractions\nif __name__ == '__main__':\n    print(sum(map(int, sys.stdin.read().split())))",
     "AC"),
    ("print(3)\nexit()\nprint(4)", "AC"),  # site's exit() and quit(), which judges' programs call
    ("print(3)\nquit(0)", "AC"),
    ("import sys\nprint(3 if sys.argv == ['solution.py'] else sys.argv)", "AC"),
    # ... and nothing of the trainer's environment.
    ("import magjax\nprint(3)", "RE"),
    ("import jax\nprint(3)", "RE"),
])
def test_a_python_program_sees_the_language_and_its_standard_library(source, verdict):
    assert run_tests(source, "python", [IOTest("1 2\n", "3")], FAST).verdicts == [verdict]


def test_float_tolerance_and_token_comparison():
    loose = CodeLimits(test=FAST.test, float_tolerance=1e-6)
    assert run_tests("print(0.1 + 0.2)", "python", [IOTest("", "0.3")], loose).passed
    assert not run_tests("print(0.1 + 0.2)", "python", [IOTest("", "0.3")], FAST).passed
    assert run_tests("print(' 1   2 ')", "python", [IOTest("", "1 2\n")], FAST).passed


def test_an_object_equal_to_everything_does_not_pass():
    liar = "class Liar:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Liar()"
    result = run_tests(liar, "python", [AssertTest("def check(c):\n    assert c(2, 3) == 5\n", "add")], FAST)
    assert not result.passed
    # Exiting 0 without running the checks does not pass either.
    quitter = "import os\ndef add(a, b):\n    return a + b\nos._exit(0)"
    assert not run_tests(quitter, "python", [AssertTest("def check(c):\n    assert c(2, 3) == 5\n", "add")], FAST).passed


def test_tests_are_sampled_the_same_for_a_group():
    tests = [IOTest(str(i), str(i)) for i in range(50)]
    a, b = sample_tests(tests, 20, "problem-7"), sample_tests(tests, 20, "problem-7")
    assert a == b and len(a) == 20 and sample_tests(tests, 20, "problem-8") != a


HOSTILE_PY = {
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", {"TLE", "RE"}),
    "memory bomb": ("x = bytearray(10 ** 10)\nprint(3)", {"MLE", "RE"}),
    "infinite loop": ("while True:\n    pass", {"TLE"}),
    "sleep past the limit": ("import time\ntime.sleep(60)\nprint(3)", {"TLE"}),
    "infinite output": ("while True:\n    print('x' * 1000)", {"OLE"}),
    "setsid double fork": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        time.sleep(60)\n    os._exit(0)\nprint(3)", {"AC"}),
    "kill the parent": ("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
                        "try:\n    os.killpg(0, signal.SIGKILL)\nexcept OSError:\n    pass\nprint(3)", {"RE", "AC"}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PY))
def test_hostile_python_is_contained(name, survivors):
    source, allowed = HOSTILE_PY[name]
    result = run_tests(source, "python", [IOTest("", "3")], FAST)
    assert result.verdicts[0] in allowed, result
    assert not survivors()


def test_writing_outside_the_directory_and_reading_secrets_fail(monkeypatch):
    target = f"/tmp/magjax-escape-{uuid.uuid4().hex}"
    monkeypatch.setenv("MAGJAX_TEST_SECRET", "hunter2")
    source = (f"import os\ntry:\n    open({target!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
              "leak = os.environ.get('MAGJAX_TEST_SECRET', '')\n"
              "for pid in os.listdir('/proc'):\n    try:\n        leak += open(f'/proc/{pid}/environ').read()\n"
              "    except Exception:\n        pass\nprint('SECRET' if 'hunter2' in leak else 'clean')")
    result = run_tests(source, "python", [IOTest("", "clean")], FAST)
    assert result.passed, result
    assert not os.path.exists(target)


def test_network_connections_are_not_made(listener):
    port, accepted = listener
    source = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
              "    print('connected')\nexcept OSError:\n    print('offline')")
    result = run_tests(source, "python", [IOTest("", "offline")], FAST)
    if sandbox.tier() == "namespaces":
        assert result.passed and not accepted
    else:
        pytest.skip("no network namespace on this machine: connections cannot be blocked")


def test_cpp_cannot_write_outside_read_secrets_or_connect(monkeypatch, listener):
    port, accepted = listener
    target = f"/tmp/magjax-escape-{uuid.uuid4().hex}"
    monkeypatch.setenv("MAGJAX_TEST_SECRET", "hunter2")
    source = ("#include <cstdio>\n#include <cstdlib>\n#include <cstring>\n#include <dirent.h>\n"
              "#include <arpa/inet.h>\n#include <sys/socket.h>\n#include <unistd.h>\n"
              "int main() {\n"
              f"  FILE* f = std::fopen(\"{target}\", \"w\"); if (f) {{ std::fputs(\"x\", f); std::fclose(f); }}\n"
              "  bool leak = std::getenv(\"MAGJAX_TEST_SECRET\") != nullptr;\n"
              "  DIR* d = opendir(\"/proc\"); struct dirent* e;\n"
              "  while (d && (e = readdir(d))) { char p[300]; std::snprintf(p, sizeof p, \"/proc/%s/environ\", e->d_name);\n"
              "    FILE* g = std::fopen(p, \"r\"); if (!g) continue; char buf[65536]; size_t n = std::fread(buf, 1, sizeof buf, g);\n"
              "    std::fclose(g); if (memmem(buf, n, \"hunter2\", 7)) leak = true; }\n"
              "  int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{}; a.sin_family = AF_INET;\n"
              f"  a.sin_port = htons({port}); inet_pton(AF_INET, \"127.0.0.1\", &a.sin_addr);\n"
              "  bool online = connect(s, (sockaddr*)&a, sizeof a) == 0;\n"
              "  std::puts(leak ? \"SECRET\" : online ? \"online\" : \"clean\");\n}\n")
    result = run_tests(source, "cpp", [IOTest("", "clean")], FAST)
    assert not os.path.exists(target)
    if sandbox.tier() == "namespaces":
        assert result.passed, result
        assert not accepted
    else:
        assert "SECRET" not in result.detail


CPP_ADD = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }"
HOSTILE_CPP = {
    "fork bomb": ("#include <unistd.h>\nint main() { while (true) fork(); }", {"TLE", "RE"}),
    "memory bomb": ("#include <vector>\n#include <cstdio>\nint main() { std::vector<char> v; while (true) "
                    "v.resize(v.size() * 2 + (1 << 20), 1); }", {"MLE", "RE"}),
    "infinite loop": ("int main() { volatile long i = 0; while (true) i++; }", {"TLE"}),
    "infinite output": ("#include <cstdio>\nint main() { while (true) std::puts(\"xxxxxxxxxxxxxxxx\"); }", {"OLE"}),
    "compile bomb": ("#include \"/dev/zero\"\nint main() {}", {"CE"}),
    "compile error": ("int main() { return }", {"CE"}),
    "sleep past the limit": ("#include <unistd.h>\n#include <cstdio>\nint main() { sleep(60); std::puts(\"3\"); }",
                             {"TLE"}),
    "setsid double fork": ("#include <unistd.h>\n#include <cstdio>\nint main() { if (fork() == 0) { setsid(); "
                           "if (fork() == 0) { sleep(60); } _exit(0); } std::puts(\"3\"); }", {"AC"}),
    "kill the parent": ("#include <csignal>\n#include <unistd.h>\n#include <cstdio>\nint main() { "
                        "kill(getppid(), SIGKILL); std::puts(\"3\"); }", {"AC", "RE"}),
}


def test_cpp_solution_passes_and_fails_honestly():
    assert run_tests(CPP_ADD, "cpp", ADD, FAST).verdicts == ["AC", "AC"]
    assert run_tests(CPP_ADD.replace("a + b", "a * b"), "cpp", ADD, FAST).verdicts == ["WA"]


@pytest.mark.parametrize("name", sorted(HOSTILE_CPP))
def test_hostile_cpp_is_contained(name, survivors):
    source, allowed = HOSTILE_CPP[name]
    limits = CodeLimits(test=FAST.test, compile=sandbox.Limits(seconds=4.0, memory_mb=1024, output_bytes=1 << 16))
    result = run_tests(source, "cpp", [IOTest("", "3")], limits)
    assert result.verdicts[0] in allowed, result
    assert not survivors()


def test_precompiled_header_is_built_once_and_used():
    pch = __import__("magjax.rewards.code", fromlist=["x"]).precompiled_header_dir()
    assert pch is not None and os.path.exists(os.path.join(pch, "bits", "stdc++.h.gch"))
    source = "#include <bits/stdc++.h>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b; }"
    assert run_tests(source, "cpp", ADD, FAST).passed


def test_an_item_deadline_stops_further_tests():
    result = run_tests("print(input())", "python", [IOTest("1", "1")] * 3, FAST, deadline=0.0)
    assert result.verdicts == ["TLE"] and "deadline" in result.detail


def test_identical_programs_on_identical_tests_run_once():
    from magjax.rewards.code import VerdictCache

    verdicts = VerdictCache()
    source = f"# {uuid.uuid4()}\na, b = map(int, input().split())\nprint(a + b)\n"
    results = [None] * 6
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, run_tests(source, "python", ADD, FAST, verdicts=verdicts))) for i in range(6)]
    # as a group's samples reach the verifier's threads together
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.passed and r.verdicts == ["AC", "AC"] for r in results)
    assert verdicts.runs == 1 and verdicts.shared == 5
    assert run_tests(source, "python", ADD[:1], FAST, verdicts=verdicts).passed and verdicts.runs == 2  # other tests
    assert VerdictCache().runs == 0  # another cache (another pool) shares nothing
    # A time-limit verdict depends on the machine's load: it is not kept, the item runs again.
    spin = f"# {uuid.uuid4()}\nwhile True:\n    pass\n"
    short = CodeLimits(test=sandbox.Limits(seconds=0.5, memory_mb=300))
    assert run_tests(spin, "python", ADD[:1], short, verdicts=verdicts).verdicts == ["TLE"]
    assert run_tests(spin, "python", ADD[:1], short, verdicts=verdicts).verdicts == ["TLE"] and verdicts.runs == 4


# Assertion tests see the program's top-level names, as HumanEval's, MBPP's and LiveCodeBench's
# harnesses run them. Problems of the helper-calling shape, written for this suite:
SHIFT = ("def encode_shift(s):\n    return ''.join(chr((ord(c) - 97 + 3) % 26 + 97) for c in s)\n\n"
         "def decode_shift(s):\n    return ''.join(chr((ord(c) - 97 - 3) % 26 + 97) for c in s)\n")
SHIFT_TEST = AssertTest("import random\n\ndef check(candidate):\n    rng = random.Random(1)\n    for _ in range(20):\n"
                        "        word = ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(8))\n"
                        "        assert candidate(encode_shift(word)) == word\n", "decode_shift")
ROOT = ("import math\n\ndef cubic(c, x):\n    return sum(a * x ** i for i, a in enumerate(c))\n\n"
        "def find_root(c):\n    lo, hi = -100.0, 100.0\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
        "        if (cubic(c, lo) > 0) == (cubic(c, mid) > 0):\n            lo = mid\n        else:\n"
        "            hi = mid\n    return lo\n")
ROOT_TEST = AssertTest("def check(candidate):\n    for c in ([1, 2, 0, 1], [-6, 11, -6, 1], [5, 0, 0, -2]):\n"
                       "        assert math.fabs(cubic(c, candidate(c))) < 1e-6\n", "find_root")
PAIR = ("class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n\n"
        "def longest_chain(pairs):\n    pairs = sorted(pairs, key=lambda p: p.b)\n    n, end = 0, float('-inf')\n"
        "    for p in pairs:\n        if p.a > end:\n            n, end = n + 1, p.b\n    return n\n")
PAIR_TEST = AssertTest("def check(candidate):\n    assert candidate([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]) == 3\n"
                       "    assert candidate([Pair(1, 2), Pair(3, 4)]) == 2\n", "longest_chain")


@pytest.mark.parametrize("source, test, bug", [(SHIFT, SHIFT_TEST, ("- 3) % 26", "- 4) % 26")),
                                               (ROOT, ROOT_TEST, ("lo = mid", "hi = mid")),
                                               (PAIR, PAIR_TEST, ("n + 1", "n + 2"))],
                         ids=["helper-encoder", "helper-evaluator-and-module", "helper-class"])
def test_assertion_tests_see_the_programs_helpers(source, test, bug):
    assert run_tests(source, "python", [test], FAST).verdicts == ["AC"]
    broken = source.replace(*bug)  # the same program with a bug: the helper-calling test catches it
    assert broken != source and run_tests(broken, "python", [test], FAST).verdicts == ["RE"]


def test_common_library_code_runs_under_the_harness():
    source = ("import collections, dataclasses, enum, functools, typing, heapq, fractions, inspect, warnings\n"
              "Point = collections.namedtuple('Point', 'x y')\n"
              "class Color(enum.Enum):\n    RED = 1\n"
              "@dataclasses.dataclass\nclass Box:\n    w: int\n"
              "class Pt(typing.NamedTuple):\n    x: int\n"
              "@functools.lru_cache(None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
              "def solve(n):\n    try:\n        {}['missing']\n    except KeyError:\n        pass\n"
              "    assert len(inspect.signature(fib).parameters) == 1\n    warnings.warn('fine')\n"
              "    g = (i for i in range(3))\n    h = []\n    heapq.heappush(h, 3)\n"
              "    return fib(n) + Point(1, 2).x + Color.RED.value + Box(1).w + Pt(1).x + sum(g) + h[0]"
              " + int(fractions.Fraction(4, 2))\n")
    test = AssertTest("def check(candidate):\n    assert candidate(10) == 55 + 1 + 1 + 1 + 1 + 3 + 3 + 2\n", "solve")
    assert run_tests(source, "python", [test], FAST).verdicts == ["AC"]


LIAR = "class Liar:\n    def __eq__(self, other):\n        return True\n    def __lt__(self, other):\n        return True\n"
CHEATS = {
    # the always-equal object returned through a helper the tests call
    "liar from a helper": LIAR + "def cubic(c, x):\n    return Liar()\ndef find_root(c):\n    return 0.0\n",
    # a helper that is a class whose instances lie
    "liar class as a helper": LIAR + "cubic = lambda c, x: None\nclass cubic(Liar):\n    def __init__(self, c, x):\n"
                              "        pass\ndef find_root(c):\n    return 0.0\n",
    # a built-in callable handing out a liar
    "liar behind a built-in method": LIAR + "cubic = {(): Liar()}.get\ndef find_root(c):\n    return 0.0\n",
    # shadowing a built-in the tests use, and patching the built-ins module
    "shadowed and patched built-ins": "import builtins, math\ndef abs(x):\n    return 0\nbuiltins.abs = abs\n"
                                      "def cubic(c, x):\n    return 1.0\ndef find_root(c):\n    return 0.0\n",
    # patching the harness through __main__
    "patching __main__": "import __main__\n__main__._plain = lambda v, d=0: v\n__main__._harness = None\n"
                         "def cubic(c, x):\n    return 1.0\ndef find_root(c):\n    return 0.0\n",
    # reading the nonce out of the harness's frame and printing it without running the checks
    "nonce from a frame": "import os, sys\nf = sys._getframe(1)\nprint(f.f_locals.get('nonce'))\nos._exit(0)\n",
    "nonce from a traceback": "import os\ntry:\n    raise ValueError\nexcept ValueError as e:\n"
                              "    f = e.__traceback__.tb_frame.f_back\nprint(f.f_locals.get('nonce'))\nos._exit(0)\n",
    "nonce from the garbage collector": "import gc, os\nfor o in gc.get_objects():\n    pass\nos._exit(0)\n",
    "nonce from stdin": "import os, sys\nprint(sys.stdin.read())\nos._exit(0)\n",
}
METHOD_TEST = AssertTest("def check(candidate):\n    assert Poly().value([1, 2, 0, 1], candidate([1, 2, 0, 1])) == 0\n",
                         "find_root")


def test_a_liar_from_a_method_of_a_constructed_class_does_not_pass():
    # A method, a static method and a property of a class the tests construct.
    liar = LIAR + ("class Poly:\n    def value(self, c, x):\n        return Liar()\n"
                   "    @staticmethod\n    def at(c, x):\n        return Liar()\n"
                   "    @property\n    def zero(self):\n        return Liar()\ndef find_root(c):\n    return 0.0\n")
    honest = ("class Poly:\n    def value(self, c, x):\n        return sum(a * x ** i for i, a in enumerate(c))\n"
              "def find_root(c):\n    return -0.4533976515164037\n")
    for test in (METHOD_TEST, AssertTest("def check(candidate):\n    assert Poly.at([1], candidate([1])) == 0\n", "find_root"),
                 AssertTest("def check(candidate):\n    assert Poly().zero == candidate([1])\n", "find_root")):
        assert run_tests(liar, "python", [test], FAST).verdicts == ["RE"]
    relaxed = AssertTest("def check(candidate):\n    assert abs(Poly().value([1, 2, 0, 1], candidate([1, 2, 0, 1]))) < 1e-9\n",
                         "find_root")
    assert run_tests(honest, "python", [relaxed], FAST).verdicts == ["AC"]
ABS_TEST = AssertTest("def check(candidate):\n    for c in ([1, 2, 0, 1], [-6, 11, -6, 1]):\n"
                      "        assert abs(cubic(c, candidate(c))) < 1e-6\n        assert cubic(c, candidate(c)) == 0\n",
                      "find_root")


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_programs_cannot_pass_assertion_tests_by_cheating(name):
    result = run_tests(CHEATS[name], "python", [ABS_TEST], FAST)
    assert not result.passed and result.verdicts in (["RE"], ["WA"]), result
