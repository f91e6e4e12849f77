"""Devices and precision (alad/runtime.py): resolution, clear errors, autocast and loss scaling.

These run on the CPU; a GPU run differs only by `runtime.device` (see README "Scaling up")."""

from __future__ import annotations

import pytest
import torch

from alad.config import ConfigError, load_settings
from alad.runtime import Runtime, resolve_device


def test_auto_picks_what_is_there():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_one_clear_error():
    with pytest.raises(Exception, match=r"runtime.device=cuda:1: no CUDA device is visible"):
        resolve_device("cuda:1")


def test_config_accepts_devices_and_precisions_and_names_a_bad_one():
    s = load_settings(overrides=["runtime.device=cuda:3", "runtime.precision=bf16"])
    assert (s.runtime.device, s.runtime.precision) == ("cuda:3", "bf16")
    with pytest.raises(ConfigError, match=r"runtime\.device"):
        load_settings(overrides=["runtime.device=gpu"])
    with pytest.raises(ConfigError, match=r"runtime\.precision"):
        load_settings(overrides=["runtime.precision=int8"])


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_computes_matmuls_in_the_chosen_dtype(precision, dtype):
    rt = Runtime(torch.device("cpu"), precision)
    layer = torch.nn.Linear(8, 4)
    with rt.autocast():
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype and layer.weight.dtype == torch.float32  # weights stay fp32


def test_fp16_scales_the_loss_and_still_trains():
    rt = Runtime(torch.device("cpu"), "fp16")
    scaler = rt.grad_scaler()
    assert (
        scaler.is_enabled() and not Runtime(torch.device("cpu"), "bf16").grad_scaler().is_enabled()
    )
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        with rt.autocast():
            loss = torch.nn.functional.mse_loss(layer(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_move_places_tensors_and_leaves_other_values():
    rt = Runtime(torch.device("cpu"))
    moved = rt.move({"input_ids": torch.ones(2, 3, dtype=torch.long), "ids": ["a", "b"]})
    assert moved["input_ids"].device.type == "cpu" and moved["ids"] == ["a", "b"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_phases_train_under_autocast(precision, tiny_settings, tmp_path):
    """The same code path a GPU takes with runtime.precision (here on the CPU's autocast)."""
    from conftest import finetune_settings

    from alad.phases.align import run_alignment
    from alad.phases.finetune import finetune

    s = finetune_settings(tiny_settings, tmp_path, mode="alad-joint", epochs=1)
    s = s.model_copy(update={"runtime": s.runtime.model_copy(update={"precision": precision})})
    aligned = run_alignment(s, "phase1", out=tmp_path / "p1", progress=False)
    assert aligned.after["mse"] > 0 and all(h["train_mse"] > 0 for h in aligned.history)
    result = finetune(s, out=tmp_path / "p3", progress=False)
    assert all(h["train_loss"] > 0 for h in result.history) and 0 <= result.dev["main"] <= 1
