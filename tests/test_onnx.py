"""The ONNX Runtime path: export and int8 quantisation of a saved tagger, the dev-set check that gates
serving with it, the fallback to PyTorch, and ``NERLOOP_INFERENCE``'s three values.

Tolerances on word marginals (probabilities in [0, 1]): fp32 ONNX within 1e-5 of PyTorch (the same
arithmetic, reordered), int8 within 0.02 (weights rounded to 1/63 of each output channel's range; measured
about 1e-3 on the tiny model); spans must be exactly PyTorch's.
"""

from __future__ import annotations

import shutil

import numpy as np
import pydantic
import pytest
import torch

from active_learning import onnx_tagger
from active_learning.onnx_tagger import CHECK_FILE, INT8_FILE, ONNX_FILE, OnnxLogits, check, export, read_check, use_onnx
from active_learning.tagger import Tagger
from service.operations.dashboard import serving_note
from service.predictor import LoadedModel, TaggerCache, forward_pass
from service.settings import Settings
from tiny import toy_corpus

FP32_TOLERANCE = 1e-5
INT8_TOLERANCE = 0.02
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    """A copy of the trained tiny tagger's directory with its ONNX files, and the tagger."""
    directory = tmp_path_factory.mktemp("onnx") / "version"
    shutil.copytree(trained_model, directory)
    tagger = Tagger.load(str(directory))
    export(tagger, directory)
    return tagger, directory


def texts() -> list[str]:
    # toy sentences of many lengths, and one longer than the 32-sub-word window (so strided windows)
    return [e.text for e in toy_corpus(80, seed=5)] + [" ".join(["alice went to paris and met bob in oslo"] * 5)]


@pytest.mark.parametrize("name, tolerance", [(ONNX_FILE, FP32_TOLERANCE), (INT8_FILE, INT8_TOLERANCE)])
def test_onnx_models_give_pytorchs_spans_within_the_tolerance_on_marginals(exported, name, tolerance):
    tagger, directory = exported
    reference = tagger.predict(texts())
    got = tagger.predict(texts(), logits=OnnxLogits(directory / name))
    assert any(len(t.words) > tagger.max_length for t in reference)  # the stride path is covered
    assert sum(len(p.spans) for p in reference) > 50
    for ours, theirs in zip(got, reference):
        assert ours.entity_spans == theirs.entity_spans
        np.testing.assert_allclose(ours.marginals, theirs.marginals, atol=tolerance)
        assert [s.score for s in ours.spans] == pytest.approx([s.score for s in theirs.spans], abs=tolerance)


def test_export_has_dynamic_batch_and_sequence_axes_and_the_tokenizers_inputs(exported):
    tagger, directory = exported
    session = OnnxLogits(directory / INT8_FILE)
    assert session.input_names == ["input_ids", "attention_mask", "token_type_ids"]  # BERT's tokenizer gives all three
    for batch_texts in (["bob"], texts()[:33]):
        batch = tagger.collate(tagger.encode(batch_texts).windows)
        assert session(batch).shape == (*batch["input_ids"].shape, len(tagger.tags))


def test_the_check_passes_on_the_dev_set_and_auto_serves_onnx_on_a_cpu(exported):
    tagger, directory = exported
    result = check(tagger, directory, toy_corpus(40, seed=6))
    assert result.passed and result.dev_size == 40
    assert result.int8_dev_f1 >= result.torch_dev_f1 - onnx_tagger.F1_TOLERANCE
    assert read_check(directory) == result
    assert serving_note(result.as_dict()).startswith("ONNX Runtime int8: int8 dev F1")
    loaded = TaggerCache(inference="auto").get(str(directory))
    assert isinstance(loaded, LoadedModel) and loaded.onnx is not None and loaded.onnx.path == directory / INT8_FILE


def test_a_failed_check_falls_back_to_pytorch_and_says_why(exported, tmp_path, monkeypatch):
    tagger, directory = exported
    failing = tmp_path / "failing"
    shutil.copytree(directory, failing)
    monkeypatch.setattr(onnx_tagger, "F1_TOLERANCE", -0.5)  # demands int8 beat PyTorch by 50 points: it cannot
    result = check(tagger, failing, toy_corpus(40, seed=6))
    assert not result.passed and "serving with PyTorch" in result.reason
    assert not use_onnx("onnx", CPU, failing) and not use_onnx("auto", CPU, failing)
    assert TaggerCache(inference="onnx").get(str(failing)).onnx is None
    assert serving_note(result.as_dict()) == f"PyTorch: {result.reason}"  # what the dashboard's versions table says
    assert serving_note(None).startswith("PyTorch")
    no_dev = check(tagger, failing, [])
    assert not no_dev.passed and "no dev set" in no_dev.reason
    (failing / CHECK_FILE).unlink()  # a version saved before ONNX export existed
    assert not use_onnx("onnx", CPU, failing)


def test_the_inference_settings_three_values(exported, monkeypatch):
    _, directory = exported
    check(Tagger.load(str(directory)), directory, toy_corpus(40, seed=6))
    assert [use_onnx(value, CPU, directory) for value in ("torch", "onnx", "auto")] == [False, True, True]
    assert [use_onnx(value, CUDA, directory) for value in ("torch", "onnx", "auto")] == [False, True, False]
    with pytest.raises(ValueError, match="NERLOOP_INFERENCE"):
        use_onnx("int8", CPU, directory)
    monkeypatch.setenv("NERLOOP_INFERENCE", "torch")
    assert Settings().inference == "torch"
    monkeypatch.setenv("NERLOOP_INFERENCE", "fast")
    with pytest.raises(pydantic.ValidationError, match="inference"):
        Settings()
    monkeypatch.delenv("NERLOOP_INFERENCE")
    assert Settings().inference == "auto"
    assert TaggerCache(inference="torch").get(str(directory)).onnx is None


def test_mc_dropout_passes_stay_on_pytorch(exported):
    tagger, directory = exported
    session = OnnxLogits(directory / INT8_FILE)
    assert forward_pass(session, mc_samples=0) is session
    assert forward_pass(session, mc_samples=4) is None and forward_pass(None, mc_samples=0) is None
    with pytest.raises(ValueError, match="embeddings"):
        tagger.predict(["bob"], embeddings=True, logits=session)


def test_a_tagger_with_characters_added_to_its_vocabulary_exports_alike(tiny_encoder, tmp_path):
    """The export takes the grown embedding matrix as it is (Chinese on an English vocabulary)."""
    from tiny import LABELS, toy_chinese_corpus

    tagger = Tagger.load(str(tiny_encoder), labels=LABELS)
    chinese = [e.text for e in toy_chinese_corpus(30, seed=4)]
    assert tagger.add_unknown_characters(chinese)
    export(tagger, tmp_path)
    reference = tagger.predict(chinese)
    got = tagger.predict(chinese, logits=OnnxLogits(tmp_path / ONNX_FILE))
    for ours, theirs in zip(got, reference):
        assert ours.entity_spans == theirs.entity_spans
        np.testing.assert_allclose(ours.marginals, theirs.marginals, atol=FP32_TOLERANCE)
