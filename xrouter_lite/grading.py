"""Answer grading: ``is_correct(task, response, reference) -> bool``.

Tasks (see ``TASKS``):

- ``"gsm8k"``: the final number of the response, taken (in this order) from the text after the last ``####``,
  else the last ``\\boxed{...}``, else an "answer is X" / "Answer: X" phrase, else the last number anywhere.
  Thousands commas, ``$``, units ("18 dollars"), a trailing ``.0``, percentages (``50%`` -> 50), LaTeX
  ``\\frac{a}{b}`` and plain fractions ``a/b`` are normalised, then compared numerically. The reference may be a
  bare number ("1,000") or a whole GSM8K answer ("...\\n#### 1,000").
- ``"math"``: symbolic equality with math-verify (``math_verify.parse`` / ``verify``). Its time-outs and
  exceptions count as wrong. math-verify's time-outs use SIGALRM, which works only in the main thread; in other
  threads the checks run without a time-out.
- ``"mc"`` / ``"multiple_choice"``: the option letter (A-E) of the response: a bare letter ("B", "(B)", "B."),
  "The answer is (C)", "Answer: C", "**C**", or a response starting with "(C) text" / "C) text" / "C. text".
  Several different letters at the same level of evidence, or none, count as wrong. The reference is a letter.
- ``"exact"``: exact match after normalisation (case, surrounding whitespace/quotes/final punctuation,
  inner whitespace collapsed).
- ``"code"``: needs a test harness this project does not ship, so ``is_correct`` raises
  ``UnsupportedTaskError`` (RouterBench's mbpp rows come pre-graded by the importer, so nothing needs it).

A grader that cannot find an answer returns False, never a guess. An unknown task raises ``UnknownTaskError``
(a ``ValueError``). ``extract_answer(task, response)`` returns what the grader read, for diagnostics.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

__all__ = [
    "TASKS",
    "GRADABLE_TASKS",
    "GradingError",
    "UnknownTaskError",
    "UnsupportedTaskError",
    "is_correct",
    "can_grade",
    "check_task",
    "extract_answer",
    "extract_number",
    "extract_choice",
    "normalize_number",
    "gsm8k_gold",
    "read_answer",
]


class GradingError(ValueError):
    """Base of grading errors."""


class UnknownTaskError(GradingError):
    """The task name is not one of ``TASKS``."""


class UnsupportedTaskError(GradingError):
    """The task is known but cannot be graded here (``code`` needs a test harness)."""


GRADABLE_TASKS = ("gsm8k", "math", "mc", "multiple_choice", "exact")
TASKS = GRADABLE_TASKS + ("code",)


def check_task(task: str) -> None:
    """Raise UnknownTaskError unless ``task`` is one of ``TASKS``."""
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def can_grade(task: str | None) -> bool:
    """True when ``is_correct`` can grade answers of this task."""
    return task in GRADABLE_TASKS


def is_correct(task: str, response: str | None, reference: str) -> bool:
    """Grade one response against its reference. See the module docstring for each task's rules."""
    check_task(task)
    if task == "code":
        raise UnsupportedTaskError(
            "task 'code' cannot be graded here: it needs the problem's unit tests and a sandbox to run them. "
            "Import pre-graded code answers instead (e.g. `xrouter-lite import routerbench` keeps mbpp's grades)."
        )
    if response is None or not str(response).strip():
        return False
    response = str(response)
    reference = "" if reference is None else str(reference)
    if task == "gsm8k":
        return _grade_gsm8k(response, reference)
    if task == "math":
        return _grade_math(response, reference)
    if task in ("mc", "multiple_choice"):
        gold = extract_choice(reference)
        got = extract_choice(response)
        return gold is not None and got is not None and gold == got
    if task == "exact":
        return _norm_text(response) == _norm_text(reference) and _norm_text(reference) != ""
    raise UnknownTaskError(f"unknown task {task!r}")  # pragma: no cover (check_task covers it)


def extract_answer(task: str, response: str | None) -> str | None:
    """What the grader reads from ``response`` (a normalised number, a letter, ...), or None if nothing."""
    check_task(task)
    if response is None:
        return None
    if task == "gsm8k":
        n = extract_number(response)
        return None if n is None else _fmt_fraction(n)
    if task in ("mc", "multiple_choice"):
        return extract_choice(response)
    if task == "exact":
        return _norm_text(response) or None
    if task == "math":
        try:
            from math_verify import parse

            parsed = parse(response, parsing_timeout=_timeout(5))
            return str(parsed[1]) if len(parsed) > 1 else (str(parsed[0]) if parsed else None)
        except BaseException:  # noqa: BLE001 (math-verify raises odd things, incl. TimeoutError)
            return None
    return None


