"""Fine-tuning under a plan inside a run (``swimkit run --finetune-epochs``): a copy of
the run's model trains under the plan's own device errors, then is judged on that plan."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

from . import distributed
from .caches import PointCache, digest, file_digest
from .checkpoints import load_checkpoint
from .evaluator import Candidate, Evaluator
from .groups import results_of
from .montecarlo import accuracy
from .plans import Plan, Verify
from .results import ModelReport, Point
from .selection import Budget, BudgetKind
from .steps import Context
from .train_config import FinetuneSettings


def fine_tuned_under(ctx: Context, base: Candidate, point: Point, cache: PointCache
                     ) -> tuple[ModelReport, Evaluator]:
    """The run's model fine-tuned under the plan of ``point`` (into
    OUT/finetune-PLAN-TAG, TAG naming the fine-tuning settings; resumed there) and judged
    on that plan: clean, no verify, full verify and the plan, on the same chips as the
    model it came from."""
    s = ctx.settings
    assert point.plan_path is not None and point.budget_kind is not None
    plan_path = Path(point.plan_path)
    tag = digest(results_of(s.finetune))[:8]  # other fine-tuning, another folder
    folder = s.out_dir / f"finetune-{plan_path.stem}-{tag}"
    distributed.rank_zero_first(lambda: _finetune(ctx, base, Plan.load(plan_path), folder))
    path = folder / ("best.pt" if (folder / "best.pt").is_file() else "last.pt")
    model, _ = load_checkpoint(path)
    model = model.to(s.where()).eval()
    label = f"{base.label} fine-tuned under {point.label}"
    ctx.files["fine-tuned model"] = str(path)
    candidate = Candidate(label, base.sigma_train, base.scale_aware, model, path,
                          file_digest(path))
    clean = accuracy(model, ctx.test_batches)
    ctx.log(f"[{label}] clean accuracy: {clean:.2f} %")
    ev = Evaluator(ctx, candidate, cache)
    no_verify, full_verify = ev.baseline(Verify.NONE), ev.baseline(Verify.ALL)
    budget = Budget(BudgetKind(point.budget_kind), float(point.budget_value))
    tuned = ev.planned(point.method, budget, plan_path)
    return ModelReport(label, base.sigma_train, base.scale_aware, str(path), clean, no_verify,
                       full_verify, [tuned]), ev


def _finetune(ctx: Context, base: Candidate, plan: Plan, folder: Path) -> None:
    """Train a copy of ``base``'s model under ``plan`` as the settings' fine-tuning says."""
    from .training import learning_rate, train

    s = ctx.settings
    f = s.finetune
    model = copy.deepcopy(base.model)
    lr = f.lr if f.lr is not None else (
        FinetuneSettings.LR_FACTOR * learning_rate(s.train, model, s.model.name))
    config = replace(s.train, epochs=f.epochs, sigma_train=f.sigma or 0.0,
                     scale_aware=f.scale_aware, lr=lr, distill=f.distill)
    teacher = base.model if f.distill else None  # clean, in eval mode, never trained
    train(model, ctx.dataset, config, chip=s.chip.trained(), plan=plan, teacher=teacher,
          checkpoint_dir=folder, log=ctx.log, model_name=s.model.name)


__all__ = ["fine_tuned_under"]
