"""``lipguard run``: configuration, the end-to-end quick run, and the rendered report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from lipguard.cli import app
from lipguard.errors import InvalidArgumentError
from lipguard.pipeline import Reward, RunConfig, RunResults, checks, load_config
from lipguard.pipeline.report import SECTIONS, Plots, render
from lipguard.pipeline.results import (
    DataSummary,
    MonitorResult,
    PolicyResult,
    RewardCertification,
    RunMeta,
    StressResult,
    TimelineRow,
)
from lipguard.results import Report
from tests.conftest import check_rendered_report

runner = CliRunner()


def test_config_file_overrides_the_defaults_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lipschitz = 5.0\nattack_eps = [0.0, 0.2]\nalgorithm = "PPO"\n')
    config = load_config(path, quick=True, seed=3)
    assert config.lipschitz == 5.0
    assert config.attack_eps == (0.0, 0.2)
    assert config.algorithm == "PPO"
    assert config.seed == 3
    assert config.timesteps == RunConfig.quick().timesteps
    assert load_config().timesteps == RunConfig().timesteps
    path.write_text("lipshitz = 5.0\n")
    with pytest.raises(InvalidArgumentError, match="lipshitz"):
        load_config(path)
    with pytest.raises(InvalidArgumentError):
        load_config(fault_step=10_000)
    with pytest.raises(InvalidArgumentError):
        load_config(algorithm="DQN")
    with pytest.raises(InvalidArgumentError, match="Box actions"):
        load_config(env="CartPole-v1")
    with pytest.raises(InvalidArgumentError, match="cannot make"):
        load_config(env="NoSuchEnv-v0")


def test_run_refuses_a_bad_config_clearly(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("timesteps = 0\n")
    result = runner.invoke(app, ["run", "--config", str(path), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "timesteps" in result.output


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["run", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


def test_quick_run_keeps_every_promise(quick_run):
    out, results, output = quick_run
    target = results["config"]["lipschitz"]
    constrained = results["rewards"]["lipschitz"]
    assert constrained["certified_lipschitz"] <= target
    assert constrained["lower_bound"] <= constrained["certified_lipschitz"]
    policy = results["policies"]["lipschitz"]
    assert policy["max_reward_gradient"] <= constrained["certified_lipschitz"]
    stress = results["stress"]["lipschitz"]
    bound = constrained["certified_lipschitz"] * np.asarray(stress["epsilons"])
    assert (np.asarray(stress["max_shift"]) <= bound + 1e-5).all()
    monitor = results["monitor"]
    assert monitor["fault_detected"]
    assert monitor["false_alarms_before_fault"] == 0
    assert monitor["first_alarm_after_fault"] >= monitor["fault_step"]
    # the planted fault leaves the weights as certified: the hash cannot be what found it
    assert monitor["first_hash_alarm_after_fault"] is None
    assert monitor["events"]["weights_changed"] == 0
    assert (
        monitor["events"]["violation"] + monitor["events"]["gradient"]
        == monitor["alarms_after_fault"]
    )
    assert monitor["audit_verified"]
    report = Report.from_dict(results["checks"])
    assert [check.verdict for check in report.checks] == ["pass"] * 6, str(report)
    assert results["checks"]["ok"]
    assert RunResults.from_dict(results).to_dict() == results  # results.json reads back whole
    for name in ("unconstrained", "lipschitz"):
        assert (out / "certificates" / f"{name}.json").is_file()
    assert set(results["policies"]) == {"true", "unconstrained", "lipschitz"}
    assert "the monitor found the planted fault from what it observed" in output
    # not on a terminal: one line as each stage starts and ends, with the elapsed time
    for stage in ("collect transitions", "certify", "train policies", "report"):
        assert re.search(rf"\[ *[0-9.]+ s\] {stage}: done in [0-9.]+ s", output), stage


def test_report_holds_the_story_and_renders_in_chromium(quick_run, tmp_path):
    out, _, _ = quick_run
    check_rendered_report(out, tmp_path)


def test_a_run_replaces_its_folder_only_when_it_finishes(tmp_path):
    from lipguard.pipeline.run import staged_folder

    out = tmp_path / "run"
    with staged_folder(out, overwrite=False) as staging:
        (staging / "results.json").write_text("first")
    assert (out / "results.json").read_text() == "first"
    with pytest.raises(InvalidArgumentError, match="--overwrite"), staged_folder(out, False):
        pass
    with pytest.raises(RuntimeError, match="killed half-way"):
        _interrupted_run(out)
    assert (out / "results.json").read_text() == "first"  # the old run is untouched
    with staged_folder(out, overwrite=True) as staging:
        (staging / "results.json").write_text("second")
    assert (out / "results.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folders left


def _interrupted_run(out):
    from lipguard.pipeline.run import staged_folder

    with staged_folder(out, overwrite=True) as staging:
        (staging / "results.json").write_text("partial")
        raise RuntimeError("killed half-way")


def test_a_run_may_go_into_an_empty_folder(tmp_path):
    from lipguard.pipeline.run import staged_folder

    out = tmp_path / "made-for-it"
    out.mkdir()
    with staged_folder(out, overwrite=False) as staging:
        (staging / "results.json").write_text("{}")
    assert (out / "results.json").is_file()


def _results(env: str = "Pendulum-v1", fault_detected: bool = True) -> RunResults:
    """Small made-up results in the shape of a run's (no training)."""
    config = RunConfig(env=env, aajr=False, attack_eps=(0.0, 0.1), fault_step=400)
    learned = {
        name: RewardCertification(
            test_mse=0.01 * (i + 1),
            certified_lipschitz=40.0 if name is Reward.UNCONSTRAINED else 7.5,
            certificate_method="compositional",
            lower_bound=None if name is Reward.UNCONSTRAINED else 3.25,
            max_gradient_on_data=3.0,
            certificate=f"certificates/{name}.json",
            weights_sha256="ab" * 32,
        )
        for i, name in enumerate(config.reward_models)
    }
    stress = {
        name: StressResult((0.0, 0.1), (0.0, 0.5), (0.0, 0.25), 0.05, 0.4, 0.02)
        for name in config.reward_models
    }
    policies = {
        name: PolicyResult(
            true_return=-150.0,
            own_reward_return=None if name is Reward.TRUE else -140.0,
            reward_gap=None,
            max_reward_gradient=4.0,
            tau=0.4,
            discontinuity_rate=0.1,
            discontinuity_curve=(0.0, 0.05, 0.1, 0.6),
            return_random=-160.0,
            return_mad=-200.0,
            return_reward_attack=-180.0,
        )
        for name in (Reward.TRUE, *config.reward_models)
    }
    after = 420 if fault_detected else None
    monitor = MonitorResult(
        fault_step=400,
        false_alarms_before_fault=0,
        alarms_after_fault=3 if fault_detected else 0,
        first_alarm_after_fault=after,
        detection_delay=None if after is None else after - 400,
        fault_detected=fault_detected,
        first_hash_alarm_after_fault=None,
        events={"violation": 2, "gradient": 1},
        timeline=(TimelineRow(100, {"violation": 0}), TimelineRow(500, {"violation": 2})),
        audit_path="audit.db",
        audit_records=3,
        audit_verified=True,
        audit_head="3:" + "cd" * 32,
    )
    meta = RunMeta("2025-01-01T00:00:00+00:00", "0.1", "2.3", 12.5, {"certify": 1.5})
    data = DataSummary(2000, 1600, 400, 4, (-16.0, 0.0))
    results = RunResults(meta, config, data, learned, stress, policies, monitor)
    return RunResults(meta, config, data, learned, stress, policies, monitor, checks(results))


