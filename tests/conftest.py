"""Shared fixtures: tiny models built in-test (no downloads), an isolated cache, offline mode."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "it",
    "his",
    "her",
    "their",
    "city",
    "river",
    "music",
    "film",
    "war",
    "king",
    "queen",
    "science",
    "history",
    "team",
    "game",
    "book",
    "art",
    "born",
    "known",
    "called",
    "made",
    "played",
    "wrote",
    "built",
    "founded",
    "located",
    "large",
    "small",
    "first",
    "new",
    "old",
    "great",
    "north",
    "south",
    "1990",
    "2001",
    "19th",
    ".",
    ",",
    "(",
    ")",
    "'",
    '"',
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<mask>"]


def tiny_vocab() -> dict[str, int]:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = sorted(set(WORDS) | {f"##{c}" for c in chars} | set(chars))
    return {tok: i for i, tok in enumerate(SPECIALS + pieces)}


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_mpnet(folder: Path, hidden: int = 48, layers: int = 2, seed: int = 1) -> Path:
    import torch
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    tok = MPNetTokenizerFast(vocab=tiny_vocab(), do_lower_case=True, unk_token="[UNK]")
    torch.manual_seed(seed)
    cfg = MPNetConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=130,
        pad_token_id=tok.pad_token_id,
    )
    MPNetModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalnum()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + " ." for _ in range(n)]


def interrupt_on_call(real, n: int):
    """`real`, except that its n-th call raises KeyboardInterrupt (a kill at that point).
    `.calls` counts the calls made through it."""
    calls: list[int] = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


def write_conllu(path: Path, n: int, seed: int) -> Path:
    """A CoNLL-U file of `n` random sentences whose words determine their UPOS tags."""
    rng = random.Random(seed)
    pos = {
        "the": "DET",
        "a": "DET",
        "of": "ADP",
        "in": "ADP",
        "and": "CCONJ",
        "is": "AUX",
        "city": "NOUN",
        "river": "NOUN",
        "king": "NOUN",
        "born": "VERB",
        "large": "ADJ",
    }
    out = []
    for s in range(n):
        out.append(f"# sent_id = s{s}")
        for i in range(1, rng.randint(3, 9)):
            w = rng.choice(sorted(pos))
            out.append("\t".join([str(i), w, w, pos[w], "_", "_", "0", "_", "_", "_"]))
        out.append("")
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(compressed: BERT 32-d, large: MPNet 48-d): different architectures, same tokens."""
    root = tmp_path_factory.mktemp("tiny-models")
    return make_tiny_bert(root / "bert"), make_tiny_mpnet(root / "mpnet")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ALAD_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "alad-cache"))
    for key in [k for k in os.environ if k.startswith("ALAD_") and k != "ALAD_CACHE_HOME"]:
        monkeypatch.delenv(key)


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(tiny_sentences(80)) + "\n")
    return path


@pytest.fixture
def tiny_settings(tiny_models, tiny_corpus, tmp_path):
    """The `tiny` profile pointed at the in-test models and corpus."""
    from alad.config import load_settings

    compressed, large = tiny_models
    return load_settings(
        params=None,
        profile="tiny",
        overrides={
            "models": {"compressed": str(compressed), "large": str(large)},
            "phase1": {"corpus": str(tiny_corpus)},
            "phase2": {"corpus": str(tiny_corpus)},
            "cache": {"dir": str(tmp_path / "features")},
            "runs_dir": str(tmp_path / "runs"),
        },
    )


@pytest.fixture
def tiny_grid(tiny_models, tiny_corpus, tmp_path) -> Path:
    """A sweep file: tiny models, POS, modes compressed + alad-frozen, 2 seeds (6 cells)."""
    import yaml

    compressed, large = tiny_models
    grid = {
        "results": str(tmp_path / "results"),
        "runs": str(tmp_path / "runs"),
        "large": str(large),
        "compressed": [str(compressed)],
        "modes": ["compressed", "alad-frozen"],
        "window": 3,
        "seeds": [1, 2],
        "set": {
            "models.max_length": 32,
            "adapter.hidden": 16,
            "phase1.corpus": str(tiny_corpus),
            "phase1.max_texts": 48,
            "phase1.epochs": 1,
            "phase2.epochs": 1,
            "phase3.epochs": 1,
            "phase3.batch_size": 8,
            "cache.dir": str(tmp_path / "features"),
            "tracking.enabled": False,
        },
        "tasks": {
            "pos": {
                "train": str(write_conllu(tmp_path / "t.conllu", 24, 1)),
                "dev": str(write_conllu(tmp_path / "d.conllu", 6, 2)),
                "test": str(write_conllu(tmp_path / "e.conllu", 6, 3)),
            }
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for every flow test (start-up is the slow part)."""
    from prefect.testing.utilities import prefect_test_harness

    # Start-up takes 10-13 s on this 2-core machine; the default 30 s is too tight under load.
    with prefect_test_harness(server_startup_timeout=120):
        yield
