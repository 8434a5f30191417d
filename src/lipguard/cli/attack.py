"""``lipguard attack``: attack a model file on a data file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
import typer
from rich import box
from rich.table import Table

from lipguard import distributed
from lipguard._progress import progress_bar
from lipguard.cli._io import (
    ModelArgument,
    OverwriteOption,
    console,
    load_model_and_samples,
    norm_option,
    number,
    parse_range,
    refuse_existing,
    write_text,
)
from lipguard.errors import InvalidArgumentError
from lipguard.norm import LINF, Norm

if TYPE_CHECKING:
    from lipguard.attacks import Attack, Objective, ThreatModel

REWARD_SHIFTS: dict[str, Literal["up", "down", "abs"]] = {
    "reward-up": "up",
    "reward-down": "down",
    "reward-abs": "abs",
}
OBJECTIVES = ("ce", "margin", "dlr", *REWARD_SHIFTS)
ATTACKS = ("pgd", "apgd", "fgsm", "square", "random")


def _objective(name: str, labels: torch.Tensor | None) -> Objective:
    from lipguard.attacks import DLR, CrossEntropy, Margin, RewardShift

    if name in REWARD_SHIFTS:
        return RewardShift(REWARD_SHIFTS[name])
    if labels is None:
        raise InvalidArgumentError(f"objective {name!r} needs labels: an array 'y' in the data")
    classification: dict[str, Callable[[torch.Tensor], Objective]] = {
        "ce": CrossEntropy,
        "margin": Margin,
        "dlr": DLR,
    }
    return classification[name](labels)


def _attack(
    name: str, threat: ThreatModel, steps: int, seed: int, stop_on_success: bool = False
) -> Attack:
    from lipguard.attacks import APGD, FGSM, PGD, RandomNoise, Square

    if stop_on_success and name != "pgd":
        raise InvalidArgumentError("--stop-on-success applies to --attack pgd only")
    builders: dict[str, Callable[[], Attack]] = {
        "pgd": lambda: PGD(threat, steps=steps, stop_on_success=stop_on_success, seed=seed),
        "apgd": lambda: APGD(threat, steps=steps, seed=seed),
        "fgsm": lambda: FGSM(threat, seed=seed),
        "square": lambda: Square(threat, queries=steps, seed=seed),
        "random": lambda: RandomNoise(threat, samples=steps, seed=seed),
    }
    return builders[name]()


def attack_command(
    model: ModelArgument,
    data: Annotated[Path, typer.Option(help=".npz (x, optional labels y), .npy or .csv inputs.")],
    eps: Annotated[float, typer.Option(help="Perturbation budget.", callback=number(low=0))],
    norm: Annotated[Norm, norm_option("inf or 2.")] = LINF,
    objective: Annotated[str, typer.Option(help=f"One of {', '.join(OBJECTIVES)}.")] = "ce",
    attack: Annotated[str, typer.Option(help=f"One of {', '.join(ATTACKS)}.")] = "pgd",
    steps: Annotated[
        int, typer.Option(help="Steps (pgd, apgd), queries (square) or samples (random).", min=1)
    ] = 20,
    bounds: Annotated[str | None, typer.Option(help="Valid input box, e.g. 0,1.")] = None,
    batch_size: Annotated[int, typer.Option(help="Inputs attacked together.", min=1)] = 512,
    label_column: Annotated[int | None, typer.Option(help="CSV column holding labels.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="Per-sample input shape.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attack's randomness.")] = 0,
    stop_on_success: Annotated[
        bool,
        typer.Option(
            help="pgd: stop attacking an input at its first success (the same success rate, "
            "fewer model calls; the point kept is the first that succeeded)."
        ),
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Write per-input results as JSON here.")] = None,
    save_adversarial: Annotated[
        Path | None, typer.Option(help="Write the adversarial inputs to this .npy file.")
    ] = None,
    overwrite: Annotated[bool, OverwriteOption] = False,
) -> None:
    """Attack every input of a data file and report the success rate."""
    from lipguard.attacks import ThreatModel

    distributed.initialise()
    for target in (out, save_adversarial):
        refuse_existing(target, overwrite)
    if objective not in OBJECTIVES:
        raise InvalidArgumentError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if attack not in ATTACKS:
        raise InvalidArgumentError(f"attack must be one of {ATTACKS}, got {attack!r}")
    network, x, y = load_model_and_samples(model, data, label_column, input_shape)
    threat = ThreatModel(eps, norm.p, bounds=parse_range(bounds, "--bounds", "0,1"))
    runner = _attack(attack, threat, steps, seed, stop_on_success)
    started = time.perf_counter()
    # chunks of batch_size inputs, each attacked by a fresh generator from --seed: under torchrun
    # the chunks are shared out over the ranks and gathered in order (identical to one process)
    starts = range(0, x.shape[0], batch_size)
    mine = distributed.shard(len(starts))
    local = []
    with progress_bar(x.shape[0], f"{attack} ε = {eps:g}", distributed.is_main()) as advance:
        for start in starts[mine.start : mine.stop]:
            chunk = slice(start, start + batch_size)
            labels = None if y is None else y[chunk]
            local.append(runner(network, x[chunk], _objective(objective, labels)))
            advance(x[chunk].shape[0] * distributed.world_size())
    results = distributed.gather(local)
    seconds = time.perf_counter() - started
    if not distributed.is_main():
        return
    success = torch.cat([r.success for r in results])
    loss = torch.cat([r.loss for r in results])
    table = Table(title=f"{attack} on {model.name} ({data.name})", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("inputs", str(x.shape[0]))
    table.add_row("threat", f"{norm.label} ε = {eps:g}" + (f", box [{bounds}]" if bounds else ""))
    table.add_row("objective", objective)
    table.add_row("success rate", f"{float(success.float().mean()):.1%}")
    if y is not None and not objective.startswith("reward-"):
        with torch.no_grad():
            clean = network.eval()(x).argmax(1) == y
        robust = torch.cat([r.outputs.argmax(1) for r in results]) == y
        table.add_row("clean accuracy", f"{float(clean.float().mean()):.1%}")
        table.add_row("robust accuracy", f"{float(robust.float().mean()):.1%}")
    table.add_row("mean / max loss", f"{float(loss.mean()):.4g} / {float(loss.max()):.4g}")
    table.add_row("time", f"{seconds:.2f} s")
    console.print(table)
    if out is not None:
        payload = {
            "success": success.tolist(),
            "loss": loss.tolist(),
            "eps": eps,
            "norm": norm.name,
        }
        write_text(out, json.dumps(payload, indent=2))
        console.print(f"results: {out}")
    if save_adversarial is not None:
        np.save(save_adversarial, torch.cat([r.x_adv for r in results]).numpy())
        console.print(f"adversarial inputs: {save_adversarial}")
