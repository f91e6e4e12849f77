"""`alad export MODEL --format onnx [--int8] --register` (alad/jobs.py export_and_register): the
export logged with MLflow's ONNX flavor (alad/onnx_flavor.py) in its source's lineage, through the
promotion gate (alad/registry.py), loaded back by MLflow and served by `mlflow models serve`.

    PYTHONPATH=$PWD python -m pytest -q tests/test_onnx_registry.py

A real SQLite MLflow store in a temporary folder; a tiny in-test NER model (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import save_tiny_model

from alad.aligned_model import load_model
from alad.atomic import sha256
from alad.cli import main
from alad.onnx_predict import OnnxFolderError, OnnxPredictor
from alad.predict import Predictor
from alad.registry import Registry, registry_table
from alad.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the king of the city north", "a river .", "queen-river 19th team was born in 1990"]


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    """A SQLite store holding a tiny NER model as version 1 of alad-ner-tiny-bert, @champion,
    exported and registered twice with `alad export --register`: fp32 and INT8."""
    root = tmp_path_factory.mktemp("onnx-registry")
    uri = f"sqlite:///{root}/mlflow.db"
    tracker = Tracker(uri=uri)
    folder = save_tiny_model(root, tiny_models[0], "ner", 11)
    registry = Registry(tracker)
    source = registry.register(
        tracker.start_phase(None, "pipeline"), folder, "ner", "tiny:bert", {"main": 0.5}, {}
    )
    assert registry.promote(source.name, source.version, "main", 0.0).promoted
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        lines = {}
        for flag in ([], ["--int8"]):
            out = root / ("onnx" + "".join(flag))
            argv = ["export", f"models:/{source.name}@champion", "--format", "onnx"]
            assert main([*argv, *flag, "--out", str(out), "--register"]) == 0
            lines[out.name] = out
    return {"uri": uri, "root": root, "folder": folder, "source": source, "exports": lines}


def _batch(export: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids as a REST client makes them: the export's tokenizer.json, padded."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=json.loads((export / "manifest.json").read_text())[
        "pad_token_id"
    ])  # fmt: skip
    rows = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([r.ids for r in rows], dtype=np.int64),
        "attention_mask": np.array([r.attention_mask for r in rows], dtype=np.int64),
    }


def _session_logits(export: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], batch)[0]


def test_the_export_is_a_version_of_its_own_name_in_the_sources_lineage(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    source = store["source"]
    src = client.get_model_version(source.name, source.version)
    for name, export in (("onnx", "onnx"), ("onnx-int8", "onnx--int8")):
        manifest = json.loads((store["exports"][export] / "manifest.json").read_text())
        version = client.get_model_version(f"{source.name}-{name}", "1")
        tags = version.tags
        assert tags["alad.source_model"] == source.name and tags["alad.source_version"] == "1"
        assert tags["alad.int8"] == ("true" if name.endswith("int8") else "false")
        for key, diff in manifest["max_abs_diff"].items():
            assert float(tags[f"alad.max_abs_diff.{key}"]) == diff
        assert set(manifest["max_abs_diff"]) == ({"fp32", "int8"} if manifest["int8"] else {"fp32"})
        assert tags["val.main"] == "0.5" and tags["alad.status"] == "ready"  # the source's
        # the gate made it @champion (the first one of its name); the run sits under the source's
        assert (
            str(client.get_model_version_by_alias(f"{source.name}-{name}", "champion").version)
            == "1"
        )
        assert tags["alad.promotion"] == "promoted"
        run = client.get_run(version.run_id)
        assert run.data.tags["mlflow.parentRunId"] == src.run_id == tags["alad.source_run"]
        (output,) = run.outputs.model_outputs  # the LoggedModel the version was made from
        logged = client.get_logged_model(output.model_id)
        assert logged.model_type == "alad-onnx" and str(logged.status) == "READY"
        assert version.source == logged.artifact_location
    listed = {(r["name"], r["version"]): r for r in registry_table(Tracker(store["uri"]))}
    assert listed[(f"{source.name}-onnx", "1")]["kind"] == "onnx"
    assert listed[(f"{source.name}-onnx-int8", "1")]["kind"] == "onnx int8"
    assert listed[(f"{source.name}-onnx-int8", "1")]["from"] == f"{source.name}/1"
    assert listed[(f"{source.name}-onnx", "1")]["aliases"] == "champion"


def test_registering_the_same_export_again_goes_through_the_gate(store, monkeypatch, capsys):
    """A second version with the same score stays a challenger: @champion does not move."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(store["root"])
    source = store["source"]
    out = store["root"] / "again"
    argv = ["export", f"models:/{source.name}/1", "--format", "onnx", "--out", str(out)]
    assert main([*argv, "--register"]) == 0
    printed = capsys.readouterr().out
    assert f"registered {source.name}-onnx v2: not promoted" in printed
    assert f"mlflow models serve -m models:/{source.name}-onnx/2" in printed
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    assert str(client.get_model_version_by_alias(f"{source.name}-onnx", "champion").version) == "1"


