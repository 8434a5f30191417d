# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Deploy a certified reward model under the monitor and verify its audit log
#
# This tutorial reproduces the monitor's results of the README and [Runtime monitor](../monitor.md),
# as `lipguard run` does in its step 5 ([The pipeline](../pipeline.md)):
#
# - a certified reward model served correctly never trips the monitor (its tolerance is each
#   observation's proven floating-point error, so "a certified float32 model never trips on its
#   own rounding");
# - a fault in the serving path — the features multiplied by 8, the weights untouched, so "the
#   weight hash cannot see it" — is found from the rewards the monitor observes;
# - every checked batch is a record of a hash-chained audit log; `lipguard audit verify`
#   accepts the log as written, and rejects an edited copy, and — given a checkpoint kept
#   elsewhere — a copy whose last records were deleted (monitor.md's table: "a record edited …
#   ✔", "the last records deleted (tail truncation) … ✔ with a checkpoint").
#
# The site runs this script at every build (`make docs`); a failing `assert` fails the build.

# %%
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lipguard.bounds import certify
from lipguard.monitor import AuditStore, LipschitzMonitor
from lipguard.nn import LipschitzMLP

torch.set_num_threads(1)
torch.manual_seed(0)
folder = Path(tempfile.mkdtemp())

# %% [markdown]
# ## A certified reward model
#
# A `LipschitzMLP` guaranteed 2-Lipschitz learns a smooth reward of a 4-dimensional state; its
# certificate binds the bound to the weights' SHA-256.

# %%
train_states = torch.randn(1024, 4)
train_rewards = torch.tanh(train_states[:, 0]) + 0.3 * train_states[:, 1]
reward_model = LipschitzMLP(4, 1, hidden=(32,), lipschitz=2.0)
optimizer = torch.optim.Adam(reward_model.parameters(), lr=3e-3)
for _ in range(200):
    loss = ((reward_model(train_states).squeeze(-1) - train_rewards) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
reward_model.eval()
certificate = certify(reward_model, inputs=train_states[:256])
print(certificate.upper)
L = certificate.upper.value

# %% [markdown]
# ## Serve it under the monitor, and break the serving path half-way
#
# Eight batches of 16 states arrive; from batch 6 on, the server computes the reward of
# `8·s` instead of `s`. The monitor checks every new pair of observations (within the batch,
# against its sliding window and against the training data) for `|r - r'| > L·‖s - s'‖`, the
# model's weight hash, and drift; every batch goes into the audit log.

# %%
database = folder / "audit.db"
store = AuditStore(database)
monitor = LipschitzMonitor(
    L,
    window=64,
    reference=(train_states[:256], reward_model(train_states[:256]).detach().squeeze(-1)),
    model=reward_model,
    weights_sha256=certificate.weights_sha256,
    store=store,
)
FAULT = 6
violations = []
for batch in range(8):
    states = torch.randn(16, 4)
    served = 8.0 * states if batch >= FAULT else states  # the planted fault
    with torch.no_grad():
        rewards = reward_model(served).squeeze(-1)
    found = monitor.observe(states, rewards)
    violations.append(len(found.violations))
print("violations per batch:", violations)
assert sum(violations[:FAULT]) == 0  # silent while the serving path is correct
assert violations[FAULT] > 0  # the fault is found in the first faulty batch

# %% [markdown]
# ## Verify the audit log
#
# A checkpoint `(log id, count, head)` is exported and kept elsewhere; `lipguard audit verify`
# recomputes the chain from the file (read-only) and checks that it still holds the
# checkpoint's head. Exit code 0: the log is intact.

# %%
checkpoint = folder / "checkpoint.json"
store.checkpoint().save(checkpoint)
print(f"{len(store.records())} records, head {store.checkpoint().head[:16]}…")


def audit_verify(path: Path) -> int:
    command = [sys.executable, "-m", "lipguard", "audit", "verify", str(path)]
    done = subprocess.run(
        [*command, "--checkpoint", str(checkpoint)], capture_output=True, text=True
    )
    print(
        f"$ lipguard audit verify {path.name} --checkpoint {checkpoint.name}"
        f"  → exit {done.returncode}"
    )
    print(done.stdout.strip()[-600:])
    return done.returncode


assert audit_verify(database) == 0

# %% [markdown]
# ## An edited copy and a truncated copy fail
#
# Someone rewrites one recorded event in a copy of the log (to hide an alarm, say), and someone
# else deletes the last records. Both copies are rejected with exit code 1.

# %%


def copy_log(name: str) -> Path:
    """A copy of the SQLite log with its write-ahead log (recent records live there)."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{database}{suffix}").exists():
            shutil.copy(f"{database}{suffix}", folder / f"{name}{suffix}")
    return folder / name


edited = copy_log("edited.db")
with sqlite3.connect(edited) as connection:
    connection.execute(
        "UPDATE audit_records SET payload = replace(payload, 'violation', 'violatiom') "
        "WHERE seq = (SELECT max(seq) FROM audit_records WHERE payload LIKE '%violation%')"
    )
assert audit_verify(edited) == 1

truncated = copy_log("truncated.db")
with sqlite3.connect(truncated) as connection:
    connection.execute(
        "DELETE FROM audit_records WHERE seq > (SELECT max(seq) - 3 FROM audit_records)"
    )
assert audit_verify(truncated) == 1