FIGURES = Plots("Uk9CVVNU", "TElQU0NISVRa", "UFJJQ0U=", "RElTQ09OVA==", "VElNRUxJTkU=")


def test_checks_pass_on_a_good_run_and_name_what_failed():
    assert _results().checks.ok
    missed = _results(fault_detected=False).checks
    assert [check.name for check in missed.failures] == [
        "the monitor found the planted fault from what it observed"
    ]
    assert "no pair or gradient alarm after step 400" in missed.failures[0].detail


def test_run_results_read_back_from_results_json_render_the_same_report():
    results = _results()
    loaded = RunResults.from_dict(json.loads(json.dumps(results.to_dict())))
    assert loaded == results
    assert loaded.to_dict() == json.loads(json.dumps(results.to_dict()))
    assert set(loaded.policies) == {Reward.TRUE, Reward.UNCONSTRAINED, Reward.LIPSCHITZ}
    assert render(loaded, FIGURES) == render(results, FIGURES)
    with pytest.raises(InvalidArgumentError, match="monitor"):
        RunResults.from_dict(
            {key: value for key, value in results.to_dict().items() if key != "monitor"}
        )


def test_report_renders_every_section_escaped():
    headings = {
        "verdict.html.j2": "<h2>Verdict</h2>",
        "rewards.html.j2": "<h2>1–3. Reward models",
        "policies.html.j2": "<h2>4. Policies",
        "monitor.html.j2": "<h2>5. Runtime monitor",
        "reading.html.j2": "<h2>How to read this page</h2>",
    }
    assert set(headings) == set(SECTIONS)
    results = _results(env="Pendulum<b>-v1", fault_detected=False)
    page = render(results, FIGURES)
    positions = [page.index(headings[section]) for section in SECTIONS]
    assert positions == sorted(positions)
    for png in vars(FIGURES).values():
        assert f'src="data:image/png;base64,{png}"' in page
    assert "Pendulum&lt;b&gt;-v1" in page
    assert "<b>-v1" not in page
    for check in results.checks.checks:
        assert f'<li class="{check.verdict}">{check.name}' in page.replace("&#39;", "'")
    assert page.count('<li class="fail">') == 1
    for name in ("true", "unconstrained", "lipschitz"):
        assert f"<tr><td>{name}</td>" in page
    assert "<td>7.500</td>" in page  # the constrained model's certified L
    assert "<td>—</td>" in page  # a missing lower bound
    assert "<td>10%</td>" in page  # a discontinuity rate
    assert "violation 2, gradient 1" in page
