"""Races between real processes on one SQLite MLflow store: creating a fresh store, registering
and promoting at the same moment.

Each child process imports alad, waits at a barrier (files in a temp folder) so that both act at
once, and prints its promotion decision as JSON. The promotion read is slowed down in the
children to widen the window a race needs (before the registry lock, this gave two "first
champions", the worse model as @champion, or a UNIQUE-constraint crash).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    from alad.registry import Registry
    from alad.tracking import Tracker

    uri, name, barrier, me = sys.argv[1], sys.argv[2], Path(sys.argv[4]), sys.argv[5]
    score = float(sys.argv[3])

    def wait(step):
        (barrier / f"{step}-{me}").touch()
        deadline = time.time() + 60
        while len(list(barrier.glob(f"{step}-*"))) < 2:
            if time.time() > deadline:
                sys.exit(f"barrier {step}: the other process never came")
            time.sleep(0.01)

    slow_read = Registry._alias
    def _alias(self, model, alias):  # widen the read-then-write window of the gate
        found = slow_read(self, model, alias)
        if alias == "champion":
            time.sleep(0.5)
        return found
    Registry._alias = _alias

    wait("open")
    tracker = Tracker(uri=uri, experiment="race")        # fresh store: both create tables
    registry = Registry(tracker)
    registry._ensure_registered_model(name, {"task": "ner"}, "race")
    version = tracker.client.create_model_version(
        name, "file:///nowhere", tags={"alad.status": "ready", "val.main": repr(score)}
    ).version
    wait("promote")
    decision = registry.promote(name, str(version), "main", 0.0)
    print(json.dumps({"version": str(version), "score": score, "promoted": decision.promoted,
                      "reason": decision.reason}))
    """
)


def _run_pair(tmp_path: Path, scores: tuple[float, float]) -> list[dict]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    children = [
        subprocess.Popen(
            [sys.executable, str(script), uri, "alad-ner-race", str(s), str(barrier), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, s in enumerate(scores)
    ]
    done = [(child, *child.communicate(timeout=300)) for child in children]
    errors = [err[-2000:] for child, _, err in done if child.returncode != 0]
    assert not errors, "\n---\n".join(errors)
    return [json.loads(out.strip().splitlines()[-1]) for _, out, _ in done]


def test_two_processes_create_register_and_promote_at_once(tmp_path):
    from alad.tracking import Tracker

    results = _run_pair(tmp_path, (0.6, 0.8))  # both exit 0: no crash on a fresh store
    firsts = [r for r in results if "first champion" in r["reason"]]
    assert len(firsts) == 1, results  # one of them saw the other's champion
    best = max(results, key=lambda r: r["score"])
    assert best["promoted"], results
    client = Tracker(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="race").client
    aliases = {a: str(v) for a, v in client.get_registered_model("alad-ner-race").aliases.items()}
    assert aliases["champion"] == best["version"], (aliases, results)
    if firsts[0] is not best:  # the worse came first: it is the previous champion now
        assert aliases["previous"] == firsts[0]["version"]
