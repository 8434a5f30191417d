"""Stage 5 of ``lipguard run``: the monitor watches the deployed reward model and catches a fault.

The constrained reward model is deployed on the rollouts of the policy trained on it; its inputs
carry injected sensor noise. Half-way, the *serving path* breaks: the features reach the model
multiplied by ``fault_scale`` (a unit or normalisation step gone wrong — degrees where radians
were expected), so the rewards it serves become steeper than the certificate allows. The model's
weights, and so their hash, are unchanged: the monitor can only find the fault from the
``(state, reward)`` pairs it observes. Hash alarms are counted apart from pair and gradient
alarms. Every event goes to a hash-chained audit store, which is verified at the end.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from lipguard.bounds import weights_sha256
from lipguard.monitor import EVENT_KINDS, AuditStore, EventKind, LipschitzMonitor
from lipguard.pipeline.config import RunConfig
from lipguard.pipeline.results import MonitorResult, TimelineRow
from lipguard.pipeline.rewards import RewardData
from lipguard.rl import RewardModel, reward_features
from lipguard.rl.data import flat_observations

#: alarms raised by what the monitor observed (pairs of observations, input gradients)
OBSERVED_ALARMS: tuple[EventKind, ...] = ("violation", "gradient")
#: the alarm raised by the weight hash
HASH_ALARM: EventKind = "weights_changed"


def monitor_with_fault(
    config: RunConfig,
    model: RewardModel,
    lipschitz: float,
    policy: BaseAlgorithm,
    data: RewardData,
    audit_path: Path,
) -> MonitorResult:
    """Stage 5: deploy a copy of ``model`` under a :class:`LipschitzMonitor` bounded by
    ``lipschitz`` on ``policy``'s noisy rollouts, corrupt it at ``config.fault_step``, and log
    every event to a new audit store at ``audit_path``. Returns the alarms before and after the
    fault, the event timeline and the verified audit log's head."""
    deployed = copy.deepcopy(model).eval()
    reference = data.train[0][:2000]
    with torch.no_grad():
        reference_rewards = deployed(reference)
    store = AuditStore(audit_path)  # a new log in the run's fresh folder
    monitor = LipschitzMonitor(
        lipschitz,
        window=1024,
        reference=(reference, reference_rewards),
        model=deployed,
        weights_sha256=weights_sha256(deployed),
        store=store,
        pairs="worst",  # one audit record per offending observation, not per pair
    )
    env = make_vec_env(
        config.env,
        n_envs=1,
        seed=config.seed + 777,
        env_kwargs=copy.deepcopy(config.env_kwargs),
        wrapper_class=flat_observations,
    )
    rng = np.random.default_rng(config.seed)
    observations = np.asarray(env.reset())
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    timeline: list[TimelineRow] = []
    events = []
    input_scale = 1.0  # the serving path's feature conversion: correct until the fault
    for step in range(config.monitor_steps):
        if step == config.fault_step:
            input_scale = config.fault_scale
        action, _ = policy.predict(observations, deterministic=True)
        noisy = observations + rng.normal(0.0, config.observation_noise, observations.shape)
        states.append(noisy[0])
        actions.append(np.asarray(action).reshape(-1))
        step_observations, _, _, _ = env.step(action)
        observations = np.asarray(step_observations)
        if len(states) == config.monitor_batch:
            features = reward_features(np.stack(states), np.stack(actions))
            with torch.no_grad():
                rewards = deployed(features * input_scale)
            found = monitor.observe(features, rewards).events
            events += found
            counts = Counter(event.kind for event in found)
            timeline.append(TimelineRow(step + 1, {kind: counts[kind] for kind in EVENT_KINDS}))
            states, actions = [], []
    env.close()
    alarms = [event.step for event in events if event.kind in (*OBSERVED_ALARMS, HASH_ALARM)]
    before = [s for s in alarms if s < config.fault_step]
    observed = [e.step for e in events if e.kind in OBSERVED_ALARMS and e.step >= config.fault_step]
    hashed = [e.step for e in events if e.kind == HASH_ALARM and e.step >= config.fault_step]
    report = store.verify()
    count, head = store.head()
    totals = Counter(e.kind for e in events)
    return MonitorResult(
        fault_step=config.fault_step,
        false_alarms_before_fault=len(before),
        alarms_after_fault=len(observed),
        first_alarm_after_fault=min(observed) if observed else None,
        detection_delay=(min(observed) - config.fault_step) if observed else None,
        fault_detected=bool(observed),
        first_hash_alarm_after_fault=min(hashed) if hashed else None,
        events={kind: totals[kind] for kind in EVENT_KINDS},
        timeline=tuple(timeline),
        audit_path=str(audit_path),
        audit_records=report.records,
        audit_verified=report.ok,
        audit_head=f"{count}:{head}",  # keep it elsewhere: `lipguard audit verify --expect-head`
    )
