"""One call into HiGHS (highspy) for every planner's linear program."""

from __future__ import annotations

import highspy
import numpy as np
import scipy.sparse as sp

#: Programs with fewer columns or fewer rows than these are solved without presolve: for one step's or the mpc
#: planner's (up to about a thousand columns) presolve takes longer than it saves, and for one step of a feeder
#: of 10,000 homes (40,000 columns, two rows a transformer) it doubled the time (78 against 34 ms); for a
#: year's program (tens of thousands of both) it pays.
PRESOLVE_FROM_COLUMNS = 20_000
PRESOLVE_FROM_ROWS = 1_000


class LpNotSolved(Exception):
    """HiGHS found no optimum; the message gives its model status."""


def solve_lp(
    cost: np.ndarray,
    col_lower: np.ndarray,
    col_upper: np.ndarray,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
    matrix: sp.csc_array,
) -> np.ndarray:
    """Minimise cost @ x subject to row_lower <= A x <= row_upper and the column bounds (infinite = none).

    Calls highspy directly: for the small programs of one coordination step, SciPy's linprog spends
    about 1.3 ms on set-up around a 0.3 ms solve. Raises LpNotSolved unless HiGHS finds an optimum.
    """
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(row_upper)
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = _finite(col_lower), _finite(col_upper)
    lp.row_lower_, lp.row_upper_ = _finite(row_lower), _finite(row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    solver = highspy.Highs()
    solver.setOptionValue("output_flag", False)
    if len(cost) < PRESOLVE_FROM_COLUMNS or len(row_upper) < PRESOLVE_FROM_ROWS:
        solver.setOptionValue("presolve", "off")
    solver.passModel(lp)
    solver.run()
    status = solver.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise LpNotSolved(f"HiGHS: {solver.modelStatusToString(status)}")
    return np.asarray(solver.getSolution().col_value)


def _finite(bound: np.ndarray) -> np.ndarray:
    """HiGHS's infinity where a bound is infinite."""
    return np.clip(np.asarray(bound, dtype=float), -highspy.kHighsInf, highspy.kHighsInf)
