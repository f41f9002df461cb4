"""The executable spec runs each example on processes and on Ray as a Hypothesis run of its own
(specs/spec_cluster.py `one_example_per_run`). Under CI, Hypothesis loads its 'ci' profile,
which derandomizes: every run would then draw the same program, and the spec would check one
program many times (CI once ran one Ray program 15 times). These runs must differ whatever
profile is loaded."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from specs.spec_cluster import one_example_per_run

PROGRAMS: list[tuple[int, ...]] = []


class Recorder(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[int] = []

    @rule(value=st.integers(0, 2**32))
    def draw(self, value: int) -> None:
        self.drawn.append(value)

    def teardown(self) -> None:
        PROGRAMS.append(tuple(self.drawn))


def test_one_example_per_run_draws_a_new_program_each_run_even_under_the_ci_profile() -> None:
    settings.register_profile('isocluster-before-ci-check', settings.default)
    settings.load_profile('ci')
    try:
        per_run = one_example_per_run(5)
        PROGRAMS.clear()
        for _ in range(6):
            run_state_machine_as_test(Recorder, settings=per_run)
    finally:
        settings.load_profile('isocluster-before-ci-check')
    programs = [program for program in PROGRAMS if program]  # each run's first is the simplest
    assert len(set(programs)) >= 5, PROGRAMS
