"""Format, length, language and the combined reward."""

import pytest

from magjax.rewards import reward
from magjax.rewards.format import check_format
from magjax.rewards.language import identify, strip_math_and_code
from magjax.types import IOTest, Problem

MATH = Problem("m1", "math", "What is the sum of three and four? Give the answer as a number.", answer="7")
CODE = Problem("c1", "code", "Read two integers and print their sum, please, in Python.", code_language="python",
               tests=(IOTest("1 2\n", "3\n"), IOTest("4 4\n", "8\n")))
THINK = "<think>I need to add three and four together, which gives seven in total.</think>"


@pytest.mark.parametrize("kind, text, ok, reason", [
    ("math", "<think>x</think>so \\boxed{7}", True, ""),
    ("math", "  <think>x</think>\\boxed{7}", True, ""),
    ("math", "answer: <think>x</think>\\boxed{7}", False, "does not start"),
    ("math", "<think>x</think><think>y</think>\\boxed{7}", False, "2 <think>"),
    ("math", "<think>x\\boxed{7}", False, "0 </think>"),
    ("math", "<think>x \\boxed{7}</think> seven", False, "no \\boxed"),
    ("code", "<think>x</think>```python\nprint(1)\n```", True, ""),
    ("code", "<think>x</think>```\nprint(1)\n```", False, "naming its language"),
])
def test_format(kind, text, ok, reason):
    result = check_format(kind, text)
    assert result.ok == ok and reason in result.reason


def test_length_penalty_is_the_soft_overlong_ramp():
    assert reward.length_penalty(3000, 4096, 1024) == 0.0
    assert reward.length_penalty(3072, 4096, 1024) == 0.0
    assert reward.length_penalty(3584, 4096, 1024) == pytest.approx(-0.05)
    assert reward.length_penalty(4096, 4096, 1024) == pytest.approx(-0.1)
    assert reward.length_penalty(9999, 4096, 1024) == pytest.approx(-0.1)


LANGUAGE_SAMPLES = {
    "en": "The train leaves the station at noon and arrives in the evening.",
    "fr": "Le train quitte la gare à midi et arrive dans la soirée.",
    "es": "El tren sale de la estación al mediodía y llega por la tarde.",
    "it": "Il treno parte dalla stazione a mezzogiorno e arriva la sera.",
    "de": "Der Zug verlässt den Bahnhof am Mittag und kommt am Abend an.",
    "zh": "火车中午离开车站，晚上到达目的地。我们一起去吧。",
    "ru": "Поезд отправляется со станции в полдень и прибывает вечером.",
}


@pytest.mark.parametrize("code", sorted(LANGUAGE_SAMPLES))
def test_language_identification_with_latex_and_code_stripped(code):
    text = LANGUAGE_SAMPLES[code] + " $\\frac{x^2}{\\sqrt{y}} = \\int_0^1 f$ ```python\nprint('hello world')\n```"
    assert "frac" not in strip_math_and_code(text) and "print" not in strip_math_and_code(text)
    assert identify(text) == code


def test_math_rewards_take_the_published_values():
    right = reward.score(MATH, THINK + " The sum is seven, so the answer is \\boxed{7}.", 100)
    assert right.total == pytest.approx(1.1) and right.is_correct and right.language == pytest.approx(0.1)
    wrong = reward.score(MATH, THINK + " The sum is eight, so the answer is \\boxed{8}.", 100)
    assert wrong.total == pytest.approx(0.2) and not wrong.is_correct
    bad = reward.score(MATH, "The answer is \\boxed{7}.", 100)
    assert bad.total == 0.0 and bad.reason.startswith("format")
    french = reward.score(MATH, "<think>Je dois additionner trois et quatre, ce qui donne sept au total.</think>"
                                " La somme vaut sept, donc la réponse est \\boxed{7}.", 100)
    assert french.total == pytest.approx(1.0) and french.language == 0.0
    long = reward.score(MATH, THINK + " The sum is seven, so the answer is \\boxed{7}.", 10_000,
                        reward.RewardConfig(l_max=4096, l_cache=1024))
    assert long.total == pytest.approx(1.0)


def test_code_rewards_run_the_tests():
    good = "<think>Read the two numbers and print their sum, simple enough.</think>```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    result = reward.score(CODE, good, 50)
    assert result.is_correct and result.verdicts == ["AC", "AC"] and result.total >= 1.0
    wrong_lang = good.replace("```python", "```cpp")
    assert not reward.score(CODE, wrong_lang, 50).is_correct
    broken = good.replace("a + b", "a - b")
    result = reward.score(CODE, broken, 50)
    assert not result.is_correct and result.verdicts == ["WA"] and result.format == pytest.approx(0.1)


def test_per_kind_accuracy_comes_from_the_problems_kind_not_its_id():
    from magjax.loop import _group_metrics
    from magjax.types import Completion, ScoredCompletion, ScoredGroup, Task

    # Ids as loaded datasets write them: no kind prefix, and dashes everywhere.
    problems = [Problem("gsm8k/0001", "math", MATH.prompt, answer="7"),
                Problem("numina-cn_k12-17", "math", MATH.prompt, answer="7"),
                Problem("apps-3", "code", CODE.prompt, code_language="python", tests=CODE.tests)]
    responses = [THINK + " \\boxed{7}", THINK + " \\boxed{8}", "no format at all"]
    groups = []
    for uid, (problem, text) in enumerate(zip(problems, responses)):
        c = Completion(problem.id, 0, [1], [5, 6], [-1.0, -1.0], [0, 0], text, "eos", uid)
        g = ScoredGroup(problem.id, [c], [0.0], task=Task(problem),
                        scored=[ScoredCompletion(c, reward.score(problem, text, 2))])
        groups.append(g)
    m = _group_metrics(groups, version=0)
    per_kind = {k: v for k, v in m.items() if k.startswith("reward/accuracy_")}
    assert per_kind == {"reward/accuracy_math": 0.5, "reward/accuracy_code": 0.0}


def test_language_reward_is_judged_on_the_reasoning_so_a_bare_answer_earns_it():
    bare = reward.score(MATH, THINK + "\\boxed{55}", 100)
    assert bare.language == pytest.approx(0.1)  # no letters in the answer: the reasoning decides
    code = reward.score(CODE, "<think>Read the two numbers and print their sum, simple enough.</think>"
                              "```python\na, b = map(int, input().split())\nprint(a + b)\n```", 50)
    assert code.language == pytest.approx(0.1)
    # An answer with words must still be in the reasoning's language.
    switched = reward.score(MATH, THINK + " La somme vaut sept, donc la réponse est \\boxed{7}.", 100)
    assert switched.language == 0.0
    # Reasoning too short to identify earns nothing, whatever the answer says.
    terse = reward.score(MATH, "<think>3+4</think> The sum is seven, so the answer is \\boxed{7}.", 100)
    assert terse.language == 0.0
