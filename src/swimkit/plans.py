"""Write-verify plans: how every device of every device weight is programmed.

A weight is stored on K devices (:mod:`swimkit.slicing`). A plan gives each device a
*level*: 0 = a plain write, k >= 1 = write-verify with tolerance ``menu[k - 1]`` (device
steps). ``levels[name]`` is a uint8 tensor shaped ``(*weight.shape, K)``, most significant
device first. ``menu`` None stands for one option, the device model's own loop (the
tolerance that reaches its ``sigma_verified``): a bool mask per weight is the special
case "no device, or all K devices at that tolerance", so weight-level methods and files
written by the first release (bool masks) load as such.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .choices import Spelled
from .errors import SwimkitError, is_number, require
from .frozen import TensorView, frozen, thawed
from .mapping import DeviceWeight, named_weights
from .programming import ProgrammingReport
from .storage import atomic_save, atomic_write, atomic_write_json, atomic_write_text, load_kind

PLAN_KIND = "swimkit.plan"
PLAN_VERSION = 2
MAX_OPTIONS = 255


def check_menu(menu: object) -> tuple[float, ...] | None:
    """``menu`` as a tuple of tolerances > 0 (or None), with a clear error otherwise."""
    if menu is None:
        return None
    try:
        values = tuple(float(t) for t in menu)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise SwimkitError(
            f"a tolerance menu must be a list of numbers in device steps (got {menu!r}); "
            "e.g. [0.45, 0.3, 0.2, 0.1, 0.052]"
        ) from None
    require(0 < len(values) <= MAX_OPTIONS,
            f"a tolerance menu needs 1 to {MAX_OPTIONS} tolerances (got {len(values)})")
    require(all(is_number(t, finite=True) and t > 0 for t in values),
            f"every tolerance must be a number > 0 in device steps (got {list(values)})")
    require(len(set(values)) == len(values),
            f"the tolerance menu {list(values)} repeats a tolerance; give each once")
    return values


class Verify(Spelled):
    """A plan without selection: verify no device (``"none"``) or every device (``"all"``).

    A str, so ``"none"`` and ``"all"`` are accepted wherever a ``Verify`` is.
    """

    NONE = "none"
    ALL = "all"

    @classmethod
    def of(cls, plan: object) -> Verify:
        """``plan`` (None, "none", "all", in any case) as a ``Verify``, else a clear error."""
        text = "none" if plan is None else plan.lower() if isinstance(plan, str) else None
        require(text in ("none", "all"), f"plan must be a Plan, 'none' or 'all' (got {plan!r})")
        return cls(text)


class Plan:
    """Per-device programming levels of a model's device weights.

    Build one from ``levels`` (uint8, ``(*shape, K)``) and a ``menu`` of tolerances, or
    from bool ``masks`` (True = write-verify every device of the weight; ``K`` then comes
    from ``devices_per_weight``, default 8). ``programming`` holds the modelled time when
    the plan was priced; ``chip`` the description of the chip it was planned for
    (:meth:`swimkit.ChipSpec.describe_all`; evaluating, training or re-pricing on another
    chip is refused or asked for explicitly); ``meta`` anything a method reports (its
    cost, its settings).
    """

    def __init__(
        self,
        masks: Mapping[str, Tensor] | None = None,
        method: str = "manual",
        *,
        levels: Mapping[str, Tensor] | None = None,
        menu: tuple[float, ...] | list[float] | None = None,
        devices_per_weight: int | None = None,
        requested: dict[str, Any] | None = None,
        programming: ProgrammingReport | None = None,
        meta: dict[str, Any] | None = None,
        ranges: Mapping[str, Tensor] | None = None,
        chip: Mapping[str, Any] | None = None,
    ) -> None:
        require((masks is None) != (levels is None),
                "a plan needs either masks (one bool per weight) or levels (one per device)")
        self.method = method
        self.menu = check_menu(menu)
        self.requested = frozen(dict(requested or {}))
        self.programming = programming
        self.meta = frozen(dict(meta or {}))
        self.ranges = None if ranges is None else TensorView(_check_ranges(ranges))
        self.chip = None if chip is None else frozen(_plain_json(chip, "chip"))
        if masks is not None:
            k = 8 if devices_per_weight is None else int(devices_per_weight)
            require(k >= 1, f"devices_per_weight must be >= 1 (got {devices_per_weight!r})")
            require(self.menu is None or len(self.menu) == 1,
                    "a plan from bool masks verifies at one tolerance: give a menu of one")
            self._levels = {name: _levels_of_mask(name, m, k) for name, m in masks.items()}
        else:
            assert levels is not None
            self._levels = {name: _check_levels(name, v) for name, v in levels.items()}
            ks = {v.shape[-1] for v in self._levels.values()}
            require(len(ks) <= 1, "every layer of a plan must have the same devices per weight")
            if devices_per_weight is not None:
                require(ks <= {devices_per_weight},
                        f"levels have {ks} devices per weight, not {devices_per_weight}")
            self._check_menu_covers_levels()

    def __setattr__(self, name: str, value: Any) -> None:
        if "_levels" in self.__dict__:  # built: a plan is frozen, copies record changes
            raise AttributeError(f"a Plan is frozen: use plan.recorded({name}=...) for a "
                                 "copy that records it")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Plan is frozen: {name} cannot be deleted")

    @property
    def levels(self) -> TensorView:
        """Per weight, the level of each device: uint8 ``(*weight.shape, K)`` (copies:
        the plan itself never changes)."""
        return TensorView(self._levels)

    #: What :meth:`recorded` may set: the record of how a plan was made, not its levels.
    RECORD = ("method", "requested", "programming", "meta", "ranges", "chip")

    def recorded(self, **fields: Any) -> Plan:
        """A copy of this plan with ``fields`` of :data:`RECORD` set (the levels shared)."""
        unknown = sorted(set(fields) - set(self.RECORD))
        require(not unknown, f"a plan records only {', '.join(self.RECORD)} (got {unknown})")
        if fields.get("chip") is not None:
            fields["chip"] = frozen(_plain_json(fields["chip"], "chip"))
        for name in ("meta", "requested"):
            if name in fields:
                fields[name] = frozen(dict(fields[name] or {}))
        if fields.get("ranges") is not None:
            fields["ranges"] = TensorView(_check_ranges(fields["ranges"]))
        out = copy.copy(self)
        out.__dict__.update(fields)
        return out

    # --- construction helpers ------------------------------------------------------------

    @classmethod
    def uniform(cls, weights: Mapping[str, Tensor], verify: bool,
                devices_per_weight: int | None = None) -> Plan:
        """No weight verified (``verify=False``) or every weight verified.

        ``weights`` maps names to tensors shaped like the weights (e.g. their values).
        """
        masks = {
            k: torch.full(v.shape, verify, dtype=torch.bool, device=v.device)
            for k, v in weights.items()
        }
        return cls(masks=masks, method="all" if verify else "none",
                   devices_per_weight=devices_per_weight)

    def _check_menu_covers_levels(self) -> None:
        options = 1 if self.menu is None else len(self.menu)
        highest = max((int(v.max()) for v in self._levels.values() if v.numel()), default=0)
        require(highest <= options,
                f"a plan level of {highest} needs a menu of at least {highest} tolerances "
                f"(the menu has {options})")

    # --- what the plan holds -------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._levels)

    @property
    def devices_per_weight(self) -> int:
        return next(iter(self._levels.values())).shape[-1] if self._levels else 0

    @property
    def options(self) -> int:
        """Number of verify options (tolerances) the levels refer to."""
        return 1 if self.menu is None else len(self.menu)

    @property
    def masks(self) -> TensorView:
        """True where any device of the weight is write-verified (copies)."""
        return TensorView(self._masks)

    @cached_property
    def _masks(self) -> dict[str, Tensor]:
        return {name: _first_device(v) > 0 if _same_on_every_device(v) else v.amax(-1) > 0
                for name, v in self._levels.items()}

    @cached_property
    def weight_level(self) -> bool:
        """True if the devices of every weight share one level (a weight-level plan)."""
        return all(_same_on_every_device(v) or bool((v.amin(-1) == v.amax(-1)).all())
                   for v in self._levels.values())

    @property
    def weights_total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    @property
    def weights_verified(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    @property
    def fraction_verified(self) -> float:
        total = self.weights_total
        return self.weights_verified / total if total else 0.0

    @property
    def devices_total(self) -> int:
        return self.weights_total * self.devices_per_weight

    @property
    def devices_verified(self) -> int:
        if self.weight_level:
            return self.weights_verified * self.devices_per_weight
        return int(sum(int((v > 0).sum()) for v in self._levels.values()))

    @property
    def devices_fraction_verified(self) -> float:
        total = self.devices_total
        return self.devices_verified / total if total else 0.0

    def option_counts(self) -> dict[str, list[int]]:
        """Per layer, how many devices sit at each level (index 0 = plain write)."""
        out = {}
        for name, v in self._levels.items():
            if _same_on_every_device(v):
                counts = torch.bincount(_first_device(v).reshape(-1).long(),
                                        minlength=self.options + 1) * v.shape[-1]
            else:
                counts = torch.bincount(v.reshape(-1).long(), minlength=self.options + 1)
            out[name] = [int(c) for c in counts]
        return out

    def per_layer(self) -> dict[str, dict[str, Any]]:
        """Per layer: weights verified, their fraction, devices verified and per option."""
        counts = self.option_counts()
        return {
            name: {
                "weights": m.numel(),
                "weights_verified": int(m.sum()),
                "fraction_verified": float(m.float().mean()) if m.numel() else 0.0,
                "devices": m.numel() * self.devices_per_weight,
                "devices_verified": sum(counts[name][1:]),
                "devices_per_option": counts[name],
            }
            for name, m in self._masks.items()
        }

    def summary(self) -> dict[str, Any]:
        """What a programming flow needs to know at a glance, JSON-ready."""
        return {
            "method": self.method,
            "menu_tolerances": list(self.menu) if self.menu is not None else None,
            "devices_per_weight": self.devices_per_weight,
            "weights_total": self.weights_total,
            "weights_verified": self.weights_verified,
            "fraction_verified": self.fraction_verified,
            "devices_verified": self.devices_verified,
            "devices_fraction_verified": self.devices_fraction_verified,
            "requested": self.requested,
            "programming": self.programming.to_dict() if self.programming else None,
            "layers": self.per_layer(),
            "chip": self.chip,
            "meta": self.meta,
        }

    def weights_in(self, model: nn.Module) -> dict[str, DeviceWeight]:
        """The device weights of ``model`` this plan programs, checked name by name and
        shape by shape (a clear error for a plan made for another model)."""
        chosen = named_weights(model, self.names, "the plan")
        for name, mask in self._masks.items():
            shape = tuple(chosen[name].value.shape)
            require(tuple(mask.shape) == shape,
                    f"the plan's mask for {name} has shape {tuple(mask.shape)}, the weight "
                    f"{shape}: make the plan again for this model")
        return chosen

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the plan as a torch file, atomically (bool masks when weight-level)."""
        payload: dict[str, Any] = {
            "kind": PLAN_KIND,
            "version": PLAN_VERSION,
            "method": self.method,
            "menu": list(self.menu) if self.menu is not None else None,
            "devices_per_weight": self.devices_per_weight,
            "requested": thawed(self.requested),
            "programming": self.programming.to_dict() if self.programming else None,
            "meta": thawed(self.meta),
        }
        if self.ranges is not None:
            payload["ranges"] = {k: v.cpu() for k, v in self.ranges.items()}
        if self.chip is not None:
            payload["chip"] = json.dumps(self.chip, sort_keys=True)
        if self.weight_level and self.options == 1:
            payload["masks"] = {k: v.cpu() for k, v in self._masks.items()}
        else:
            payload["levels"] = {k: v.cpu().contiguous() for k, v in self._levels.items()}
        return atomic_save(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        data = load_kind(path, PLAN_KIND, "write-verify plan")
        try:
            return cls._from_saved(data)
        except SwimkitError as exc:
            raise SwimkitError(f"{path}: {exc}") from None
        except KeyError as exc:
            raise SwimkitError(f"{path} is not a complete write-verify plan (no "
                               f"{exc.args[0]!r}); select the plan again") from None
        except (TypeError, AttributeError, ValueError, IndexError, RuntimeError):
            raise SwimkitError(f"{path} is a damaged write-verify plan (a field of the wrong "
                               "type or value); select the plan again") from None

    @classmethod
    def _from_saved(cls, data: dict) -> Plan:
        version = data.get("version", 1)
        require(isinstance(version, int) and not isinstance(version, bool)
                and 1 <= version <= PLAN_VERSION,
                f"a plan of version {version!r}, which this swimkit (versions 1 to "
                f"{PLAN_VERSION}) cannot read; select the plan again, or update swimkit")
        require(isinstance(data["method"], str), "the plan's method is not a name")
        report = data.get("programming")
        common = {
            "method": data["method"],
            "menu": data.get("menu"),
            "devices_per_weight": data.get("devices_per_weight"),
            "requested": data.get("requested", {}),
            "programming": ProgrammingReport.from_dict(report) if report else None,
            "meta": data.get("meta", {}),
            "ranges": data.get("ranges"),
            "chip": json.loads(data["chip"]) if data.get("chip") else None,
        }
        if "levels" in data:
            return cls(levels=data["levels"], **common)
        return cls(masks=data["masks"], **common)

    def export_npz(self, path: str | Path) -> Path:
        """A NumPy ``.npz`` for a programming flow.

        One uint8 array per layer, shaped ``(*weight.shape, K)``: 0 = plain write, k =
        write-verify to ``menu[k - 1]`` device steps. The array ``menu`` holds the
        tolerances (empty when the plan uses the device model's own loop; its tolerance
        is then in the summary); ``chip`` the chip it was planned for (JSON text). A plan
        made on a crossbar other than one range per layer adds, per layer, ``NAME:range``
        (float32, shaped like the weight: the weight that maps to its devices' full range,
        its column's or its tile's) and, with tiles, ``NAME:tile_row`` (the row tile of
        each input unit) and ``NAME:tile_column`` (the column tile of each output).
        """
        arrays = {k: v.cpu().contiguous().numpy() for k, v in self._levels.items()}
        arrays["menu"] = np.asarray(self.menu if self.menu is not None else [], dtype=np.float64)
        if self.chip is not None:  # which chip the levels are for, as JSON text
            arrays["chip"] = np.asarray(json.dumps(self.chip, sort_keys=True))
        arrays.update(self._crossbar_arrays())

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        return atomic_write(path, write)

    def _crossbar_arrays(self) -> dict[str, np.ndarray]:
        """The ranges and tile indices of a plan made on a crossbar (none otherwise)."""
        if self.ranges is None:
            return {}
        from .crossbar import Crossbar

        crossbar = Crossbar(**self.meta.get("crossbar", {}))
        arrays = {}
        for name, levels in self._levels.items():
            shape = levels.shape[:-1]
            arrays[f"{name}:range"] = self.ranges[name].expand(shape).float().numpy()
            if crossbar.tile_rows is not None or crossbar.tile_columns is not None:
                rows, columns = crossbar.tile_indices(name, shape)
                arrays[f"{name}:tile_row"] = rows.numpy()
                arrays[f"{name}:tile_column"] = columns.numpy()
        return arrays

    def export_summary(self, path: str | Path) -> Path:
        """The per-layer summary as JSON (``.json``) or CSV (``.csv``), atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        require(suffix in (".json", ".csv"),
                f"a plan summary is written as .json or .csv (got {path.name!r})")
        if suffix == ".json":
            return atomic_write_json(self.summary(), path)
        return atomic_write_text(self._summary_csv(), path)

    def _summary_csv(self) -> str:
        buffer = io.StringIO()
        options = [f"devices_at_{t:g}" for t in (self.menu or ())] or ["devices_verified_default"]
        writer = csv.writer(buffer)
        writer.writerow(["layer", "weights", "weights_verified", "devices", "devices_plain",
                         *options])
        for name, row in self.per_layer().items():
            writer.writerow([name, row["weights"], row["weights_verified"], row["devices"],
                             *row["devices_per_option"]])
        return buffer.getvalue()

    def __repr__(self) -> str:
        return (f"Plan(method={self.method!r}, weights {self.weights_verified:,}/"
                f"{self.weights_total:,} verified, devices {self.devices_verified:,}/"
                f"{self.devices_total:,}, menu={self.menu})")


def _plain_json(value: Any, what: str) -> Any:
    """``value`` as JSON reads it back (lists, not tuples), so it compares as stored."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        raise SwimkitError(f"a plan's {what} must be JSON-ready (got {type(value).__name__})"
                           ) from None


