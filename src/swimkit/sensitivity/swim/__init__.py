"""The ``swim`` engine: SWIM's one-pass diagonal curvature backpropagation, any model.

- :mod:`.graph`: tracing, the up-front checks and the pass;
- :mod:`.registry`: ``register_rule`` / ``register_elementwise``, the public rule table;
- rule files by op family: :mod:`.linear` (linear, conv), :mod:`.normalization` (batch
  norm, layer norm), :mod:`.activations`, :mod:`.pooling`, :mod:`.structural`,
  :mod:`.attention` (products of activations, softmax, attention);
- :mod:`.pairs`: a one-channel first convolution and the layers after it run on pairs
  of images (a faster kernel, the same values); :mod:`.folding`: a ReLU folded into the
  layer before it (and into the max-pool after it), fewer passes over memory;
- :mod:`.check`: ``check_rule``, a rule against the squared-Jacobian oracle.

Every rule is "the backward pass of the op with every Jacobian entry squared",
checked in the tests against the squared Jacobian from autograd.
"""

from __future__ import annotations

from . import (  # noqa: F401 - rules
    activations,
    attention,
    folding,
    linear,
    normalization,
    pairs,
    pooling,
    structural,
)
from .check import RuleCheck, check_rule
from .context import Rule, RuleContext, SValue, UnsupportedOperation, identity_rule, vjp_rule
from .graph import CurvaturePass, swim_curvature
from .registry import (
    RULES,
    elementwise_rule,
    leaf_types,
    register_elementwise,
    register_rule,
    remove_rule,
)
from .tracing import out_of_place_layers, trace

__all__ = ["RULES", "CurvaturePass", "Rule", "RuleCheck", "RuleContext", "SValue",
           "UnsupportedOperation", "check_rule", "elementwise_rule", "identity_rule",
           "leaf_types", "out_of_place_layers", "register_elementwise", "register_rule",
           "remove_rule", "swim_curvature", "trace", "vjp_rule"]
