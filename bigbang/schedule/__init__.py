"""The weekend schedule: which team does which location when, and whether it all fits the window."""

from bigbang.schedule.core import Schedule, Verdict, make_schedule
from bigbang.schedule.problem import Problem, build_problem

__all__ = ["Problem", "Schedule", "Verdict", "build_problem", "make_schedule"]
