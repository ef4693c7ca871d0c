"""Exercises with self-checks: the learner answers, a check says whether it is right *and why*.

Each lab ends with one to three exercises. An exercise cell looks like::

    answer = None  # your prediction in GB, e.g. 2.5
    check_number("00-2.a", answer, expected=predicted_gb, rtol=0.05, unit="GB",
                 why="weights = parameters x 2 bytes in bf16")

- ``answer = None`` (not attempted yet) prints a reminder and passes, so "Run all" still works.
- A numeric answer within tolerance prints ✓ with the reasoning; outside it prints ✗ with how far
  off it is and the reasoning as a hint. Nothing raises: a wrong answer is a learning moment, not a crash.
- ``expected`` is computed in the notebook from the learner's own config/measurements, never typed in.

Instructors' solutions live in each module's ``solutions/`` folder as notebooks that fill in the
answers and assert ``result.ok``; CI executes them, so the checks and the solutions stay correct.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Sequence

from smml_lib.common.display import show

EXERCISE_MIME = "application/vnd.smml.exercise+json"


@dataclass
class ExerciseResult:
    exercise: str
    status: str  # "correct", "incorrect" or "unanswered"
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "correct"

    def _ipython_display_(self) -> None:
        """Already shown when checked: ending a cell with the result does not print it again."""


def _report(exercise: str, status: str, message: str) -> ExerciseResult:
    mark = {"correct": "✓", "incorrect": "✗", "unanswered": "…"}[status]
    colour = {"correct": "#11772b", "incorrect": "#b00020", "unanswered": "#666"}[status]
    text = f"{mark} Exercise {exercise}: {message}"
    show(text, html=f"<span style='color:{colour}'><b>{mark} Exercise {html.escape(exercise)}</b>: "
                    f"{html.escape(message)}</span>",
         data={EXERCISE_MIME: {"exercise": exercise, "status": status}})
    return ExerciseResult(exercise, status, message)


def check_number(exercise: str, answer: Any, expected: float, *, rtol: float = 0.1, atol: float = 0.0,
                 unit: str = "", why: str = "") -> ExerciseResult:
    """Check a numeric answer against ``expected`` within ``rtol`` (relative) or ``atol`` (absolute)."""
    if answer is None:
        return _report(exercise, "unanswered",
                       "not answered yet: replace None with your answer and run the cell again.")
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _report(exercise, "incorrect", f"{answer!r} is not a number.")
    tol = max(atol, rtol * abs(expected))
    unit_s = f" {unit}" if unit else ""
    if math.isfinite(value) and abs(value - expected) <= tol:
        near = f"{value:,.4g}{unit_s} is within {rtol:.0%} of {expected:,.4g}{unit_s}."
        return _report(exercise, "correct", f"{near} {why}".strip())
    off = (value - expected) / expected if expected else float("inf")
    return _report(exercise, "incorrect", f"{value:,.4g}{unit_s} is {off:+.0%} off (expected about "
                                          f"{expected:,.4g}{unit_s}). Hint: {why}".strip())


def check_choice(exercise: str, answer: Any, correct: str, choices: Sequence[str], *, why: str = "") -> ExerciseResult:
    """Check a multiple-choice answer (case-insensitive) against ``correct``, one of ``choices``."""
    if answer is None:
        return _report(exercise, "unanswered", f"not answered yet: set answer to one of {list(choices)}.")
    norm = str(answer).strip().lower()
    if norm not in [c.lower() for c in choices]:
        return _report(exercise, "incorrect", f"{answer!r} is not one of {list(choices)}.")
    if norm == correct.lower():
        return _report(exercise, "correct", f"{correct}. {why}".strip())
    return _report(exercise, "incorrect", f"not {answer!r}. Hint: {why}".strip())
