"""Reliability, second round (issue 24), at run time: text is text, stopping and waiting.

One row per example a hostile-but-fair user tried, with what it did at 8ba5cf2 (`before`):
- any Unicode text is tagged or answered (or refused in one line) through `Predictor`, the CLI,
  the pyfunc and the REST app that `mlflow models serve` runs;
- a SIGTERM outside training stops `alad` at once (exit 143, one line); during training it still
  waits for the save point (tests/test_stopping.py, tests/phases/test_finetune_resume.py);
- a registry lookup is bounded in time, names the server, creates no store, and says when a
  model does not exist.
Tiny in-test models only (tests/conftest.py).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import train_tiny_model
from safetensors.torch import save_file

from alad import store as alad_store
from alad.atomic import sha256
from alad.cli import main
from alad.errors import AladError, RegistryError, ServicesDown
from alad.predict import Predictor
from alad.pyfunc import as_frame, predict_frame
from alad.registry import resolve_adapter

ZIP = "ValueError: zip() argument 2 is shorter than argument 1"
ROOT = Path(__file__).resolve().parents[1]


def _env(**more: str) -> dict[str, str]:
    """This checkout's alad first on the path of a child process (not an installed copy)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **more}


@dataclass(frozen=True)
class Text:
    id: str
    text: str
    words: tuple[str, ...]  # the words it is tagged as ("" -> none)
    before: str  # at 8ba5cf2


TEXTS = [
    Text("zero-width-space", "the \u200b king", ("the", "\u200b", "king"), ZIP),
    Text("control-chars", "the \x01\x02 king", ("the", "\x01\x02", "king"), ZIP),
    Text("combining-accent", "the \u0301 king", ("the", "\u0301", "king"), ZIP),
    Text("combining-accent-alone", "\u0301", ("\u0301",), ZIP),
    Text("nul", "the \x00 king", ("the", "\x00", "king"), ZIP),
    Text("byte-order-mark", "\ufeff king", ("\ufeff", "king"), ZIP),
    Text("rtl-mark", "the \u200f king", ("the", "\u200f", "king"), ZIP),
    Text("rtl-text", "the king \u05e9\u05dc\u05d5\u05dd .", ("the", "king", "שלום", "."), "ok"),
    Text("emoji", "the \U0001f451 king", ("the", "\U0001f451", "king"), "ok"),
    Text("lone-surrogate", "the \udcff king", ("the", "\ufffd", "king"), "UnicodeEncodeError"),
    Text("empty", "", (), "ok (no tags)"),
    Text("whitespace-only", " \t ", (), "ok (no tags)"),
]
# What a REST client can send: a lone surrogate is refused by MLflow's parser (pandas) with a
# 400 and one line, before alad sees it; the other texts are served.
SERVED = [t for t in TEXTS if t.id != "lone-surrogate"]


@pytest.fixture(scope="module")
def ner_model(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runtime-ner")
    return train_tiny_model(root, tiny_models)


@pytest.fixture(scope="module")
def predictor(ner_model) -> Predictor:
    return Predictor(ner_model)


@pytest.fixture(scope="module")
def qa_model(ner_model, tmp_path_factory) -> Path:
    """The NER model with a random span head: a QA model whose answers exercise the decoding."""
    folder = tmp_path_factory.mktemp("runtime-qa") / "model"
    shutil.copytree(ner_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    dim = manifest["head"]["dim"]
    torch.manual_seed(0)
    head = {"qa_outputs.weight": torch.randn(2, dim), "qa_outputs.bias": torch.zeros(2)}
    save_file(head, folder / "head.safetensors")
    manifest["files"]["head.safetensors"] = sha256(folder / "head.safetensors")
    manifest.update(task="qa", labels=[], head={"kind": "span", "dim": dim, "num_labels": 2})
    manifest["stride"] = 8
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def served(ner_model, tmp_path_factory):
    """The NER model as a pyfunc, loaded by MLflow, and the REST app `mlflow models serve` runs
    (mlflow.pyfunc.scoring_server), in this process: the same request handling, no server."""
    import mlflow.pyfunc
    from fastapi.testclient import TestClient
    from mlflow.pyfunc.scoring_server import init

    from alad.pyfunc import AladPyfunc
    from alad.tasks import TASKS

    path = tmp_path_factory.mktemp("runtime-pyfunc") / "pyfunc"
    env = dict(os.environ)
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=AladPyfunc(),
        artifacts={"model": str(ner_model)},
        input_example=pd.DataFrame(TASKS["ner"].input_example),
    )
    model = mlflow.pyfunc.load_model(str(path))
    yield model, TestClient(init(model))
    os.environ.clear()  # init() marks the process as a serving environment
    os.environ.update(env)


def _tags(out: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"word": w, "tag": t} for w, t in out]