def test_mlflow_loads_it_with_the_onnx_flavor_and_predicts_its_logits(store, monkeypatch):
    import mlflow.artifacts
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    name = f"{store['source'].name}-onnx"
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.flavors["python_function"]["loader_module"] == "mlflow.onnx"
    export = store["exports"]["onnx"]
    batch = _batch(export, TEXTS)
    got = model.predict(batch)["logits"]
    np.testing.assert_array_equal(got, _session_logits(export, batch))
    # ... which are PyTorch's, and what the torch-free predictor decodes
    torch_model, _, _ = load_model(store["folder"])
    with torch.no_grad():
        want = torch_model(torch.from_numpy(batch["input_ids"]),
                           torch.from_numpy(batch["attention_mask"])).numpy()  # fmt: skip
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    rows = [ids[m.astype(bool)].tolist() for ids, m in zip(*batch.values(), strict=True)]
    for mine, theirs, m in zip(OnnxPredictor(export).logits(rows), got, real, strict=True):
        np.testing.assert_allclose(mine, theirs[m], atol=1e-5)
    # the export's other files travel with the version and the graph is stored unchanged: the
    # downloaded version is the export again, which the torch-free predictor reads (text in)
    files = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/1", tracking_uri=store["uri"])
    )
    manifest = json.loads((files / "extra_files" / "manifest.json").read_text())
    assert manifest["id2label"]["1"] == "B-PER"
    assert manifest["files"]["model.onnx"] == sha256(files / "model.onnx")
    tags = Predictor(store["folder"]).tag(TEXTS)
    assert OnnxPredictor(files).tag(TEXTS) == OnnxPredictor(export).tag(TEXTS) == tags
    with (files / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(OnnxFolderError, match="model.onnx does not match its checksum"):
        OnnxPredictor(files)
    int8 = mlflow.pyfunc.load_model(f"models:/{name}-int8/1").predict(batch)["logits"]
    np.testing.assert_array_equal(int8, _session_logits(store["exports"]["onnx--int8"], batch))


def test_register_needs_a_registered_onnx_export(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    folder, out = str(store["folder"]), str(store["root"] / "x")
    for argv, expect in (
        ([folder, "--format", "onnx"], "not a registered version"),
        ([f"models:/{store['source'].name}/1", "--format", "hf"], "use it with --format onnx"),
    ):
        assert main(["export", *argv, "--out", out, "--register"]) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1
    assert not Path(out).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_rest_requests(store):
    """The real server: `mlflow models serve -m models:/<name>-onnx@champion --env-manager local`
    in a subprocess; POST /invocations with token ids, logits back."""
    port = _free_port()
    name = f"{store['source'].name}-onnx-int8"
    # MLflow starts `uvicorn` from PATH: this interpreter's (as in an activated environment)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": path}
    mlflow = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion"]
    proc = subprocess.Popen(
        [*mlflow, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the server's workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # start-up on a busy machine
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        export = store["exports"]["onnx--int8"]
        batch = _batch(export, TEXTS)
        body = {"inputs": {k: v.tolist() for k, v in batch.items()}}
        answer = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        logits = np.array(answer.json()["predictions"]["logits"], dtype=np.float32)
        np.testing.assert_allclose(logits, _session_logits(export, batch), atol=1e-6)
        bad = requests.post(f"{url}/invocations", json={"inputs": {"ids": [[1]]}}, timeout=60)
        assert bad.status_code == 400
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have stopped by itself
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
