"""Benchmark lipguard's PGD and APGD against torchattacks and ART on the same model and budget.

An undefended MLP 64-256-256-10 is trained on scikit-learn's digits (pixels in [0, 1]); every
attack gets the held-out digits, the same ℓ∞ budget, box [0, 1] and number of steps:

- PGD: ``--pgd-steps`` steps of ``2.5·eps/steps``, random start (lipguard, torchattacks, ART);
- APGD-CE: ``--apgd-steps`` steps, fra31's schedule (lipguard, torchattacks).

Reports robust accuracy (lower = stronger attack) and throughput in attacked samples per second
(median of ``--repeats`` runs), and the ratio to torchattacks. Writes ``attacks.json`` and
``attacks.md`` to ``--out``. torchattacks declares torchvision as a dependency it does not use
here; install it with ``pip install --no-deps torchattacks`` (``make bench`` does).

    python benchmarks/attacks.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
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


def measure(name, attack, model, x, y, eps, steps, repeats) -> dict:
    seconds, accuracies, worst = [], [], 0.0
    for repeat in range(repeats):
        torch.manual_seed(repeat)
        np.random.seed(repeat)  # noqa: NPY002  (ART draws its random start from it)
        started = time.perf_counter()
        x_adv = attack(model, x, y, eps, steps, repeat)
        seconds.append(time.perf_counter() - started)
        with torch.no_grad():
            accuracies.append(float((model(x_adv).argmax(1) == y).float().mean()))
        worst = max(worst, float((x_adv - x).abs().max()))
    median = statistics.median(seconds)
    row = {
        "attack": name,
        "steps": steps,
        "robust_accuracy": statistics.median(accuracies),
        "seconds": median,
        "samples_per_second": len(x) / median,
        "max_perturbation": worst,
    }
    print(row)
    return row


def markdown(rows, meta) -> str:
    lines = [
        "# Attacks: strength and throughput against torchattacks and ART",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['threads']} "
        f"threads), torch {meta['machine']['torch']}. Undefended MLP 64-256-256-10 on "
        f"scikit-learn digits (clean test accuracy {meta['accuracy']:.3f}, {meta['inputs']} test "
        f"digits), ℓ∞ ε = {meta['eps']}, box [0, 1], one batch. Robust accuracy: lower is a "
        f"stronger attack. Median of {meta['repeats']} runs with seeds 0, 1, …",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| attack | steps | robust accuracy | samples/s | × torchattacks | max ‖δ‖∞ |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        family = row["attack"].split()[-1]
        peer = next(r for r in rows if r["attack"] == f"torchattacks {family}")
        lines.append(
            f"| {row['attack']} | {row['steps']} | {row['robust_accuracy']:.1%} | "
            f"{row['samples_per_second']:,.0f} | "
            f"{row['samples_per_second'] / peer['samples_per_second']:.2f} | "
            f"{row['max_perturbation']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    model, x, y, accuracy = trained_digits_mlp()
    runs = [
        ("lipguard PGD", lipguard_pgd, args.pgd_steps),
        ("torchattacks PGD", torchattacks_pgd, args.pgd_steps),
        ("ART PGD", art_pgd, args.pgd_steps),
        ("lipguard APGD", lipguard_apgd, args.apgd_steps),
        ("torchattacks APGD", torchattacks_apgd, args.apgd_steps),
    ]
    rows = [
        measure(name, attack, model, x, y, args.eps, steps, args.repeats)
        for name, attack, steps in runs
    ]
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "accuracy": accuracy,
        "inputs": len(x),
        "eps": args.eps,
        "repeats": args.repeats,
        "command": f"python benchmarks/attacks.py --eps {args.eps} --pgd-steps {args.pgd_steps} "
        f"--apgd-steps {args.apgd_steps} --repeats {args.repeats}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attacks.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "attacks.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
