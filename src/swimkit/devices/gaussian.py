"""Device model ``gaussian``: Gaussian variation of bit-sliced weights, frozen in time.

:class:`GaussianDevice` is the Gaussian bit-sliced model (``DeviceModel``, its name in
earlier releases, is kept as an alias). A weight of layer l
is mapped as w / s_l (s_l = max |W_l|) onto K devices (:class:`~swimkit.slicing.BitSlicing`);
device j lands with an error Normal(0, sigma_j^2) in units of its own step, so the
weight error is one Gaussian per weight,

    dW ~ Normal(0, s_l^2 * sum_j 4^(-j m) sigma_j^2),

drawn in one go. sigma_j is ``sigma`` for a plain write, the residual of the tolerance a
plan verifies the device to, or ``sigma_verified`` for the device model's own loop
(whose tolerance is solved to reach it). A variation curve makes sigma depend on the
normalised level |w| / s_l (U-SWIM's value-dependent setting, or a measured curve).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import SwimkitError, is_number, require
from ..mapping import safe_scale
from ..plans import Plan
from ..programming import ProgrammingReport, WriteVerify, price, weight_level_price
from ..slicing import BitSlicing
from ..variation import Variation, as_variation
from .cells import loose_menu
from .protocol import Sampler, check_times
from .registry import register_device_model


@dataclass(frozen=True)
class GaussianDevice:
    """Gaussian variation of bit-sliced weights, plain-written or write-verified.

    ``sigma`` is the variation of a plain write and ``sigma_verified`` the residual
    variation of a device verified by the device's own loop, both in device steps.
    ``variation`` and ``verified_variation`` (optional) scale them by the weight's
    normalised level: a :class:`~swimkit.variation.Variation`, any callable level ->
    factor, a CSV path or a spec such as ``"band:3"``. ``write_verify`` holds the loop's
    settings; its tolerance, when not given, is solved to reach ``sigma_verified``.
    """

    sigma: float = 0.3
    sigma_verified: float = 0.03
    bits_per_weight: int = 8
    bits_per_device: int = 1
    variation: Any = None
    verified_variation: Any = None
    write_verify: WriteVerify = WriteVerify()
    _curves: tuple[Variation, Variation] = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, hint in (("sigma", "--sigma 0.3"), ("sigma_verified", "--sigma-verified 0.03")):
            value = getattr(self, name)
            require(is_number(value, finite=True) and value >= 0,
                    f"{name} must be a number >= 0 (got {value!r}); e.g. {hint}")
        require(isinstance(self.write_verify, WriteVerify),
                f"write_verify must be a WriteVerify (got {type(self.write_verify).__name__})")
        object.__setattr__(self, "_slicing", BitSlicing(self.bits_per_weight,
                                                        self.bits_per_device))
        curves = (as_variation(self.variation), as_variation(self.verified_variation))
        object.__setattr__(self, "_curves", curves)
        object.__setattr__(self, "_cache", {})

    # --- settings ----------------------------------------------------------------------

    @property
    def slicing(self) -> BitSlicing:
        return self._slicing  # type: ignore[attr-defined]

    @property
    def devices_per_weight(self) -> int:
        """K = N / m devices store one weight."""
        return self.slicing.devices

    @property
    def slice_factor(self) -> float:
        """c = sum_j 4^(-j m): the variance of a weight error per unit device variance."""
        return self.slicing.slice_factor

    @property
    def value_dependent(self) -> bool:
        """True when sigma depends on the weight's level."""
        return not all(curve.uniform for curve in self._curves)

    @property
    def prices_by_value(self) -> bool:
        return self.value_dependent

    @property
    def changes_with_time(self) -> bool:
        """False: the error is frozen at programming."""
        return False

    @property
    def loop(self) -> WriteVerify:
        """The write-verify loop with its tolerance (solved from sigma_verified if unset)."""
        if "loop" not in self._cache:
            if self.write_verify.tolerance is None:
                require(self.sigma > 0,
                        "with sigma = 0 there is nothing to verify: give --tolerance to price "
                        "the loop, or a sigma > 0")
            self._cache["loop"] = self.write_verify.resolved(self.sigma, self.sigma_verified)
        return self._cache["loop"]

    def default_menu(self) -> tuple[float, ...]:
        """Tolerances from 1.5 sigma down to the own loop's (see :func:`loose_menu`)."""
        return loose_menu(self.sigma, self.loop.tolerance)

    def with_sigma(self, sigma: float) -> GaussianDevice:
        """The same device with plain-write sigma ``sigma``."""
        return replace(self, sigma=float(sigma))

    def menu(self, menu: tuple[float, ...] | None) -> tuple[float, ...]:
        """The tolerances a plan's menu stands for (None: the device model's own loop)."""
        return (self.loop.tolerance,) if menu is None else tuple(menu)

    # --- sigma per weight and per option ----------------------------------------------------

    def level_sigma(self, level: Tensor, verified: bool) -> Tensor:
        """Per-weight sigma (device steps) at normalised levels ``level`` in [0, 1]."""
        base = self.sigma_verified if verified else self.sigma
        return base * self._curves[int(verified)](level)

    def weight_sigma(
        self, value: Tensor, scale: Tensor, verified: Tensor | None = None
    ) -> Tensor:
        """Per-weight sigma in device steps of weights ``value`` (layer scale ``scale``);
        ``verified`` (bool, like ``value``) marks weights verified by the device's loop."""
        level = level_of(value, scale)
        plain = self.level_sigma(level, verified=False)
        if verified is None:
            return plain
        return torch.where(verified, self.level_sigma(level, verified=True), plain)

    def plain_sigma(self, value: Tensor, scale: Tensor) -> Tensor:
        """Sigma of a plain write, float64: one number (0-dim) or one per weight."""
        if not self.value_dependent:
            return torch.tensor(float(self.sigma), dtype=torch.float64)
        return self.weight_sigma(value, scale).double()

    def option_sigmas(self, value: Tensor, scale: Tensor,
                      menu: tuple[float, ...] | None = None) -> Tensor:
        """Sigma of each option (plain write, then each tolerance of ``menu``), float64.

        Shape ``(1 + O,)`` for uniform devices, ``(*value.shape, 1 + O)`` otherwise. The
        device model's own tolerance lands at ``sigma_verified`` (times its curve); any
        other tolerance at the loop's closed-form residual at the device's plain sigma.
        """
        plain = self.plain_sigma(value, scale)
        columns = [plain]
        for tolerance in self.menu(menu):
            if tolerance == self.loop.tolerance:
                columns.append(self._verified_sigma(value, scale))
            else:
                columns.append(self.loop.with_tolerance(tolerance).residual_sigma(plain))
        return torch.stack(torch.broadcast_tensors(*columns), dim=-1)

    def option_variances(self, value: Tensor, scale: Tensor,
                         menu: tuple[float, ...] | None = None, time: float = 0.0) -> Tensor:
        """Squares of :meth:`option_sigmas` (the error does not change with time)."""
        return self.option_sigmas(value, scale, menu).square()

    def option_tables(self, value: Tensor, scale: Tensor, menu: tuple[float, ...] | None,
                      time: float, rows: int) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`option_variances` and :meth:`option_times` of ``value`` flattened, in
        pieces of ``rows`` weights (one ``(1 + O,)`` pair when every device is alike):
        what a planner reads of a large layer without holding its whole tables."""
        if not self.value_dependent:
            yield self.option_variances(value, scale, menu, time), self.option_times(
                value, scale, menu)
            return
        flat = value.reshape(-1)
        for start in range(0, flat.numel(), rows):
            part = flat[start : start + rows]
            yield self.option_variances(part, scale, menu, time), self.option_times(
                part, scale, menu)

    def _verified_sigma(self, value: Tensor, scale: Tensor) -> Tensor:
        """sigma_verified (times its curve): where the default loop lands a device."""
        if not self.value_dependent:
            return torch.tensor(float(self.sigma_verified), dtype=torch.float64)
        return self.level_sigma(level_of(value, scale), verified=True).double()

    def option_times(self, value: Tensor, scale: Tensor,
                     menu: tuple[float, ...] | None = None) -> Tensor:
        """Seconds to program one device at each option (plain write first), float64;
        shaped like :meth:`option_sigmas`."""
        plain = self.plain_sigma(value, scale)
        loop = self.loop
        columns = [torch.full_like(plain, loop.t_program)]
        columns += [loop.with_tolerance(t).verify_time(plain) for t in self.menu(menu)]
        return torch.stack(columns, dim=-1)

    # --- a plan's noise -------------------------------------------------------------------

    def noise_stds(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        plan: Plan | None = None,
    ) -> dict[str, Tensor]:
        """Standard deviation of dW for every weight (weight units), shaped like it.

        Uniform spreads are expanded views of one number (no memory). They do not change
        between Monte-Carlo chips: compute them once, then :func:`draw`.
        """
        _check_plan(plan, values, self.devices_per_weight)
        return {
            name: self._std(value, scales[name], plan, name).to(value.dtype).expand(value.shape)
            for name, value in values.items()
        }

    def variance(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        plan: Plan | None = None,
        time: float = 0.0,
    ) -> dict[str, Tensor]:
        """Var(dW / s) per weight: sum_j 4^(-j m) sigma_j^2 (float64, shaped like the weight);
        the same at every ``time``."""
        _check_plan(plan, values, self.devices_per_weight)
        return {name: self._variance(value, scales[name], plan, name).expand(value.shape)
                for name, value in values.items()}

    def sampler(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        plan: Plan | None = None,
        times: Sequence[float] = (0.0,),
    ) -> Sampler:
        """One draw per chip, the same at every time (the error is frozen)."""
        stds = self.noise_stds(values, scales, plan)
        count = len(check_times(times))
        return lambda generator: [draw(stds, generator)] * count

    def sample(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        plan: Plan | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One Monte-Carlo chip: a draw of dW for every weight in ``values``."""
        return self.sampler(values, scales, plan)(generator)[0]

    def programming_report(
        self,
        values: Mapping[str, Tensor],
        scales: Mapping[str, Tensor],
        plan: Plan,
    ) -> ProgrammingReport:
        """Modelled time of programming ``plan`` device by device, against all or nothing."""
        _check_plan(plan, values, self.devices_per_weight)
        k = self.devices_per_weight
        spent = 0.0
        for name, value in values.items():
            times = self.option_times(value, scales[name], plan.menu)
            if plan.weight_level:
                spent += weight_level_price(plan.levels[name][..., 0], times, k)
            else:
                spent += price(plan.levels[name], times)
        full, none = self.reference_times(values, scales)
        require(spent > 0, "the plan takes no programming time (t_program = 0 and nothing "
                           "verified); set t_program > 0 to get a speedup")
        return ProgrammingReport(
            time_plan_s=spent, time_full_verify_s=full, time_no_verify_s=none,
            speedup=full / spent, fraction_verified=plan.fraction_verified,
            devices_fraction_verified=plan.devices_fraction_verified,
        )

    def reference_times(
        self, values: Mapping[str, Tensor], scales: Mapping[str, Tensor]
    ) -> tuple[float, float]:
        """Seconds of verifying every device with the default loop, and of writing every
        device once: the two ends every speedup is measured between."""
        k = self.devices_per_weight
        full = none = 0.0
        for name, value in values.items():
            default = self.option_times(value, scales[name], None)
            full += weight_level_price(torch.ones(value.shape, dtype=torch.uint8), default, k)
            none += k * value.numel() * self.loop.t_program
        return full, none

    def describe(self) -> dict[str, Any]:
        """The settings, for result files."""
        try:
            loop = self.loop
        except SwimkitError:  # no loop reaches sigma_verified: report the settings as given
            loop = self.write_verify
        return {
            "kind": "gaussian",
            "sigma": self.sigma,
            "sigma_verified": self.sigma_verified,
            "bits_per_weight": self.bits_per_weight,
            "bits_per_device": self.bits_per_device,
            "devices_per_weight": self.devices_per_weight,
            "slice_factor": self.slice_factor,
            "variation": self._curves[0].describe(),
            "verified_variation": self._curves[1].describe(),
            "write_verify": {"tolerance": loop.tolerance, "max_attempts": loop.max_attempts,
                             "t_program_s": loop.t_program, "t_read_s": loop.t_read},
        }

    # --- internals -------------------------------------------------------------------------

    def _std(self, value: Tensor, scale: Tensor, plan: Plan | None, name: str) -> Tensor:
        """dW's standard deviation; weight-level plans take the closed form sigma * unit."""
        levels = plan.levels[name].to(value.device) if plan is not None else None
        if levels is not None and not plan.weight_level:
            return self._variance(value, scale, plan, name).sqrt() * scale.double()
        verified = levels[..., 0] if levels is not None else None
        menu = plan.menu if plan is not None else None
        if menu is not None and menu != (self.loop.tolerance,):
            sigmas = self.option_sigmas(value, scale, menu)
            chosen = _pick(sigmas, verified)
            return chosen * (scale.double() * math.sqrt(self.slice_factor))
        return self._default_std(value, scale, None if verified is None else verified > 0)

    def _default_std(self, value: Tensor, scale: Tensor, verified: Tensor | None) -> Tensor:
        """The weight-level spread: sigma or sigma_verified (times its curve) per weight."""
        if self.value_dependent:
            unit = scale * math.sqrt(self.slice_factor)
            return self.weight_sigma(value, scale, verified) * unit
        unit = scale.to(value.dtype) * math.sqrt(self.slice_factor)
        if verified is None or not bool(verified.any()):
            return unit * self.sigma
        if bool(verified.all()):
            return unit * self.sigma_verified
        return torch.where(verified.to(value.device), unit * self.sigma_verified,
                           unit * self.sigma)

    def _variance(self, value: Tensor, scale: Tensor, plan: Plan | None, name: str) -> Tensor:
        menu = plan.menu if plan is not None else None
        sigmas = self.option_sigmas(value, scale, menu).to(value.device)
        if plan is None:
            return self.slice_factor * sigmas[..., 0].square()
        levels = plan.levels[name].to(value.device)
        if plan.weight_level:
            return self.slice_factor * _pick(sigmas, levels[..., 0]).square()
        weights = self.slicing.variance_weights().to(value.device)
        option_variance = sigmas.square()
        if option_variance.dim() == 1:
            return option_variance[levels.long()].mul_(weights).sum(-1)
        return torch.gather(option_variance, -1, levels.long()).mul_(weights).sum(-1)


