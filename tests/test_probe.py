"""`alad probe` on tiny in-test models: one probe per layer (and through an adapter), the best
dev layer, the JSON and the plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_conllu

from alad.adapter import AlignmentAdapter
from alad.checkpoint import save_checkpoint
from alad.cli import main
from alad.probe import best_layers, probe


def test_probe_reads_a_linearly_separable_layer_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    signal = np.eye(3)[y] + 0.05 * rng.standard_normal((300, 3))
    noise = rng.standard_normal((300, 3))
    evals = {"dev": (signal[:100], y[:100])}
    assert probe(signal[100:], y[100:], evals, 3)["dev"] == 100.0
    assert probe(noise[100:], y[100:], {"dev": (noise[:100], y[:100])}, 3)["dev"] < 60


def test_best_layer_and_the_layers_within_one_standard_error():
    rows = [
        {"model": "m", "layer": str(i), "dev": d, "test": 0.0}
        for i, d in enumerate([70.0, 84.5, 85.3, 83.0])
    ]
    rows.append({"model": "m", "layer": "alad", "dev": 99.0, "test": 0.0})  # not a layer
    best = best_layers(rows, dev_words=1489)["m"]
    assert best["best_dev_layer"] == 2 and best["layers"] == 3
    assert best["dev_se"] == pytest.approx(0.92, abs=0.01)
    assert best["within_one_se"] == [1, 2]


def test_alad_probe_writes_every_layer_the_adapter_and_a_plot(tiny_models, tmp_path, capsys):
    compressed, large = tiny_models
    adapter = AlignmentAdapter(32, 48, window=3, hidden=16)
    ckpt = save_checkpoint(tmp_path / "phase1", "epoch-0001", adapter, {"compressed": "x"})
    files = {
        s: write_conllu(tmp_path / f"{s}.conllu", n, i)
        for i, (s, n) in enumerate([("train", 40), ("dev", 10), ("test", 10)])
    }
    out = tmp_path / "reports" / "probe.json"
    args = [
        "probe",
        "--task",
        "pos",
        "--models",
        f"{compressed},{large}",
        "--adapter",
        f"{compressed}={ckpt}",
        "--out",
        str(out),
        *(x for s, f in files.items() for x in (f"--{s}", str(f))),
    ]
    assert main(args) == 0
    record = json.loads(out.read_text())
    layers = [(r["model"], r["layer"]) for r in record["rows"]]
    assert layers == [(str(compressed), x) for x in ("0", "1", "2", "alad")] + [
        (str(large), x) for x in ("0", "1", "2")
    ]
    assert all(0 <= r["dev"] <= 100 and 0 <= r["test"] <= 100 for r in record["rows"])
    assert record["task"] == "pos" and record["words"]["dev"] > 0
    assert set(record["best"]) == {str(compressed), str(large)}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "best dev layer" in capsys.readouterr().out
    # QA is not a token task; a wrong adapter is one error
    with pytest.raises(SystemExit):
        main([*args[:2], "qa", *args[3:]])
    bad = [*args[:6], f"{large}={ckpt}", *args[7:]]
    assert main(bad) == 2 and "reads 32-d inputs" in capsys.readouterr().err