# ---- numbers (gsm8k) ------------------------------------------------------------------------------------------

# A number: optional sign, digits with proper thousands commas or plain digits, optional decimals; or ".5".
_NUM = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(rf"(?<![\w.])([-\u2212]?)\s?\$?\s?({_NUM})(?:\s*/\s*({_NUM}))?(\s*%)?")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-\u2212]?[\d.,]+)\s*\}\s*\{\s*([-\u2212]?[\d.,]+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)(\d)")
_ANSWER_PHRASE_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*(?:\*\*)?\s*:?\s*(.{0,60})", re.IGNORECASE | re.DOTALL
)


def _clean_latex(text: str) -> str:
    text = _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    text = _FRAC_SHORT_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    text = text.replace("\\$", "$").replace("\\%", "%").replace("\\,", "").replace("\\!", "")
    text = re.sub(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}", r" \1 ", text)
    text = text.replace("{,}", ",")
    return text


def _to_fraction(s: str) -> Fraction:
    return Fraction(s.replace(",", ""))


def _numbers(text: str) -> list[Fraction]:
    """Every number in ``text``, in order, normalised to a Fraction."""
    out: list[Fraction] = []
    for m in _NUMBER_RE.finditer(_clean_latex(text)):
        sign, num, den, _pct = m.groups()
        try:
            v = _to_fraction(num)
            if den is not None:
                d = _to_fraction(den)
                if d == 0:
                    continue
                v = v / d
        except (ValueError, ZeroDivisionError):
            continue
        if sign:
            v = -v
        out.append(v)
    return out


def normalize_number(text: str) -> Fraction | None:
    """The first number in ``text`` ("$1,000.00" -> 1000, "50%" -> 50, "-3" -> -3, "1/2" -> 1/2), or None."""
    nums = _numbers(text)
    return nums[0] if nums else None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def extract_number(response: str) -> Fraction | None:
    """The final numeric answer of a GSM8K-style response (see the module docstring), or None."""
    if not response:
        return None
    if "####" in response:
        tail = response.rsplit("####", 1)[1]
        n = normalize_number(tail)
        if n is not None:
            return n
    boxed = _boxed_contents(response)
    if boxed:
        n = normalize_number(boxed[-1])
        if n is not None:
            return n
    phrases = list(_ANSWER_PHRASE_RE.finditer(response))
    if phrases:
        n = normalize_number(phrases[-1].group(1))
        if n is not None:
            return n
    nums = _numbers(response)
    return nums[-1] if nums else None


def gsm8k_gold(answer: str) -> str:
    """The normalised gold number of a GSM8K answer field ("...#### 1,000" -> "1000"); ValueError if none."""
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '#### <number>' line")
    n = normalize_number(answer.rsplit("####", 1)[1])
    if n is None:
        raise ValueError(f"no number after '####' in {answer.rsplit('####', 1)[1].strip()[:40]!r}")
    return _fmt_fraction(n)


def _fmt_fraction(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    # finite decimal when possible, else a/b
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:
        s = f"{float(v):.12f}".rstrip("0").rstrip(".")
        if Fraction(s) == v:
            return s
    return f"{v.numerator}/{v.denominator}"


def _grade_gsm8k(response: str, reference: str) -> bool:
    gold = normalize_number(reference.rsplit("####", 1)[1]) if "####" in reference else normalize_number(reference)
    if gold is None:
        return False
    got = extract_number(response)
    if got is None:
        return False
    if got == gold:
        return True
    return abs(float(got) - float(gold)) <= 1e-6 * max(1.0, abs(float(gold)))


# ---- math (math-verify) ---------------------------------------------------------------------------------------


def _timeout(seconds: int) -> int | None:
    # math-verify's time-out is SIGALRM-based: only usable from the main thread.
    return seconds if threading.current_thread() is threading.main_thread() else None


def _grade_math(response: str, reference: str) -> bool:
    if not reference.strip():
        return False
    try:
        from math_verify import parse, verify

        gold = parse(reference if "$" in reference or "\\" in reference else f"${reference}$", parsing_timeout=_timeout(5))
        if not gold:
            gold = parse(reference, parsing_timeout=_timeout(5))
        pred = parse(response, parsing_timeout=_timeout(5))
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_timeout(5)))
    except BaseException as e:  # noqa: BLE001 (math-verify may raise TimeoutError, sympy errors, RecursionError)
        if isinstance(e, KeyboardInterrupt):
            raise
        return False