#: The name of :class:`GaussianDevice` in earlier releases.
DeviceModel = GaussianDevice


def _pick(sigmas: Tensor, levels: Tensor | None) -> Tensor:
    """sigmas[..., level] per weight (levels None: the plain write)."""
    if levels is None:
        return sigmas[..., 0]
    if sigmas.dim() == 1:
        return sigmas.to(levels.device)[levels.long()]
    return torch.gather(sigmas, -1, levels.long().unsqueeze(-1)).squeeze(-1)


def _check_plan(plan: Plan | None, values: Mapping[str, Tensor], devices: int) -> None:
    if plan is None:
        return
    missing = [n for n in values if n not in plan.levels]
    if missing:
        raise SwimkitError(f"the plan has no levels for {missing[0]}; select again for this model")
    if plan.devices_per_weight != devices and not plan.weight_level:
        raise SwimkitError(
            f"the plan has {plan.devices_per_weight} devices per weight but the device model "
            f"{devices}; select again with the same bits per weight and per device"
        )


def draw(stds: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Standard normals scaled by ``stds``, drawn in their order on each tensor's device.

    Two plans drawn with the same generator state share the same underlying normals
    (common random numbers).
    """
    return {
        name: torch.randn(std.shape, generator=generator, device=std.device,
                          dtype=std.dtype).mul_(std)
        for name, std in stds.items()
    }


def level_of(value: Tensor, scale: Tensor) -> Tensor:
    """Normalised level |w| / s in [0, 1] (0 for an all-zero layer)."""
    return (value.detach().abs() / safe_scale(scale)).clamp_(0.0, 1.0)


def gaussian(levels: Any = None, **settings: Any) -> Any:
    """``GaussianDevice(**settings)``; with ``levels`` (a curve over each device's level) the
    multi-level form whose spread differs device by device."""
    if levels is None:
        return GaussianDevice(**settings)
    from .multilevel import MultiLevelGaussian

    if "verified_variation" in settings:
        raise SwimkitError("gaussian with levels= verifies every level by its own loop; "
                           "drop --verified-variation")
    return MultiLevelGaussian(levels=levels, **settings)


register_device_model(
    "gaussian", gaussian, options={"levels": None},
    help="Gaussian error per device step, frozen at programming (levels=pcm or a curve: "
         "a spread per device level, for multi-level cells)")

__all__ = ["DeviceModel", "GaussianDevice", "draw", "gaussian", "level_of"]
