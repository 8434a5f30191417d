"""Stage 6 of ``lipguard run``: a one-page, self-contained HTML report (plots embedded as PNG).

The page is rendered from the Jinja2 templates in ``templates/`` (autoescaped): ``report.html.j2``
lays out the header and includes each of :data:`SECTIONS` in turn; every template reads the
:class:`~lipguard.pipeline.results.RunResults` attributes directly.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lipguard.pipeline.config import Reward
from lipguard.pipeline.results import RunResults

COLOURS = {
    Reward.TRUE: "#555555",
    Reward.UNCONSTRAINED: "#d62728",
    Reward.LIPSCHITZ: "#2ca02c",
    Reward.AAJR: "#1f77b4",
}
#: the page's sections, in order: one template each
SECTIONS = (
    "verdict.html.j2",
    "rewards.html.j2",
    "policies.html.j2",
    "monitor.html.j2",
    "reading.html.j2",
)


def _png(figure: Figure) -> str:
    """``figure`` as a base64 PNG (and closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def robustness_plot(results: RunResults) -> str:
    """Each model's PGD curve (max ``|Δr|`` vs ε) under its certificate's line ``L·ε``."""
    figure, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, stress in results.stress.items():
        eps = stress.epsilons
        colour = COLOURS.get(name)
        ax.plot(eps, stress.max_shift, "o-", color=colour, label=f"{name}: max |Δr| found")
        bound = results.rewards[name].certified_lipschitz
        ax.plot(
            eps, [bound * e for e in eps], "--", color=colour, alpha=0.6, label=f"L·ε ({bound:.1f})"
        )
    ax.set_xlabel("ℓ2 budget ε on (state, action)")
    ax.set_ylabel("reward shift |Δr|")
    ax.set_title("Reward attacks (PGD) vs certified bound")
    ax.legend(fontsize=7)
    return _png(figure)


def lipschitz_plot(results: RunResults) -> str:
    """Per model: certified upper bound, witnessed lower bound and largest gradient seen."""
    rewards = list(results.rewards.values())
    figure, ax = plt.subplots(figsize=(5.2, 3.6))
    width = 0.27
    rows = [
        ("certified upper bound", [r.certified_lipschitz for r in rewards]),
        ("witnessed lower bound", [r.lower_bound or 0.0 for r in rewards]),
        ("max ‖∇r‖ on held-out data", [r.max_gradient_on_data for r in rewards]),
    ]
    for offset, (label, values) in enumerate(rows):
        ax.bar([i + (offset - 1) * width for i in range(len(rewards))], values, width, label=label)
    names = list(results.rewards)
    ax.axhline(results.config.lipschitz, color="black", linestyle=":", label="target L")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Lipschitz constant (ℓ2)")
    ax.set_title("Certified vs empirical Lipschitz constants")
    ax.legend(fontsize=7)
    return _png(figure)


def price_plot(results: RunResults) -> str:
    """Accuracy vs robustness of the reward models, performance vs robustness of the policies."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    largest = -1
    for name, stress in results.stress.items():
        mse = results.rewards[name].test_mse
        left.scatter(mse, stress.max_shift[largest], s=60, color=COLOURS.get(name), label=name)
    left.set_xlabel("held-out reward MSE (task)")
    left.set_ylabel(f"max |Δr| at ε = {results.config.attack_eps[-1]:g} (stability)")
    left.set_title("Reward models: accuracy vs robustness")
    left.legend(fontsize=7)
    for name, policy in results.policies.items():
        right.scatter(
            policy.true_return, policy.return_mad, s=60, color=COLOURS.get(name), label=name
        )
    right.set_xlabel("true return, clean (task)")
    right.set_ylabel("true return under MAD (stability)")
    right.set_title("Policies: performance vs robustness")
    right.legend(fontsize=7)
    figure.subplots_adjust(wspace=0.4)
    return _png(figure)


def discontinuity_plot(results: RunResults) -> str:
    """Each policy's discontinuity rate along the observation budget ε (the curve)."""
    figure, ax = plt.subplots(figsize=(5.0, 3.2))
    epsilons = results.config.discontinuity_eps
    for name, policy in results.policies.items():
        ax.plot(epsilons, policy.discontinuity_curve, "o-", color=COLOURS.get(name), label=name)
    taus = sorted({policy.tau for policy in results.policies.values()})
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("ℓ∞ budget ε on observations")
    ax.set_ylabel(f"states whose action moves > τ = {', '.join(f'{t:g}' for t in taus)}")
    ax.set_title("Policies: discontinuity along ε")
    ax.legend(fontsize=7)
    return _png(figure)


def timeline_plot(results: RunResults) -> str:
    """The monitor's events per batch along the rollout, with the planted fault marked."""
    monitor = results.monitor
    steps = [row.step for row in monitor.timeline]
    figure, ax = plt.subplots(figsize=(9.0, 3.0))
    bottom = [0] * len(steps)
    for kind, colour in (("violation", "#d62728"), ("gradient", "#ff7f0e"), ("drift", "#9467bd")):
        counts = [row.count(kind) for row in monitor.timeline]
        ax.bar(
            steps,
            counts,
            width=-0.9 * (steps[0] if steps else 1),
            align="edge",
            bottom=bottom,
            color=colour,
            label=kind,
        )
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.axvline(monitor.fault_step, color="black", linestyle="--", label="planted fault")
    ax.set_yscale("symlog")
    ax.set_xlabel("rollout step")
    ax.set_ylabel("events per batch")
    ax.set_title("Monitor events on the deployed reward model")
    ax.legend(fontsize=7, loc="upper left")
    return _png(figure)


@dataclass(frozen=True)
class Plots:
    """The report's plots, base64 PNG."""

    robustness: str
    lipschitz: str
    price: str
    discontinuity: str
    timeline: str


def plots(results: RunResults) -> Plots:
    """Draw the report's plots."""
    return Plots(
        robustness=robustness_plot(results),
        lipschitz=lipschitz_plot(results),
        price=price_plot(results),
        discontinuity=discontinuity_plot(results),
        timeline=timeline_plot(results),
    )


def _fmt(value: object, spec: str = ".3g") -> str:
    """``value`` formatted by ``spec``; ``None`` as a dash, a bool as yes/no."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


@functools.cache
def _templates() -> jinja2.Environment:
    """The report's templates (package data), autoescaped; an undefined name is an error."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lipguard.pipeline", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["fmt"] = _fmt
    return environment


def render(results: RunResults, figures: Plots | None = None) -> str:
    """The report page for ``results`` (``figures`` drawn if not given)."""
    page = _templates().get_template("report.html.j2")
    return page.render(
        meta=results.meta,
        config=results.config,
        rewards=results.rewards,
        stress=results.stress,
        policies=results.policies,
        monitor=results.monitor,
        checks=results.checks,
        plots=figures if figures is not None else plots(results),
        sections=SECTIONS,
    )
