"""The tagger's forward pass in ONNX Runtime: export, int8 quantisation, the check, the session.

A saved version directory gets, beside its PyTorch weights, ``model.onnx`` (fp32, exported with
dynamic batch and sequence axes, so any window batch runs) and ``model.int8.onnx`` (weights of its
MatMul/Gemm ops quantised per output channel to 7-bit signed integers; activations stay float and are
quantised per batch at run time: dynamic quantisation). Per channel, because one scale per weight
matrix cost a CoNLL-2003 MiniLM model 1.6 points of entity F1 (0.625 vs PyTorch's 0.641 on 1,000
eng.testa sentences, failing the check); 7 bits (``reduce_range``), because x86 CPUs without VNNI
(AVX2 only, as on our 2-core machines) multiply uint8 by int8 into saturating int16 pairs, which
full-range per-channel weights overflow (word marginals off by up to 0.03 on the tiny test model,
0.001 with 7 bits). Per-channel 7-bit: F1 0.648 on those sentences, at the per-tensor model's speed.
``nerloop_onnx.json`` records the check: on the version's dev set, the int8 model's entity F1 against
the PyTorch model's; only a version whose int8 model is within ``F1_TOLERANCE`` serves
with ONNX Runtime. Everything around the forward pass (windows, stride, Viterbi decoding, span
confidences) is ``Tagger.predict``'s: a session here is only its ``logits`` callable.

Why onnxruntime (with ``torch.onnx.export``) and not ``optimum``: the two wheels need nothing else,
export any ``AutoModelForTokenClassification`` the tagger loads (its inputs are whatever the tokenizer
gives: ``token_type_ids`` or not) and run offline; ``optimum`` adds its own exporter layer pinned to
particular transformers releases. The TorchScript exporter (``dynamo=False``) is used: the dynamo one
needs ``onnxscript`` and is slower to export for the same graph.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .metrics import evaluate
from .spans import Example
from .tagger import Tagger

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CHECK_FILE = "nerloop_onnx.json"
F1_TOLERANCE = 0.005  # 0.5 points of entity F1 (F1 in [0, 1])
INFERENCE_CHOICES = ("auto", "torch", "onnx")
OPSET = 17  # the oldest opset with LayerNormalization: runs on any onnxruntime of the last years

# Texts of different lengths, so the traced example has padding (the mask path is the general one).
_EXAMPLE_TEXTS = ["a b c d e f", "a"]


@dataclass(frozen=True)
class OnnxCheck:
    """Whether a version's int8 model may serve: its dev-set entity F1 next to the PyTorch model's."""

    passed: bool
    reason: str
    torch_dev_f1: float | None
    int8_dev_f1: float | None
    dev_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def export(tagger: Tagger, directory: str | Path) -> tuple[Path, Path]:
    """Write the tagger's model as ``model.onnx`` (fp32) and ``model.int8.onnx`` into ``directory``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = Path(directory)
    batch = tagger.collate(tagger.encode(_EXAMPLE_TEXTS).windows)
    names = list(batch)
    model = tagger.model

    class Logits(torch.nn.Module):  # positional inputs in ``names`` order, one output
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "logits"]}
    fp32, int8 = directory / ONNX_FILE, directory / INT8_FILE
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches: the graph is checked below
            torch.onnx.export(Logits(), tuple(batch[n] for n in names), str(fp32), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    finally:
        model.train(was_training)
    quantiser_log = logging.getLogger()  # quantize_dynamic advises pre-processing on the root logger
    level = quantiser_log.level
    quantiser_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True, reduce_range=True)
    finally:
        quantiser_log.setLevel(level)
    return fp32, int8


class OnnxLogits:
    """An ONNX Runtime session as ``Tagger.predict``'s ``logits``: a collated batch in, float logits out.

    Runs on the CPU with as many intra-op threads as torch uses in this process (a worker's share of
    the cores, ``NERLOOP_TORCH_THREADS``), so the two backends split a machine the same way.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feed = {name: batch[name].cpu().numpy() for name in self.input_names}
        return self.session.run(None, feed)[0]


def check(tagger: Tagger, directory: str | Path, dev: Sequence[Example], torch_f1: float | None = None) -> OnnxCheck:
    """Compare the int8 model in ``directory`` with the tagger on ``dev`` and record it as ``CHECK_FILE``.

    ``torch_f1``: the tagger's dev F1 when the caller has it already (training's evaluation).
    """
    directory = Path(directory)
    if not dev:
        result = OnnxCheck(False, "no dev set to check the int8 model on: serving with PyTorch", torch_f1, None, 0)
    else:
        texts = [e.text for e in dev]
        if torch_f1 is None:
            torch_f1 = evaluate(list(dev), [p.entity_spans for p in tagger.predict(texts)]).f1
        int8 = OnnxLogits(directory / INT8_FILE)
        int8_f1 = evaluate(list(dev), [p.entity_spans for p in tagger.predict(texts, logits=int8)]).f1
        passed = int8_f1 >= torch_f1 - F1_TOLERANCE
        verdict = "within" if passed else "more than"
        reason = (f"int8 dev F1 {int8_f1:.4f} vs PyTorch {torch_f1:.4f}: {verdict} {F1_TOLERANCE * 100:.1f} points"
                  + ("" if passed else "; serving with PyTorch"))
        result = OnnxCheck(passed, reason, torch_f1, int8_f1, len(dev))
    (directory / CHECK_FILE).write_text(json.dumps(result.as_dict(), indent=2))
    return result


def read_check(directory: str | Path) -> OnnxCheck | None:
    """The check recorded in a version directory; None for one saved before ONNX export existed."""
    path = Path(directory) / CHECK_FILE
    if not path.is_file():
        return None
    return OnnxCheck(**json.loads(path.read_text()))


def use_onnx(setting: str, device: torch.device, directory: str | Path) -> bool:
    """Whether to serve the version in ``directory`` with its int8 model under ``NERLOOP_INFERENCE``:
    ``torch`` never; ``onnx`` whenever its check passed; ``auto`` when it passed and the tagger runs on
    the CPU (on CUDA, PyTorch in bf16 is the faster one)."""
    if setting not in INFERENCE_CHOICES:
        raise ValueError(f"NERLOOP_INFERENCE: expected one of {', '.join(INFERENCE_CHOICES)}, got {setting!r}")
    if setting == "torch" or (setting == "auto" and device.type != "cpu"):
        return False
    recorded = read_check(directory)
    return recorded is not None and recorded.passed and (Path(directory) / INT8_FILE).is_file()
