"""int8 post-training quantisation, two back ends.

- PyTorch dynamic (`quantize_dynamic_torch`): `torch.ao.quantization.quantize_dynamic` on every Linear
  (MiniLM attention/FFN, fusion, head) with int8 weights, and weight-only 8-bit word-embedding tables
  (`float_qparams_weight_only_qconfig`). Saved with torch.save of the quantised state dict
  (`model.int8.pt`); `load_compressed` rebuilds the float architecture, re-applies the same transform and
  loads it. Convolutions stay float32 in this path.
- ONNX Runtime (`quantize_onnx`): the exported whole-model ONNX graph, after `quant_pre_process`. What is
  quantised, and how, is set by `Int8Options`; the defaults are what measured best on VQA-RAD closed
  questions (docs/benchmarks.md), on validation rows, by agreement with the float model:
  * CNN convolutions: static int8 (QDQ, per-channel symmetric int8 weights, asymmetric uint8
    activations calibrated on real rows). Which convolution blocks are quantised is chosen by a
    sensitivity sweep (`convs="auto"`): each block is quantised alone and its logit error on
    validation rows measured; the largest set of least-sensitive blocks that keeps the agreement with
    the float model's predictions at or above `min_agreement` is kept. Quantising every block except the
    stem and the last 1x1 conv (`convs="all"`) moved 2.5 % of the predictions on VQA-RAD, the first
    depthwise conv alone (large-gain 3x3 filters on the stem's output) 8 %.
  * Transformer (text) MatMuls: dynamic int8 (per-row activation scales computed at run time, per-channel
    weights). Static activation scales moved 5.8 % of the predictions, dynamic 1.4 %. The MatMuls fed by
    a GELU (the second FFN linear: heavy-tailed activations) stay float: static quantisation of those six
    alone moved 5.8 % of the predictions.
  * Embedding tables (Gather on a float initializer): int8 (no measurable change, a third of the size).
  * Fusion and head (Gemm, MatMul under /model/fusion, /model/head): float by default (0.5 % of
    predictions moved for 1.5 MB).

Why not PyTorch static (FX graph mode) for the CNNs: measured on this torch 2.13 CPU build (AVX2, no
AVX-512/VNNI), EfficientNet-Lite0 at 224 px converted with `prepare_fx`/`convert_fx` (SAME-padding convs
rewritten as ZeroPad2d + Conv2d so conv-bn fuse) ran in 827 ms per image with the x86 and 939 ms with the
fbgemm engine, against 61 ms in float32 (quantized::conv2d took 97% of the time); the qnnpack engine ran
91 ms but the features collapsed (cosine 0.08 to the float ones, per-tensor and per-channel weights alike).
ONNX Runtime's int8 kernels run the same network faster than float, so the CNN path uses them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.compress.onnx_export import session
from polymodal.errors import PolymodalError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CONV_MODES = ("auto", "all", "none")
TEXT_MODES = ("dynamic", "static", "float")


def quantize_dynamic_torch(model: nn.Module, embeddings: bool = True) -> nn.Module:
    """A copy of `model` with int8 dynamic Linear layers and (optionally) 8-bit embedding tables."""
    import copy

    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    spec: dict = {nn.Linear: default_dynamic_qconfig}
    if embeddings:
        # Only the word-embedding tables of text encoders (Hugging Face naming): they hold most of a
        # MiniLM's bytes. The quantised kernel needs contiguous indices, which position/token-type ids
        # (sliced buffers) and tabular category columns (cat[:, j]) are not; those tables are small anyway.
        for name, m in model.named_modules():
            if isinstance(m, nn.Embedding) and name.endswith("word_embeddings"):
                spec[name] = float_qparams_weight_only_qconfig
    q = quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec, dtype=torch.qint8)
    for enc in getattr(q, "encoders", {}).values():  # int8 encoders give other features: own cache key
        if hasattr(enc, "cache_id") and any("quantized" in type(m).__module__ for m in enc.modules()):
            enc.cache_id = f"{enc.cache_id}:int8-dynamic"
    return q


@dataclass(frozen=True)
class Int8Options:
    """What `quantize_onnx` quantises and how (see the module docstring for why these defaults).

    per_channel: one weight scale per output channel (per-tensor moved 16 % of VQA-RAD predictions).
    calibration: activation ranges from "minmax", "entropy" or "percentile" (99.999) of the calibration rows.
    convs: "auto" (sensitivity sweep on validation rows), "all" (every conv but each CNN's first and last),
        "none" (convolutions stay float).
    text: transformer MatMuls "dynamic", "static" or "float".
    gelu_float: keep MatMuls fed by a GELU float (transformer FFN output layers).
    dense: quantise the fusion and head layers too.
    exclude: regular expressions (re.search) on ONNX node names kept float, e.g. "_blocks\\.0/".
    min_agreement: convs="auto": the least share of validation rows whose prediction must stay the float one.
    reduce_range: 7-bit weights (for CPUs without VNNI whose u8s8 kernels may saturate).
    """

    per_channel: bool = True
    calibration: str = "minmax"
    convs: str = "auto"
    text: str = "dynamic"
    gelu_float: bool = True
    dense: bool = False
    exclude: tuple[str, ...] = ()
    min_agreement: float = 0.99
    reduce_range: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (("calibration", self.calibration, CALIBRATION_METHODS),
                                     ("convs", self.convs, CONV_MODES), ("text", self.text, TEXT_MODES)):
            if value not in allowed:
                raise PolymodalError(f"int8 option {name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 < self.min_agreement <= 1:
            raise PolymodalError(f"min_agreement must be in (0, 1], got {self.min_agreement}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as e:
                raise PolymodalError(f"exclude pattern {pattern!r} is not a regular expression: {e}") from None

    def to_dict(self) -> dict:
        return {**asdict(self), "exclude": list(self.exclude)}


@dataclass
class Int8Result:
    """The quantised file, which nodes were quantised how, and the sensitivity sweep (convs="auto")."""

    path: Path
    static_nodes: list[str]
    dynamic_nodes: list[str]
    conv_groups: list[str] = field(default_factory=list)  # quantised conv blocks
    float_conv_groups: list[str] = field(default_factory=list)
    sweep: pd.DataFrame | None = None
    validation_agreement: float | None = None

    def summary(self) -> dict:
        out = {"static_nodes": len(self.static_nodes), "dynamic_nodes": len(self.dynamic_nodes),
               "conv_groups_int8": self.conv_groups, "conv_groups_float": self.float_conv_groups}
        if self.validation_agreement is not None:
            out["validation_agreement"] = round(self.validation_agreement, 4)
        return out


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


# --- which node is what --------------------------------------------------------------------------------

DENSE_PREFIXES = ("/model/fusion/", "/model/head/")  # torch.onnx names nodes by module path (FlatModel.model)
GELU_OPS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Tanh"}
ELEMENTWISE = {"Mul", "Add", "Div", "Sub", "Cast", "Identity"}


@dataclass
class GraphParts:
    """Quantisable nodes of a polymodal graph by role (names as in the pre-processed model)."""

    convs: dict[str, list[str]]  # group (conv block) -> conv node names, in graph order
    edge_convs: list[str]  # first and last conv of every CNN
    text_matmuls: list[str]  # MatMul with a constant weight inside an encoder
    gelu_matmuls: list[str]  # the subset fed by a GELU
    dense: list[str]  # Gemm / constant-weight MatMul of fusion and head
    embeddings: list[str]  # Gather on a float initializer


def conv_group(name: str) -> str:
    """A conv's block: the node path up to its first numbered module (`/model/image/_blocks.3`), or itself."""
    m = re.match(r"^(.*?\.\d+)/", name)
    return m.group(1) if m else name


def graph_parts(model) -> GraphParts:
    """Classify the nodes of an ONNX ModelProto by role (by structure, and module path for fusion/head)."""
    init = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def fed_by_gelu(node, depth: int = 6) -> bool:
        """A GELU (Erf/Tanh form or a fused op) within `depth` elementwise ops upstream of the input."""
        frontier = [node.input[0]]
        for _ in range(depth):
            nxt = []
            for t in frontier:
                p = producer.get(t)
                if p is None:
                    continue
                if p.op_type in GELU_OPS:
                    return True
                if p.op_type in ELEMENTWISE:
                    nxt += list(p.input)
            frontier = nxt
        return False

    convs: dict[str, list[str]] = {}
    per_encoder: dict[str, list[str]] = {}
    text, gelu, dense, emb = [], [], [], []
    for n in model.graph.node:
        is_dense = n.name.startswith(DENSE_PREFIXES)
        if n.op_type == "Conv":
            if is_dense:
                dense.append(n.name)
                continue
            convs.setdefault(conv_group(n.name), []).append(n.name)
            per_encoder.setdefault("/".join(n.name.split("/")[:3]), []).append(n.name)
        elif n.op_type == "Gemm" or (n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in init):
            if is_dense:
                dense.append(n.name)
            elif n.op_type == "MatMul":
                text.append(n.name)
                if fed_by_gelu(n):
                    gelu.append(n.name)
            else:
                dense.append(n.name)  # a Gemm inside an encoder (a tabular MLP): small, treated as dense
        elif n.op_type == "Gather" and n.input[0] in init:
            emb.append(n.name)
    edges = [c for cs in per_encoder.values() if len(cs) > 2 for c in (cs[0], cs[-1])]
    return GraphParts(convs, edges, text, gelu, dense, emb)


# --- quantisation ---------------------------------------------------------------------------------------

def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def _copy_metadata(src: Path, dst: Path) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    m = onnx.load(str(dst))
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(dst))


