"""`alad bench latency` on the tiny in-test models: the JSON's shape and the reference row.
(Timings are printed by the benchmark, never asserted.)"""

from __future__ import annotations

import json

import pytest

from alad.bench import bench_latency
from alad.cli import main
from alad.results import read_latency
from alad.timing import best_of


def test_best_of_alternates_and_keeps_the_minimum():
    order: list[str] = []
    best = best_of({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, k=3)
    assert order == ["a", "b"] * 4  # one warm-up round, then 3 alternating rounds
    assert set(best) == {"a", "b"} and all(0 <= s < float("inf") for s in best.values())


def test_bench_latency_writes_every_model_and_batch(tiny_models, tmp_path):
    compressed, large = tiny_models
    out = tmp_path / "results" / "latency.json"
    report = bench_latency(
        large=str(large),
        compressed=[str(compressed), f"{compressed}:prune1"],
        windows=[1, 3],
        batches=[1, 2],
        tokens=16,
        k=1,
        hidden=8,
        out=out,
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert read_latency(out) == json.loads(json.dumps(report))  # what `alad report` accepts
    rows = report["rows"]
    # M_L + 2 x (M_C, M_C + AlAd n=1, n=3), each at batch 1 and 2
    assert len(rows) == (1 + 2 * 3) * 2
    assert {(r["model"], r["window"]) for r in rows} == {
        (str(large), None),
        *((c, n) for c in (str(compressed), f"{compressed}:prune1") for n in (None, 1, 3)),
    }
    for r in rows:
        assert r["ms_per_batch"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["tokens_per_s"] == pytest.approx(1000 * r["batch"] * 16 / r["ms_per_batch"])
    reference = [r for r in rows if r["role"] == "large"]
    assert [r["speedup"] for r in reference] == [1.0, 1.0]
    assert [r["size_pct"] for r in reference] == [100.0, 100.0]
    plain = next(r for r in rows if r["model"] == str(compressed) and r["window"] is None)
    alad = next(r for r in rows if r["model"] == str(compressed) and r["window"] == 3)
    # AlAd(32 -> 48, n=3, H=8) = 3*32*8 + 8 + 8*48 + 48 parameters on top of M_C
    assert alad["params"] - plain["params"] == 3 * 32 * 8 + 8 + 8 * 48 + 48
    assert report["k"] == 1 and report["tokens"] == 16 and report["large"] == str(large)
    machine = report["machine"]
    assert {"host", "cpus", "torch_threads", "torch", "loadavg_before", "loadavg_after"} <= set(
        machine
    )
    assert report["date"] and report["git_commit"]


def test_bench_latency_cli(tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compressed, large = tiny_models
    argv = ["bench", "latency", "--large", str(large), "--compressed", str(compressed)]
    argv += ["--windows", "5", "--batches", "1", "--tokens", "8", "--k", "1", "--hidden", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "1.00x" in out
    rows = json.loads((tmp_path / "results" / "latency.json").read_text())["rows"]
    assert [(r["window"], r["batch"]) for r in rows] == [(None, 1), (None, 1), (5, 1)]


def test_bench_latency_grid_times_every_adapter_shape_of_the_grid(tiny_grid, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """`--grid`: M_L, M_C and M_C + AlAd of each (n, H, rank) the grid's cells use, written to
    results/latency-<grid name>.json with each AlAd row's shape and overhead over M_C."""
    import yaml

    from alad.adapter import AlignmentAdapter

    data = yaml.safe_load(tiny_grid.read_text())  # n=3, H=16; modes compressed + alad-frozen
    data["name"] = "lean"
    data["modes"] = ["alad-frozen"]
    data["variants"] = {
        "full": {"modes": ["compressed", "alad-frozen"]},
        "r4": {"set": {"adapter.rank": 4}},
        "h8": {"set": {"adapter.hidden": 8}},
    }
    tiny_grid.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "latency", "--grid", str(tiny_grid), "--batches", "1", "--tokens", "8"]
    assert main([*argv, "--k", "1"]) == 0
    assert "+ AlAd n=3 H=16 r=4" in capsys.readouterr().out
    report = read_latency(tmp_path / "results" / "latency-lean.json")
    assert report["grid"] == str(tiny_grid) and report["hidden"] is None
    rows = report["rows"]
    compressed, large = (data["compressed"][0], data["large"])
    assert [(r["model"], r["window"], r.get("hidden"), r.get("rank")) for r in rows] == [
        (large, None, None, None),
        (compressed, None, None, None),
        (compressed, 3, 16, None),
        (compressed, 3, 16, 4),
        (compressed, 3, 8, None),
    ]
    alone = rows[1]
    for r in rows[2:]:
        assert r["overhead"] == pytest.approx(r["ms_per_batch"] / alone["ms_per_batch"])
        shape = (32, 48, 3, r["hidden"], r["rank"])  # D_C=32, D_L=48
        assert r["params"] - alone["params"] == AlignmentAdapter.parameter_count(*shape)


def test_bench_latency_refuses_a_rank_that_is_not_lower_rank(tiny_models, tmp_path, capsys):
    compressed, large = tiny_models
    argv = ["bench", "latency", "--large", str(large), "--compressed", str(compressed), "--k", "1"]
    argv += ["--windows", "1", "--hidden", "64", "--rank", "32", "--out", str(tmp_path / "l.json")]
    assert main(argv) == 2
    assert "adapter.rank=32 is not lower-rank" in capsys.readouterr().err
    assert not (tmp_path / "l.json").exists()


def test_bench_latency_times_each_model_under_each_runtime(tiny_models, tmp_path, capsys):
    """--runtime torch,onnx,onnx-int8: every model under every runtime, in one alternating round;
    ONNX rows carry their speed-up over the same model and over M_L in torch. A PyTorch-int8
    M_C has no ONNX graph of its own: torch rows only."""
    import torch

    compressed, large = tiny_models
    out = tmp_path / "latency.json"
    report = bench_latency(
        large=str(large),
        compressed=[str(compressed), f"{compressed}:int8"],
        windows=[3],
        batches=[1, 2],
        tokens=16,
        k=1,
        hidden=8,
        out=out,
        runtimes=["onnx-int8", "torch", "onnx"],
    )
    assert read_latency(out) == json.loads(json.dumps(report))
    assert report["runtimes"] == ["torch", "onnx", "onnx-int8"]  # torch first: the reference
    assert report["onnx"]["intra_op_num_threads"] == torch.get_num_threads()
    rows = report["rows"]
    key = {(r["runtime"], r["model"], r["window"], r["batch"]): r for r in rows}
    models = [(str(large), None), (str(compressed), None), (str(compressed), 3)]
    int8 = [(f"{compressed}:int8", None), (f"{compressed}:int8", 3)]
    assert set(key) == {
        (rt, m, w, b)
        for rt in ("torch", "onnx", "onnx-int8")
        for m, w in models + (int8 if rt == "torch" else [])
        for b in (1, 2)
    }
    assert len(rows) == len(key)
    for (rt, model, window, batch), r in key.items():
        torch_row, large_row = (
            key[("torch", model, window, batch)],
            key[(rt, str(large), None, batch)],
        )
        assert r["speedup"] == pytest.approx(large_row["ms_per_batch"] / r["ms_per_batch"])
        assert r["params"] == torch_row["params"] and r["size_pct"] == torch_row["size_pct"]
        if window:
            alone = key[(rt, model, None, batch)]
            assert r["overhead"] == pytest.approx(r["ms_per_batch"] / alone["ms_per_batch"])
        if rt == "torch":
            assert "speedup_vs_torch" not in r and "speedup_vs_large_torch" not in r
            continue
        assert r["speedup_vs_torch"] == pytest.approx(torch_row["ms_per_batch"] / r["ms_per_batch"])
        large_torch = key[("torch", str(large), None, batch)]
        assert r["speedup_vs_large_torch"] == pytest.approx(
            large_torch["ms_per_batch"] / r["ms_per_batch"]
        )
    printed = capsys.readouterr().out
    assert "onnxruntime: intra_op_num_threads = torch's" in printed
    assert "ONNX vs PyTorch fp32" in printed and "x same model" in printed
    assert f"{compressed} + AlAd n=3 H=8" in printed


def test_bench_latency_refuses_unknown_runtimes_and_onnx_beside_a_gpu(
    tiny_models, tmp_path, capsys
):
    import torch

    from alad.bench import check_runtimes
    from alad.config import ConfigError
    from alad.runtime import Runtime

    compressed, large = tiny_models
    argv = ["bench", "latency", "--large", str(large), "--compressed", str(compressed), "--k", "1"]
    assert main([*argv, "--runtime", "torch,tf", "--out", str(tmp_path / "l.json")]) == 2
    err = capsys.readouterr().err
    assert "--runtime torch,tf: expected a comma-separated list of torch, onnx, onnx-int8" in err
    assert not (tmp_path / "l.json").exists()
    # torch on a GPU against onnxruntime on the CPU would compare two machines
    with pytest.raises(ConfigError, match="onnxruntime is timed on the CPU"):
        check_runtimes(["torch", "onnx"], Runtime(torch.device("cuda")))
    assert check_runtimes(["torch"], Runtime(torch.device("cuda"))) == ["torch"]
