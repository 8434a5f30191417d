"""Stage 6 of ``lipguard run``: a one-page, self-contained HTML report (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"true": "#555555", "unconstrained": "#d62728", "lipschitz": "#2ca02c", "aajr": "#1f77b4"}


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def robustness_plot(results: dict) -> str:
    figure, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, stress in results["stress"].items():
        eps = stress["epsilons"]
        colour = COLOURS.get(name)
        ax.plot(eps, stress["max_shift"], "o-", color=colour, label=f"{name}: max |Δr| found")
        bound = results["rewards"][name]["certified_lipschitz"]
        ax.plot(
            eps, [bound * e for e in eps], "--", color=colour, alpha=0.6, label=f"L·ε ({bound:.1f})"
        )
    ax.set_xlabel("ℓ2 budget ε on (state, action)")
    ax.set_ylabel("reward shift |Δr|")
    ax.set_title("Reward attacks (PGD) vs certified bound")
    ax.legend(fontsize=7)
    return _png(figure)


def lipschitz_plot(results: dict) -> str:
    names = list(results["rewards"])
    figure, ax = plt.subplots(figsize=(5.2, 3.6))
    width = 0.27
    rows = [
        ("certified upper bound", "certified_lipschitz", 0),
        ("witnessed lower bound", "lower_bound", 1),
        ("max ‖∇r‖ on held-out data", "max_gradient_on_data", 2),
    ]
    for label, key, offset in rows:
        values = [results["rewards"][n][key] or 0.0 for n in names]
        ax.bar([i + (offset - 1) * width for i in range(len(names))], values, width, label=label)
    ax.axhline(results["config"]["lipschitz"], color="black", linestyle=":", label="target L")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Lipschitz constant (ℓ2)")
    ax.set_title("Certified vs empirical Lipschitz constants")
    ax.legend(fontsize=7)
    return _png(figure)


def price_plot(results: dict) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    largest = -1
    for name, stress in results["stress"].items():
        mse = results["rewards"][name]["test_mse"]
        left.scatter(mse, stress["max_shift"][largest], s=60, color=COLOURS.get(name), label=name)
    left.set_xlabel("held-out reward MSE (task)")
    left.set_ylabel(f"max |Δr| at ε = {results['config']['attack_eps'][-1]:g} (stability)")
    left.set_title("Reward models: accuracy vs robustness")
    left.legend(fontsize=7)
    for name, policy in results["policies"].items():
        right.scatter(
            policy["true_return"], policy["return_mad"], s=60, color=COLOURS.get(name), label=name
        )
    right.set_xlabel("true return, clean (task)")
    right.set_ylabel("true return under MAD (stability)")
    right.set_title("Policies: performance vs robustness")
    right.legend(fontsize=7)
    figure.subplots_adjust(wspace=0.4)
    return _png(figure)


def timeline_plot(results: dict) -> str:
    monitor = results["monitor"]
    steps = [row["step"] for row in monitor["timeline"]]
    figure, ax = plt.subplots(figsize=(9.0, 3.0))
    bottom = [0] * len(steps)
    for kind, colour in (("violation", "#d62728"), ("gradient", "#ff7f0e"), ("drift", "#9467bd")):
        counts = [row.get(kind, 0) for row in monitor["timeline"]]
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
    ax.axvline(monitor["fault_step"], color="black", linestyle="--", label="planted fault")
    ax.set_yscale("symlog")
    ax.set_xlabel("rollout step")
    ax.set_ylabel("events per batch")
    ax.set_title("Monitor events on the deployed reward model")
    ax.legend(fontsize=7, loc="upper left")
    return _png(figure)


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1040px; margin: 24px auto; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.checks li.pass::marker { content: "✔ "; color: #2ca02c; }
.checks li.fail::marker { content: "✘ "; color: #d62728; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } img { max-width: 100%; }
"""