class _Quantizer:
    """Pre-processes once, calibrates once (ranges cached), then writes int8 models for any node selection."""

    def __init__(self, src: Path, calibration: list[dict[str, np.ndarray]], options: Int8Options, tmp: str) -> None:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.options, self.tmp = options, tmp
        self.pre = os.path.join(tmp, "pre.onnx")
        # shape inference + graph optimisation first, as onnxruntime recommends for static quantisation
        quant_pre_process(str(src), self.pre, skip_symbolic_shape=True)  # symbolic inference fails on HF graphs
        graph = onnx.load(self.pre, load_external_data=False)
        self.parts = graph_parts(graph)
        # calibration feeds only the inputs the graph reads: the exporter drops an unused one (the empty
        # categorical block of a numeric-only table), which onnxruntime refuses ("Invalid input name");
        # validation rows go through _run, which filters the same way
        names = {i.name for i in graph.graph.input}
        self.calibration = [{k: v for k, v in f.items() if k in names} for f in calibration]
        self.cache = os.path.join(tmp, "ranges.json")
        self._n = 0

    def candidates(self) -> dict[str, list[str]]:
        """Conv groups that may be quantised (each CNN's first and last conv and user exclusions left out)."""
        ex = set(self.parts.edge_convs)
        out = {g: [c for c in cs if c not in ex and not _excluded(c, self.options.exclude)]
               for g, cs in self.parts.convs.items()}
        return {g: cs for g, cs in out.items() if cs}

    def fixed_nodes(self) -> tuple[list[str], list[str]]:
        """(static, dynamic) nodes besides the convolutions, from the options."""
        o, p = self.options, self.parts
        keep = lambda n: not _excluded(n, o.exclude)  # noqa: E731
        text = [n for n in p.text_matmuls if keep(n) and not (o.gelu_float and n in p.gelu_matmuls)]
        static = [n for n in p.embeddings if keep(n)] + ([n for n in p.dense if keep(n)] if o.dense else [])
        dynamic: list[str] = []
        if o.text == "static":
            static += text
        elif o.text == "dynamic":
            dynamic = text
        return static, dynamic

    def write(self, dst: str | Path, convs: Sequence[str]) -> tuple[list[str], list[str]]:
        """An int8 model at `dst` with `convs` plus the fixed nodes quantised; returns (static, dynamic)."""
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        o = self.options
        static, dynamic = self.fixed_nodes()
        static = static + list(convs)
        current = self.pre
        self._n += 1
        if static:
            out = os.path.join(self.tmp, f"static{self._n}.onnx") if dynamic else str(dst)
            methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
            # Ranges are collected for every Conv/MatMul/Gemm/Gather tensor once and cached, so trials that
            # quantise other node sets reuse them (the calibration pass is most of the cost).
            quantize_static(current, out, _Calibration(self.calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "MatMul", "Gemm", "Gather"], per_channel=o.per_channel,
                            reduce_range=o.reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=static,
                            calibrate_method=methods[o.calibration], calibration_cache_path=self.cache,
                            # activation × activation products (attention scores) stay float
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                           "MatMulConstBOnly": True})
            current = out
        if dynamic:
            with _quiet_requantize_warning():
                quantize_dynamic(current, str(dst), op_types_to_quantize=["MatMul"], nodes_to_quantize=dynamic,
                                 per_channel=o.per_channel, reduce_range=o.reduce_range,
                                 weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        if not static and not dynamic:
            shutil.copyfile(current, dst)
        return static, dynamic


@contextmanager
def _quiet_requantize_warning():
    """onnxruntime warns "Please check if the model is already quantized" whenever a graph holds QDQ nodes;
    here the dynamic pass runs on purpose over the static pass's output (other nodes), so that one warning
    is dropped; every other message still reaches the root logger."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "already quantized" not in record.getMessage()

    f = _Drop()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def _run(path: str | Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    s = session(path, threads=1)
    names = {i.name for i in s.get_inputs()}
    return np.concatenate([s.run(["logits"], {k: v for k, v in f.items() if k in names})[0] for f in feeds])


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows with the same decision: the argmax when there are several logits; with one output
    (a regressor), rows within 1 % of the float outputs' spread."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if a.shape[1] > 1:
        return float((a.argmax(1) == b.argmax(1)).mean())
    return float((np.abs(a - b) <= 0.01 * (b.std() + 1e-12)).mean())


def quantize_onnx(src: str | Path, dst: str | Path, calibration: Iterable[dict[str, np.ndarray]],
                  options: Int8Options | None = None, validation: Sequence[dict[str, np.ndarray]] | None = None,
                  log=print) -> Int8Result:
    """int8 quantisation of an exported polymodal ONNX model (see `Int8Options`); metadata is carried over.

    `calibration`: feed dicts of real rows for the activation ranges. `validation`: feed dicts of other
    rows for `convs="auto"` (needed there only): the sweep compares logits with the float model's.
    """
    options = options or Int8Options()
    src, dst = Path(src), Path(dst)
    calibration = list(calibration)
    if not calibration:
        raise PolymodalError("static int8 quantisation needs calibration rows; none were given")
    if options.convs == "auto" and not validation:
        raise PolymodalError("int8 convs='auto' picks conv blocks on validation rows; none were given "
                             "(give validation rows, or convs='all' / 'none')")
    with tempfile.TemporaryDirectory() as tmp:
        q = _Quantizer(src, calibration, options, tmp)
        groups = q.candidates()
        sweep, agreement, chosen = None, None, []
        if options.convs == "all":
            chosen = list(groups)
        elif options.convs == "auto" and groups:
            chosen, sweep, agreement = _sensitivity_search(q, groups, list(validation), options.min_agreement, log)
        convs = [c for g in chosen for c in groups[g]]
        static, dynamic = q.write(dst, convs)
    if validation and agreement is None:
        agreement = _agreement(_run(dst, list(validation)), _run(src, list(validation)))
    _copy_metadata(src, dst)
    return Int8Result(dst, static, dynamic, chosen, [g for g in groups if g not in chosen], sweep, agreement)


def _sensitivity_search(q: _Quantizer, groups: dict[str, list[str]], validation: list[dict], target: float,
                        log=print) -> tuple[list[str], pd.DataFrame, float]:
    """Quantise each conv group alone (on top of the fixed nodes) and measure its logit error on the
    validation rows; then keep the longest prefix of the least-sensitive groups whose model still agrees
    with the float one on ≥ `target` of the rows (bisection: agreement falls roughly monotonically)."""
    ref = _run(q.pre, validation)
    trial = os.path.join(q.tmp, "trial.onnx")

    def score(groups_on: list[str]) -> tuple[float, float]:
        q.write(trial, [c for g in groups_on for c in groups[g]])
        out = _run(trial, validation)
        return float(np.sqrt(((out - ref) ** 2).mean())), _agreement(out, ref)

    base_rmse, base_agree = score([])
    rows = [{"group": "(none: fixed nodes only)", "logit_rmse": base_rmse, "agreement": base_agree}]
    log(f"  int8 sensitivity: fixed nodes only: agreement {base_agree:.4f}, logit rmse {base_rmse:.4f}")
    for g in groups:
        rmse, agree = score([g])
        rows.append({"group": g, "logit_rmse": rmse, "agreement": agree})
        log(f"  int8 sensitivity: {g}: agreement {agree:.4f}, logit rmse {rmse:.4f}")
    table = pd.DataFrame(rows)
    order = table.iloc[1:].sort_values("logit_rmse", kind="stable")["group"].tolist()
    if base_agree < target:
        log(f"  int8: the non-conv nodes alone agree on {base_agree:.4f} < {target}: convolutions stay float")
        return [], table, base_agree
    cache: dict[int, float] = {0: base_agree}

    def agree_at(k: int) -> float:
        if k not in cache:
            cache[k] = score(order[:k])[1]
            log(f"  int8: {k} least-sensitive conv groups: agreement {cache[k]:.4f}")
        return cache[k]

    lo, hi = 0, len(order)
    if agree_at(hi) >= target:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if agree_at(mid) >= target:
            lo = mid
        else:
            hi = mid
    table["int8"] = table["group"].isin(order[:lo])
    return order[:lo], table, cache[lo]