def _levels_of_mask(name: str, mask: Tensor, devices: int) -> Tensor:
    require(isinstance(mask, Tensor) and mask.dtype == torch.bool,
            f"the verify mask of {name} must be a bool tensor (True = write-verify)")
    return mask.to(torch.uint8).unsqueeze(-1).expand(*mask.shape, devices)


def _check_ranges(ranges: Mapping[str, Tensor]) -> dict[str, Tensor]:
    require(isinstance(ranges, Mapping) and all(
        isinstance(v, Tensor) and v.is_floating_point() and bool((v >= 0).all())
        for v in ranges.values()), "a plan's ranges must map weight names to tensors >= 0")
    return {k: v.detach().cpu() for k, v in ranges.items()}


def _check_levels(name: str, levels: Tensor) -> Tensor:
    require(isinstance(levels, Tensor) and levels.dtype == torch.uint8 and levels.dim() >= 1,
            f"the levels of {name} must be a uint8 tensor shaped (*weight.shape, K)")
    return levels


def _same_on_every_device(levels: Tensor) -> bool:
    """True when the levels are one value per weight broadcast over the K devices."""
    return levels.shape[-1] == 1 or levels.stride(-1) == 0


def _first_device(levels: Tensor) -> Tensor:
    return levels[..., 0]


__all__ = ["Plan", "Verify", "check_menu"]
