"""The built-in selection methods, registered in the order the command line lists them."""

from __future__ import annotations

from .allocation import allocate, allocate_one
from .learned import learned
from .methods import (
    magnitude_score,
    random_score,
    second_score,
    swim_score,
    uswim_score,
    variance_score,
)
from .registry import register_method, register_planner

register_method("swim", swim_score, aliases=("sm",),
                help="SWIM: 1e6 * |h + 2g| + |w_hat| (the reference's --method SM)")
register_method("second", second_score, help="|h|, the second derivative alone")
register_method("magnitude", magnitude_score, needs_sensitivity=False, aliases=("mag",),
                help="|w_hat|, the largest normalised weights")
register_method("random", random_score, needs_sensitivity=False, aliases=("rand",),
                help="a seeded uniformly random subset")
register_method("uswim", uswim_score, aliases=("u-swim",),
                help="the SWIM score weighted by each weight's relative spread (U-SWIM)")
register_method("variance", variance_score,
                help="1/2 h (Var_plain - Var_verified), the expected loss reduction")

register_planner(
    "allocate", allocate,
    help="per device and per tolerance: min 1/2 sum h Var under the budget (convex-hull greedy)",
)

register_planner(
    "allocate-one", allocate_one,
    help="allocate with one tolerance, the device model's own (single devices, no menu)",
)

register_planner(
    "learned", learned, needs_data=True,
    help="per device, options on allocate's hulls learned under sampled device errors, "
         "then rounded to the budget",
)
