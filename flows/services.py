"""Local services for the orchestrated pipeline, all on 127.0.0.1: Prefect server, MLflow server,
and the deployment runner (flows/deployments.py).

    python flows/services.py up | down | status | demo     (make up / make down / make demo)

State lives in the repo: .services/ (pids, logs, env), .prefect/ (Prefect's SQLite), mlflow/
(MLflow's SQLite + artifacts). `source .services/env` points your shell at them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".services"
BIN = Path(sys.executable).parent
PREFECT_URL = "http://127.0.0.1:4200"
MLFLOW_URL = "http://127.0.0.1:5000"
ENV = {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_API_URL": f"{PREFECT_URL}/api",  # unset, Prefect starts a throwaway server
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "MLFLOW_TRACKING_URI": MLFLOW_URL,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else it spawns job workers
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
    "TOKENIZERS_PARALLELISM": "false",
}
SERVICES = {
    "prefect": (
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", "4200"],
        f"{PREFECT_URL}/api/health",
    ),
    "mlflow": (
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            "5000",
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{ROOT}/mlflow/mlflow.db",
            "--default-artifact-root",
            str(ROOT / "mlflow" / "artifacts"),
        ],
        f"{MLFLOW_URL}/health",
    ),
    "runner": ([sys.executable, str(ROOT / "flows" / "deployments.py")], None),
}


def _env() -> dict[str, str]:
    return {**os.environ, **ENV}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _pid(name: str) -> int | None:
    path = STATE / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
        return pid
    except OSError:
        path.unlink()
        return None


def _wait(url: str, name: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(url):
            return
        if _pid(name) is None:
            raise SystemExit(f"{name} exited during start-up; see {STATE / (name + '.log')}")
        time.sleep(1)
    raise SystemExit(
        f"{name} did not answer at {url} within {seconds:.0f} s; see {STATE / (name + '.log')}"
    )


def up() -> None:
    STATE.mkdir(exist_ok=True)
    (ROOT / "mlflow").mkdir(exist_ok=True)
    (STATE / "env").write_text("".join(f"export {k}={v}\n" for k, v in ENV.items()))
    for name, (cmd, health) in SERVICES.items():
        if _pid(name):
            print(f"{name:8s} already running (pid {_pid(name)})")
            continue
        log = (STATE / f"{name}.log").open("a")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        (STATE / f"{name}.pid").write_text(str(proc.pid))
        if health:
            _wait(health, name)
        print(f"{name:8s} started (pid {proc.pid})")
    _wait_for_deployment()
    print(
        f"Prefect UI  {PREFECT_URL}\nMLflow UI   {MLFLOW_URL}\n"
        f"In your shell: source .services/env   (then `prefect deployment run ...` works)"
    )


def _wait_for_deployment(seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            url = f"{PREFECT_URL}/api/deployments/name/alad-pipeline/demo"
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if _pid("runner") is None:
                raise SystemExit(
                    f"the deployment runner exited; see {STATE / 'runner.log'}"
                ) from None
            time.sleep(1)
    raise SystemExit(f"deployment alad-pipeline/demo not registered; see {STATE / 'runner.log'}")


def down() -> None:
    for name in reversed(list(SERVICES)):
        pid = _pid(name)
        if pid is None:
            print(f"{name:8s} not running")
            continue
        os.killpg(pid, signal.SIGTERM)
        for _ in range(30):
            if _pid(name) is None:
                break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        print(f"{name:8s} stopped")


def status() -> None:
    for name, (_, health) in SERVICES.items():
        pid = _pid(name)
        state = "running" if pid else "stopped"
        if pid and health:
            state += ", answering" if _answers(health) else ", NOT answering"
        print(f"{name:8s} {state}")


def demo() -> None:
    """Run the demo deployment through the services and say where to look."""
    if not all(_pid(n) for n in SERVICES):
        raise SystemExit("services are not running: start them with `make up`")
    t0 = time.monotonic()
    cmd = [str(BIN / "prefect"), "deployment", "run", "alad-pipeline/demo", "--watch"]
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True)
    print(f"\nPipeline finished in {time.monotonic() - t0:.0f} s via Prefect.\n")
    root = ROOT / "runs" / "flows"
    latest = max(root.glob("*/registry.json"), key=lambda p: p.stat().st_mtime, default=None)
    if latest is None:
        raise SystemExit("the flow run left no registry.json: see the Prefect UI")
    run = latest.parent
    for phase in ("phase1", "phase2"):
        m = json.loads((run / phase / "metrics.json").read_text())
        print(
            f"{phase}: held-out alignment MSE {m['before']['mse']:.4f} -> {m['after']['mse']:.4f}"
            f", cosine {m['before']['cosine']:.3f} -> {m['after']['cosine']:.3f}"
        )
    print((run / "eval" / "table.md").read_text())
    reg = json.loads(latest.read_text())
    print(f"Prefect UI: {PREFECT_URL}/runs (flow alad-pipeline, one task per stage)")
    print(f"MLflow UI:  {MLFLOW_URL} (experiment alad: parent run + a nested run per phase)")
    if reg.get("registered"):
        print(
            f"Registry:   {reg['name']} version {reg['version']}: {reg['reason']}; "
            f"load it with mlflow.pyfunc.load_model('models:/{reg['name']}@champion')"
        )
    print(f"Outputs:    {run}\nStop the services with `make down`.")


if __name__ == "__main__":
    actions = {"up": up, "down": down, "status": status, "demo": demo}
    if len(sys.argv) != 2 or sys.argv[1] not in actions:
        raise SystemExit(f"usage: python flows/services.py {{{'|'.join(actions)}}}")
    actions[sys.argv[1]]()
