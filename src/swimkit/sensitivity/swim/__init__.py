"""The ``swim`` engine: SWIM's one-pass diagonal curvature backpropagation, any model.

- :mod:`.graph`: tracing, the up-front checks and the pass;
- :mod:`.registry`: ``register_rule`` / ``register_elementwise``, the public rule table;
- rule files by op family: :mod:`.linear` (linear, conv), :mod:`.normalization` (batch
  norm, layer norm), :mod:`.activations`, :mod:`.pooling`, :mod:`.structural`.

Every rule is "the backward pass of the op with every Jacobian entry squared",
checked in the tests against the squared Jacobian from autograd.
"""

from __future__ import annotations

from . import activations, linear, normalization, pooling, structural  # noqa: F401 - rules
from .context import Rule, RuleContext, SValue, UnsupportedOperation, identity_rule, vjp_rule
from .graph import CurvaturePass, out_of_place_layers, swim_curvature, trace
from .registry import elementwise_rule, leaf_types, register_elementwise, register_rule

__all__ = ["CurvaturePass", "Rule", "RuleContext", "SValue", "UnsupportedOperation",
           "elementwise_rule", "identity_rule", "leaf_types", "out_of_place_layers",
           "register_elementwise", "register_rule", "swim_curvature", "trace", "vjp_rule"]
