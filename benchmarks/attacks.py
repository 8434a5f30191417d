"""Benchmark lipguard's PGD and APGD against torchattacks and ART on the same model and budget.

An undefended MLP 64-256-256-10 is trained on scikit-learn's digits (pixels in [0, 1]); every
attack gets the held-out digits, the same ℓ∞ budget, box [0, 1] and number of steps:

- PGD: ``--pgd-steps`` steps of ``2.5·eps/steps``, random start (lipguard, torchattacks, ART);
- APGD-CE: ``--apgd-steps`` steps, fra31's schedule (lipguard, torchattacks).

Reports robust accuracy (lower = stronger attack), throughput in attacked samples per second
(median of ``--repeats`` runs) and the ratio to torchattacks, measured twice in one run: with the
machine as it is ("idle") and with one core kept busy by a spinning process ("busy"). The
attacks take turns within each repeat (round robin), so every ratio compares runs made under
the same load; the ratio reported is the median of the per-repeat ratios. Writes
``attacks.json`` and ``attacks.md`` to ``--out``. torchattacks declares torchvision as a
dependency it does not use here; install it with ``pip install --no-deps torchattacks``
(``make bench`` does).

    python benchmarks/attacks.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from digits import trained_digits_mlp
from layers import machine
from lipguard.attacks import APGD, PGD, CrossEntropy, ThreatModel


def lipguard_pgd(model, x, y, eps, steps, seed):
    threat = ThreatModel(eps, "inf", bounds=(0.0, 1.0))
    attack = PGD(threat, steps=steps, step_size=2.5 * eps / steps, seed=seed)
    return attack(model, x, CrossEntropy(y)).x_adv


def lipguard_pgd_stopping(model, x, y, eps, steps, seed):
    """PGD that stops attacking each digit at its first misclassification (AutoAttack's way of
    evaluating robustness: the same robust accuracy, fewer model calls)."""
    threat = ThreatModel(eps, "inf", bounds=(0.0, 1.0))
    attack = PGD(threat, steps=steps, step_size=2.5 * eps / steps, stop_on_success=True, seed=seed)
    return attack(model, x, CrossEntropy(y)).x_adv


def lipguard_apgd(model, x, y, eps, steps, seed):
    threat = ThreatModel(eps, "inf", bounds=(0.0, 1.0))
    return APGD(threat, steps=steps, seed=seed)(model, x, CrossEntropy(y)).x_adv


def _as_images(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """torchattacks expects image batches (N, C, H, W): view the digits as 1×8×8."""
    return nn.Sequential(nn.Flatten(), model).eval(), x.view(-1, 1, 8, 8)


def torchattacks_pgd(model, x, y, eps, steps, seed):  # seeded through torch.manual_seed
    import torchattacks

    wrapped, images = _as_images(model, x)
    attack = torchattacks.PGD(wrapped, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    return attack(images, y).view(len(x), -1)


def torchattacks_apgd(model, x, y, eps, steps, seed):
    import torchattacks

    wrapped, images = _as_images(model, x)
    attack = torchattacks.APGD(wrapped, norm="Linf", eps=eps, steps=steps, loss="ce", seed=seed)
    return attack(images, y).view(len(x), -1)


def art_pgd(model, x, y, eps, steps, seed):  # seeded through torch/numpy global state
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(x.shape[1],),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    attack = ProjectedGradientDescentPyTorch(
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=2.5 * eps / steps,
        max_iter=steps,
        num_random_init=1,
        batch_size=len(x),
        verbose=False,
    )
    return torch.as_tensor(attack.generate(x.numpy(), y.numpy()))


@contextlib.contextmanager
def load(phase: str) -> Iterator[None]:
    """``busy``: one process spinning on a core for the duration; ``idle``: nothing added."""
    if phase == "idle":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        spinner.kill()
        spinner.wait()


def measure(runs, model, x, y, eps, repeats) -> list[dict]:
    """Each attack ``repeats`` times with seeds 0, 1, …; within a repeat the attacks take
    turns, so the per-repeat ratios to torchattacks compare runs under the same load."""
    seconds = {name: [] for name, _, _ in runs}
    accuracies = {name: [] for name, _, _ in runs}
    worst = dict.fromkeys(seconds, 0.0)
    for repeat in range(repeats):
        for name, attack, steps in runs:
            torch.manual_seed(repeat)
            np.random.seed(repeat)  # noqa: NPY002  (ART draws its random start from it)
            started = time.perf_counter()
            x_adv = attack(model, x, y, eps, steps, repeat).detach()
            seconds[name].append(time.perf_counter() - started)
            with torch.no_grad():
                accuracies[name].append(float((model(x_adv).argmax(1) == y).float().mean()))
            worst[name] = max(worst[name], float((x_adv - x).abs().max()))
    rows = []
    for name, _, steps in runs:
        peer = "torchattacks APGD" if "APGD" in name else "torchattacks PGD"
        ratios = [p / s for s, p in zip(seconds[name], seconds[peer], strict=True)]
        median = statistics.median(seconds[name])
        rows.append(
            {
                "attack": name,
                "steps": steps,
                "robust_accuracy": statistics.median(accuracies[name]),
                "seconds": median,
                "samples_per_second": len(x) / median,
                "ratio_to_torchattacks": statistics.median(ratios),
                "max_perturbation": worst[name],
            }
        )
        print(rows[-1])
    return rows


def markdown(phases, meta) -> str:
    lines = [
        "# Attacks: strength and throughput against torchattacks and ART",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}. Undefended MLP 64-256-256-10 on "
        f"scikit-learn digits (clean test accuracy {meta['accuracy']:.3f}, {meta['inputs']} test "
        f"digits), ℓ∞ ε = {meta['eps']}, box [0, 1], one batch. Robust accuracy: lower is a "
        f"stronger attack. Median of {meta['repeats']} runs with seeds 0, 1, …; the attacks "
        "take turns within each run, and × torchattacks is the median of the per-run throughput "
        "ratios. *idle*: the machine as it was, other work included (1-minute load average "
        f"{meta['load_average']['idle']:.1f} at the end of the phase); *busy*: one more "
        f"process spinning on a core (load average {meta['load_average']['busy']:.1f}).",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| attack | steps | robust accuracy | samples/s idle | × torchattacks idle | "
        "samples/s busy | × torchattacks busy | max ‖δ‖∞ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for idle, busy in zip(phases["idle"], phases["busy"], strict=True):
        lines.append(
            f"| {idle['attack']} | {idle['steps']} | {idle['robust_accuracy']:.1%} | "
            f"{idle['samples_per_second']:,.0f} | {idle['ratio_to_torchattacks']:.2f} | "
            f"{busy['samples_per_second']:,.0f} | {busy['ratio_to_torchattacks']:.2f} | "
            f"{max(idle['max_perturbation'], busy['max_perturbation']):.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y, accuracy = trained_digits_mlp()
    runs = [
        ("lipguard PGD", lipguard_pgd, args.pgd_steps),
        ("lipguard PGD, stop on success", lipguard_pgd_stopping, args.pgd_steps),
        ("torchattacks PGD", torchattacks_pgd, args.pgd_steps),
        ("ART PGD", art_pgd, args.pgd_steps),
        ("lipguard APGD", lipguard_apgd, args.apgd_steps),
        ("torchattacks APGD", torchattacks_apgd, args.apgd_steps),
    ]
    phases, load_average = {}, {}
    for phase in ("idle", "busy"):
        with load(phase):
            phases[phase] = measure(runs, model, x, y, args.eps, args.repeats)
            load_average[phase] = os.getloadavg()[0]
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "accuracy": accuracy,
        "inputs": len(x),
        "eps": args.eps,
        "repeats": args.repeats,
        "load_average": load_average,
        "command": f"python benchmarks/attacks.py --eps {args.eps} --pgd-steps {args.pgd_steps} "
        f"--apgd-steps {args.apgd_steps} --repeats {args.repeats} --threads {args.threads}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attacks.json").write_text(json.dumps({"meta": meta, "phases": phases}, indent=2))
    (args.out / "attacks.md").write_text(markdown(phases, meta))
    print(markdown(phases, meta))


if __name__ == "__main__":
    main()