# ---- multiple choice ------------------------------------------------------------------------------------------

_L = r"[A-E]"
_BARE_RE = re.compile(rf"^\W*\(?\s*({_L})\s*\)?\W*$", re.IGNORECASE)  # a lone letter, any case
_PHRASE_RES = [
    # "The answer is (C)", "Answer: C", "correct answer: **C**", "final answer = option C"
    re.compile(
        rf"answer(?:\*\*)?\s*(?:is|would be|should be|will be|:|=)\s*:?\s*(?:\*\*)?\s*(?:option\s+|choice\s+)?"
        rf"[\(\[]?({_L})(?![A-Za-z0-9])(?![\)\]]?\s*(?:or|and|/|,)\s*[\(\[]?[A-E](?![A-Za-z0-9]))",
        re.IGNORECASE,
    ),
    # "Option C is correct", "the correct choice is C", "I choose B"
    re.compile(
        rf"(?:(?:option|choice)\s*[\(\[]?({_L})[\)\]]?\s*(?:is|would be)\s*(?:the\s+)?(?:correct|right|best)"
        rf"|(?:correct|right|best)\s+(?:option|choice)\s*(?:is|:)\s*(?:\*\*)?[\(\[]?({_L})(?![A-Za-z0-9])"
        rf"|\bI (?:choose|pick|select|would choose|would pick)\s+(?:option\s+)?[\(\[]?({_L})(?![A-Za-z0-9]))",
        re.IGNORECASE,
    ),
]
_BOLD_RE = re.compile(rf"\*\*\s*\(?({_L})(?![A-Za-z0-9])\)?[\s.:)]*(?:\*\*|[^*]{{0,80}}\*\*)")
_LEADING_RE = re.compile(rf"^\s*(?:\*\*)?\s*\(?({_L})(?:\)|\.|:|\s*-)\s*\S")


def _unique(letters: list[str]) -> str | None:
    distinct = set(letters)
    return letters[0] if len(distinct) == 1 else None


def extract_choice(response: str) -> str | None:
    """The option letter (A-E) a response chose, or None when absent or ambiguous."""
    if response is None:
        return None
    text = str(response).strip()
    if not text:
        return None
    m = _BARE_RE.match(text)
    if m:
        return m.group(1).upper()
    for rx in _PHRASE_RES:
        # "answer" words are case-insensitive, but the letter must be upper case
        letters = [g for m in rx.finditer(text) for g in m.groups() if g is not None and g.isupper()]
        if letters:
            return _unique(letters)
    bold = [m.group(1) for m in _BOLD_RE.finditer(text)]
    if bold:
        return _unique(bold)
    m = _LEADING_RE.match(text)
    if m:
        return m.group(1)
    first_line = text.splitlines()[0].strip()
    m = _BARE_RE.match(first_line)
    if m and m.group(1).isupper():
        return m.group(1)
    return None


# ---- exact ----------------------------------------------------------------------------------------------------


def _norm_text(s: str) -> str:
    s = str(s).strip().lower()
    s = re.sub(r"\s+", " ", s)
    s = s.strip(" \"'`")
    s = s.rstrip(".!?;:,")
    return s.strip()


# ---- reading an answer without knowing the task (agentic mode) --------------------------------------------------

_CODE_RE = re.compile(r"```|^\s*(?:def|class|import|from)\s", re.MULTILINE)


def read_answer(response: str | None, task: str | None = None) -> str | None:
    """What an answer says, for comparing answers (agreement), never for grading: no reference is used.

    With a known ``task`` this is ``extract_answer``. Without one (serving): the option letter when one is read
    (``extract_choice``), else the final number (``extract_number``) when the response is not code, else None.
    Code and free text read as None (two such answers never count as agreeing)."""
    if response is None or not str(response).strip():
        return None
    text = str(response)
    if task is not None and task in GRADABLE_TASKS and task != "math":
        return extract_answer(task, text)
    if task == "code" or _CODE_RE.search(text):
        return None
    letter = extract_choice(text)
    if letter is not None:
        return letter
    n = extract_number(text)
    return None if n is None else _fmt_fraction(n)
