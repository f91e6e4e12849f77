"""Shared fixtures: tiny models built in-test (no downloads), an isolated cache, offline mode."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def tiny_ner_teacher(tiny_models, tmp_path_factory) -> Path:
    """A fine-tuned `large` (tiny MPNet) toy-NER model: a distillation teacher with the labels
    of `finetune_settings`' data (every BIO label of `write_bio`)."""
    return train_tiny_model(tmp_path_factory.mktemp("ner-teacher"), tiny_models, mode="large")


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

    # Start-up takes 10-13 s on this 2-core machine; the default 30 s is too tight under load,
    # and 120 s was too tight with a training beside a niced suite (stop 32): waiting costs
    # nothing when the server is up sooner.
    with prefect_test_harness(server_startup_timeout=300):
        yield


# -- shared builders (tests import these from conftest, never from another test module) --

ENTITY = {"city": "LOC", "river": "LOC", "king": "PER", "queen": "PER", "team": "ORG"}


def write_bio(path, n, seed):
    """Learnable toy NER: ENTITY words are B-x, a following 'north'/'south' is I-x."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    # Every label in a few sentences, so any 80% training slice has the whole label set.
    every = [
        "team\tB-ORG",
        "north\tI-ORG",
        "king\tB-PER",
        "south\tI-PER",
        "city\tB-LOC",
        "north\tI-LOC",
        "the\tO",
        "",
    ]
    lines = every * 6
    for _ in range(n):
        tags_prev = "O"
        for _ in range(rng.randint(3, 10)):
            w = rng.choice(words)
            if w in ENTITY:
                tag = f"B-{ENTITY[w]}"
            elif w in ("north", "south") and tags_prev != "O":
                tag = f"I-{tags_prev[2:]}"
            else:
                tag = "O"
            lines.append(f"{w}\t{tag}")
            tags_prev = tag
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_squad(path, n, seed):
    """Toy SQuAD 2.0: 'who was born in the city ?' -> the PER word; half unanswerable."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        person, place = rng.choice(["king", "queen"]), rng.choice(["city", "river"])
        filler = " ".join(rng.choice(["the", "great", "old", "new", "art"]) for _ in range(8))
        context = f"{filler} the {person} was born in the {place} . {filler}"
        answerable = i % 2 == 0
        question = "who was born in the city ?" if answerable else "who wrote the book ?"
        start = context.index(f"the {person}") + 4
        qa = {
            "id": f"q{i}",
            "question": question,
            "is_impossible": not answerable,
            "answers": [{"text": person, "answer_start": start}] if answerable else [],
        }
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]})
    )
    return path


def finetune_settings(tiny_settings, tmp_path, n_train=60, **phase3):
    train = write_bio(tmp_path / "train.tsv", n_train, 1)
    base = {
        "train": str(train),
        "dev": str(write_bio(tmp_path / "dev.tsv", 12, 2)),
        "test": str(write_bio(tmp_path / "test.tsv", 12, 3)),
        "epochs": 2,
        "lr": 3e-3,
        "max_train_examples": None,
    }
    p3 = tiny_settings.phase3.model_copy(update={**base, **phase3})
    return tiny_settings.model_copy(update={"phase3": p3})


TINY_NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def save_tiny_model(
    root: Path,
    encoder_dir: Path,
    task: str,
    seed: int,
    spec: str | None = None,
    alad=True,
    rank: int | None = None,
) -> Path:
    """A saved model folder: the tiny encoder (or the `spec` int8 one) -> AlAd (unless not
    `alad`: mode "compressed") -> a head with random weights large enough that the tags differ
    from word to word."""
    import torch
    from transformers import AutoTokenizer

    from alad.adapter import AlignmentAdapter
    from alad.aligned_model import AlignedModel, save_model
    from alad.heads import build_head
    from alad.models.catalog import load_encoder, load_hf_encoder

    encoder = load_encoder(spec).model if spec else load_hf_encoder(str(encoder_dir))
    dim = encoder.config.hidden_size
    torch.manual_seed(seed)
    adapter = AlignmentAdapter(dim, 48, window=3, hidden=16, rank=rank) if alad else None
    kind, labels = ("span", []) if task == "qa" else ("token", TINY_NER_LABELS)
    head = build_head(kind, 48 if alad else dim, len(labels) or 2)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    manifest = {
        "task": task, "mode": "alad-frozen" if alad else "compressed", "labels": labels,
        "large": "tiny-mpnet", "compressed": str(encoder_dir), "encoder_name": str(encoder_dir),
        "encoder_spec": spec,
        "max_length": 64 if task != "qa" else 32, "stride": 8, "n_best": 20,
        "max_answer_length": 30, "null_threshold": 0.0,
    }  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    name = f"{task}-{Path(encoder_dir).name}{'-int8' if spec else ''}{'' if alad else '-c'}"
    out = root / f"{name}{f'-r{rank}' if rank else ''}"
    return save_model(AlignedModel(encoder, head, adapter), tokenizer, manifest, out)


def train_tiny_model(
    root: Path, tiny_models: tuple[Path, Path], mode: str = "alad-frozen", epochs: int = 1
) -> Path:
    """Phase 3 (`mode`, `epochs`) of toy NER on the in-test models; returns the saved model
    folder (a `large` one is a distillation teacher of `finetune_settings`' labels)."""
    from alad.config import load_settings
    from alad.phases.finetune import finetune

    compressed, large = tiny_models
    settings = load_settings(
        params=None,
        profile="tiny",
        overrides={
            "models": {"compressed": str(compressed), "large": str(large)},
            "runs_dir": str(root / "runs"),
            "cache": {"dir": str(root / "features")},
            "phase3": {
                "task": "ner",
                "mode": mode,
                "train": str(write_bio(root / "train.tsv", 40, 1)),
                "dev": str(write_bio(root / "dev.tsv", 8, 2)),
                "test": str(write_bio(root / "test.tsv", 8, 3)),
                "epochs": epochs,
                "lr": 3e-3,
            },
        },
    )
    return finetune(settings, out=root / "ner", progress=False).model_dir


def tiny_cli_overrides(
    root: Path, tiny_models: tuple[Path, Path], phase3_epochs: int
) -> tuple[list[str], list[str]]:
    """`--set` values for CLI tests: (the tiny models, corpus, cache and runs under `root`;
    the same + phase 3 on toy NER files)."""
    c, lg = tiny_models
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(40)) + "\n")
    tiny = [
        f"models.compressed={c}",
        f"models.large={lg}",
        f"phase1.corpus={corpus}",
        f"phase2.corpus={corpus}",
        f"cache.dir={root / 'features'}",
        f"runs_dir={root / 'runs'}",
        "phase1.epochs=1",
    ]
    ner = [
        *tiny,
        "phase3.task=ner",
        "phase3.mode=alad-frozen",
        f"phase3.train={write_bio(root / 'train.tsv', 30, 1)}",
        f"phase3.dev={write_bio(root / 'dev.tsv', 8, 2)}",
        f"phase3.test={write_bio(root / 'test.tsv', 8, 3)}",
        f"phase3.epochs={phase3_epochs}",
    ]
    return tiny, ner