def render(results: dict) -> str:
    """The report page for a ``results.json`` dictionary."""
    config = results["config"]
    checks = "".join(
        f'<li class="{"pass" if ok else "fail"}">{html.escape(text)}</li>'
        for text, ok in results["checks"].items()
    )
    reward_rows = [
        [
            name,
            _fmt(r["test_mse"], ".4f"),
            _fmt(r["certified_lipschitz"], ".3f"),
            _fmt(r["lower_bound"], ".3f"),
            _fmt(r["max_gradient_on_data"], ".3f"),
            _fmt(results["stress"][name]["max_shift"][-1], ".3f"),
            _fmt(results["stress"][name]["smoothed_interval_width"], ".3f"),
        ]
        for name, r in results["rewards"].items()
    ]
    policy_rows = [
        [
            name,
            _fmt(p["true_return"], ".1f"),
            _fmt(p["own_reward_return"], ".1f"),
            _fmt(p["reward_gap"], ".1f"),
            _fmt(p["max_reward_gradient"], ".2f"),
            f"{p['discontinuity_rate']:.0%}",
            _fmt(p["return_random"], ".1f"),
            _fmt(p["return_mad"], ".1f"),
            _fmt(p["return_reward_attack"], ".1f"),
        ]
        for name, p in results["policies"].items()
    ]
    monitor = results["monitor"]
    plots = results["plots"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lipguard run: {
        html.escape(config["env"])
    }</title>
<style>{STYLE}</style></head><body>
<h1>lipguard run — {html.escape(config["env"])}</h1>
<p class="sub">seed {config["seed"]}, reward target L = {config["lipschitz"]:g},
{config["transitions"]} transitions, {config["algorithm"]} {config["timesteps"]} steps,
{html.escape(results["meta"]["date"])}, lipguard {html.escape(results["meta"]["lipguard"])},
{results["meta"]["seconds"]:.0f} s</p>
<h2>Verdict</h2><ul class="checks">{checks}</ul>
<h2>1–3. Reward models: accuracy, certificates, attacks, smoothing</h2>
{
        _table(
            [
                "reward model",
                "held-out MSE",
                "certified L",
                "witnessed lower",
                "max ‖∇r‖ seen",
                f"max |Δr| at ε={config['attack_eps'][-1]:g}",
                f"smoothed width (σ={config['smoothing_sigma']:g})",
            ],
            reward_rows,
        )
    }
<div class="plots"><img alt="robustness curves" src="data:image/png;base64,{plots["robustness"]}">
<img alt="certified vs empirical L" src="data:image/png;base64,{plots["lipschitz"]}"></div>
<h2>4. Policies trained on each reward: task performance and stability side by side</h2>
{
        _table(
            [
                "trained on",
                "true return",
                "own-reward return",
                "gap (hacking)",
                "max ‖∇r‖",
                f"discontinuity (ε={config['policy_eps']:g}, τ={config['tau']:g})",
                "return: random",
                "MAD",
                "reward attack",
            ],
            policy_rows,
        )
    }
<div class="plots"><img alt="price of robustness" src="data:image/png;base64,{plots["price"]}">
</div>
<h2>5. Runtime monitor with a planted fault</h2>
<p>The constrained reward model, deployed on {config["monitor_steps"]} steps of its policy with
sensor noise σ = {config["observation_noise"]:g}, is corrupted at step {monitor["fault_step"]}
(output scale × {config["fault_scale"]:g}). False alarms before the fault:
<b>{monitor["false_alarms_before_fault"]}</b>; first alarm after it at step
<b>{_fmt(monitor["first_alarm_after_fault"], "d")}</b>; events: {
        html.escape(str(monitor["events"]))
    };
audit log {html.escape(monitor["audit_path"])}: {monitor["audit_records"]} records,
chain verified: <b>{_fmt(monitor["audit_verified"])}</b>.</p>
<div class="plots"><img alt="violation timeline" src="data:image/png;base64,{plots["timeline"]}">
</div>
<h2>How to read this page</h2>
<p>Certified L is proven for every input (floating-point rounding included); the witnessed lower
bound and the largest gradient seen are what the model actually does — the true constant lies
between them. The dashed lines of the first plot are the certificate's promise L·ε: no attack may
cross the line of its own model. Policies are compared on the true task return and on how much
of it survives observation attacks; the gap is how much the policy's own (learned) reward
overstates the task. The monitor stays silent while the certificate holds and fires once the
deployed weights no longer match it.</p>
</body></html>
"""


def plots(results: dict) -> dict[str, str]:
    return {
        "robustness": robustness_plot(results),
        "lipschitz": lipschitz_plot(results),
        "price": price_plot(results),
        "timeline": timeline_plot(results),
    }