# -- text is text: tagging ----------------------------------------------------------------------


@pytest.mark.parametrize("case", TEXTS, ids=[t.id for t in TEXTS])
def test_any_text_is_tagged_by_the_predictor_and_the_cli(case, predictor, ner_model, capsys):
    (tagged,) = predictor.tag([case.text])
    assert tuple(w for w, _ in tagged) == case.words
    assert {t for _, t in tagged} <= set(predictor.manifest["labels"])
    capsys.readouterr()
    assert main(["predict", str(ner_model), case.text, "-q"]) == 0
    out, err = capsys.readouterr()
    assert out == " ".join(f"{w}/{t}" for w, t in tagged) + "\n" and "Traceback" not in err


@pytest.mark.parametrize("case", SERVED, ids=[t.id for t in SERVED])
def test_any_text_is_tagged_by_the_pyfunc_and_served_with_200(case, predictor, served):
    model, client = served
    expected = _tags(predictor.tag([case.text])[0])
    assert model.predict(pd.DataFrame({"text": [case.text, "the king"]}))[0] == expected
    body = {"dataframe_split": {"columns": ["text"], "data": [[case.text]]}}
    response = client.post(
        "/invocations", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [expected]}


def test_a_lone_surrogate_is_one_line_400_from_the_server(served):
    _, client = served
    body = '{"dataframe_split": {"columns": ["text"], "data": [["the \\udcff king"]]}}'
    response = client.post(
        "/invocations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "surrogates not allowed" in response.json()["message"]


def test_a_word_without_tokens_keeps_its_label_position(tiny_models):
    """The root of the zip() error: a word the tokenizer drops had no first sub-token."""
    from transformers import AutoTokenizer

    from alad.data.readers import TaggedSentence
    from alad.data.tagging import IGNORE, encode_tagged

    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    words = ("the", "\u200b", "king", "\x00", "\u0301", "city")
    tags = ("O", "B-PER", "O", "B-LOC", "O", "B-ORG")
    label2id = {t: i for i, t in enumerate(sorted(set(tags)))}
    feats = encode_tagged(tok, [TaggedSentence(words, tags)], label2id, 32)
    labels = [lab for lab in feats.labels[0] if lab != IGNORE]
    assert labels == [label2id[t] for t in tags]
    ids = feats.input_ids[0]
    assert [ids[i] for i, lab in enumerate(feats.labels[0]) if lab != IGNORE][1] == tok.unk_token_id


def test_random_bytes_on_stdin_are_text_in_a_real_process(ner_model, tmp_path):
    """At 8ba5cf2: UnicodeEncodeError (surrogateescape'd bytes reached the tokenizer)."""
    data = random.Random(0).randbytes(400)
    cmd = [sys.executable, "-m", "alad.cli", "predict", str(ner_model), "-q"]
    env = _env(PYTHONIOENCODING="ascii")  # and an output that cannot say it all
    proc = subprocess.run(cmd, input=data, capture_output=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in io.StringIO(data.decode("utf-8", "replace"), newline=None)]
    assert len(proc.stdout.splitlines()) == sum(bool(line.strip()) for line in lines)


def test_bytes_on_stdin_in_process(ner_model, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the \xff king\n\x00\n\n")))
    assert main(["predict", str(ner_model), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [[p.rsplit("/", 1)[0] for p in line.split(" ")] for line in out] == [
        ["the", "\ufffd", "king"],
        ["\x00"],
    ]


# -- text is text: answering --------------------------------------------------------------------

CONTEXT = "the \u200b king \x00 was \u0301 born \U0001f451 in \u05e9\u05dc\u05d5\u05dd city ."
QUESTIONS = [
    # id, question, context, answered (False: no answer by rule), before
    ("plain", "who was born ?", CONTEXT, True, "ok"),
    ("nul-question", "\x00", CONTEXT, True, "ok"),
    ("zero-width-question", "\u200b", CONTEXT, True, "ok"),
    ("emoji", "\U0001f451 ?", "\U0001f451 \U0001f451", True, "ok"),
    ("surrogates", "who \ud800 ?", "the \udcff king", True, "TypeError (tokenizer)"),
    ("empty-question", "", CONTEXT, False, "an answer to nothing"),
    ("whitespace-question", " \t", CONTEXT, False, "an answer to nothing"),
    ("empty-context", "who ?", "", False, "ok"),
    ("nul-context", "who ?", "\x00", True, "ok"),
]


@pytest.mark.parametrize(
    ("question", "context", "answered"),
    [q[1:4] for q in QUESTIONS],
    ids=[q[0] for q in QUESTIONS],
)
def test_any_question_and_context_is_answered(question, context, answered, qa_model, capsys):
    qa = Predictor(qa_model)
    (answer,) = qa.answer([(question, context)])
    if not answered:
        assert answer == ""
    assert answer.replace("\ufffd", "") in context.replace("\ud800", "").replace("\udcff", "")
    if not any("\ud800" <= c <= "\udfff" for c in question + context):  # pandas refuses those
        frame = as_frame({"question": [question], "context": [context]})
        assert predict_frame(qa, frame) == [answer]  # the pyfunc
    capsys.readouterr()
    assert main(["predict", str(qa_model), "--question", question, "--context", context]) == 0
    assert capsys.readouterr().out == (answer or "(no answer)") + "\n"


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--context", "the king ."], "--context needs --question"),  # before: ignored, exit 0
        (["the king .", "--question", "who ?"], "not both"),  # before: the text was ignored
    ],
    ids=["context-without-question", "text-and-question"],
)
def test_predict_requests_that_mean_nothing_are_one_line(argv, expect, ner_model, capsys):
    assert main(["predict", str(ner_model), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alad: error:") and expect in err and len(err.splitlines()) == 1


# -- stopping: a SIGTERM outside training stops at once -----------------------------------------

HUNG_STEP = """
import sys, time
import alad.cli as cli
def hung(args):  # a config parse or a lookup that does not return
    print("hung", file=sys.stderr, flush=True)
    time.sleep(300)
cli._settings = hung
sys.exit(cli.main(sys.argv[1:]))
"""


def _sigterm_when(proc: subprocess.Popen, ready) -> tuple[float, str]:
    """Wait for `ready()`, send SIGTERM; (seconds until the process ended, its stderr)."""
    deadline = time.monotonic() + 180  # start-up (torch import) on a busy machine
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:  # the SIGTERM was not honoured: leave nothing running
            proc.kill()
            proc.wait()
    return time.monotonic() - t0, err


def test_sigterm_stops_a_hung_non_training_step_at_once(tmp_path):
    """At 8ba5cf2 the SIGTERM was deferred to a save point that never came (`timeout` could
    not stop a hung config parse): the step ran on until it ended by itself."""
    cmd = [sys.executable, "-c", HUNG_STEP, "config", "show"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env()
    )

    def hung() -> bool:  # reads stderr up to the hook's line (or to the end: a crash)
        return proc.stderr.readline() in ("hung\n", "")

    seconds, err = _sigterm_when(proc, hung)
    assert proc.returncode == 143 and seconds < 5, (seconds, err)
    assert err.strip().startswith("alad: stopped by SIGTERM") and "Traceback" not in err, err


def test_sigterm_stops_predict_waiting_on_stdin(ner_model, tmp_path):
    """At 8ba5cf2: deferred, so `alad predict` on an open stdin was only ended by SIGKILL."""
    wchan = Path("/proc/self/wchan")
    if not wchan.exists():
        pytest.skip("needs /proc/<pid>/wchan to see the process waiting on its stdin")
    cmd = [sys.executable, "-m", "alad.cli", "predict", str(ner_model), "-q"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    waits = Path(f"/proc/{proc.pid}/wchan")
    seconds, err = _sigterm_when(proc, lambda: "pipe" in waits.read_text())
    proc.stdin.close()
    assert proc.returncode == 143 and seconds < 5, (seconds, err)
    assert "alad: stopped by SIGTERM" in err and "Traceback" not in err, err


# -- waiting: registry lookups are bounded, create nothing, say what does not exist -----------


def _closed_port() -> int:
    with socket.socket() as s:  # nothing listens on it once this closes
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_models_uri_with_the_server_down_fails_in_seconds_naming_it(tmp_path, monkeypatch):
    """At 8ba5cf2: 255 s (MLflow's 7 retries with backoff), under `timeout 120`."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ServicesDown, match=rf"MLflow server at {uri} is not answering"):
        resolve_adapter("models:/x@champion", uri)
    assert time.monotonic() - t0 < 30


class _SilentAPI(http.server.BaseHTTPRequestHandler):
    """A tracking server that is up (/health answers) but never answers an API request."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            time.sleep(30)

    def log_message(self, *args):
        pass


def test_a_server_that_does_not_answer_is_given_up_on_within_the_bound(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SilentAPI)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(alad_store, "LOOKUP_TIMEOUT_S", 1)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    t0 = time.monotonic()
    try:
        with pytest.raises(RegistryError, match=rf"server at {uri} did not answer in time"):
            resolve_adapter("models:/x@champion", uri)
    finally:
        server.shutdown()
    assert time.monotonic() - t0 < 15  # 2 tries of 1 s and a back-off
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # the bound is the lookup's only


def test_the_cli_names_the_server_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    for argv in (["registry", "list"], ["registry", "rollback", "alad-x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith("alad: error: MLflow server at http://127.0.0.1:")
            and len(err.splitlines()) == 1
        ), err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A SQLite tracking store holding one registered model without versions."""
    from alad.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('runtime-store')}/mlflow.db"
    Tracker(uri).client.create_registered_model("alad-empty")
    return uri


@pytest.mark.parametrize(
    ("ref", "expect"),
    [
        ("models:/alad-nope@champion", "no registered model named 'alad-nope'"),
        ("models:/alad-nope/1", "no registered model named 'alad-nope'"),
        ("models:/alad-empty@champion", "model 'alad-empty' in sqlite:"),
        ("models:/alad-empty", "expected models:/<name>@<alias>"),
    ],
    ids=["no-model-alias", "no-model-version", "no-alias", "no-version-or-alias"],
)
def test_a_lookup_says_what_does_not_exist(ref, expect, store):
    with pytest.raises(RegistryError, match=expect):
        resolve_adapter(ref, store)


def test_rollback_of_a_model_that_does_not_exist_says_so(store, tmp_path, monkeypatch, capsys):
    """At 8ba5cf2: "has no @previous version ...: it has had one champion only"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["registry", "rollback", "alad-nope"]) == 2
    err = capsys.readouterr().err
    assert f"no registered model named 'alad-nope' in {store}" in err and "one champion" not in err


@pytest.mark.parametrize(
    "call",
    ["resolve", "list", "rollback", "list-default-store"],
)
def test_a_lookup_in_a_store_that_does_not_exist_creates_nothing(call, tmp_path, monkeypatch):
    """At 8ba5cf2 each of these created an empty mlflow.db (and its folder)."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "none" / "mlflow.db"
    if call == "list-default-store":
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        missing = tmp_path / "mlflow" / "mlflow.db"
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    if call == "resolve":
        with pytest.raises(AladError, match=f"no tracking store at {missing}"):
            resolve_adapter("models:/x@champion")
    else:
        argv = ["registry", "rollback", "alad-x"] if call == "rollback" else ["registry", "list"]
        assert main(argv) == (2 if call == "rollback" else 0)
    assert list(tmp_path.iterdir()) == []
