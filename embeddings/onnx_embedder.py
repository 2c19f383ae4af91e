"""The default model run by ONNX Runtime: the same vectors as sentence-transformers, faster.

`SentenceTransformer.encode` on one short question costs 8-10 ms here, most of it Python and
torch dispatch around a 22M-parameter model; ONNX Runtime runs the same graph in about 3 ms.
The graph is exported once from the model folder with torch (about a second), checked against
torch's own output, and kept in a cache folder keyed by a hash of the weights, so later starts
need neither torch nor an export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Matrix, l2_normalise
from .sentence import default_model_path

log = logging.getLogger(__name__)

# Bump when the export below changes, so files written by an older export are not reused.
_EXPORT_FORMAT = 1
_OPSET = 17
_BATCH = 64
# The exported graph must reproduce torch's vectors to this cosine, or it is not used.
MIN_EXPORT_COSINE = 0.999
# Int8 weights move vectors: median cosine 0.994 on GPTCache's 988 QQP questions, down to
# 0.966 for a one-word text. Below this bound the quantised graph is refused; its answer
# quality is measured in benchmarks/results/int8/ and stated in the README.
MIN_INT8_COSINE = 0.95
_PROBES = [
    "How do I reset my password?",
    "why was my card declined at the supermarket yesterday evening",
    "Is there a fee for exchanging euros to dollars? What's the rate today?",
    "ok",
]


def _word_pieces(hidden: np.ndarray[Any, Any]) -> Matrix:
    """Unit vectors of one text's tokens, less [CLS] and [SEP] (all of them if that is all)."""
    inner = hidden[1:-1] if len(hidden) > 2 else hidden
    return l2_normalise(inner)


class ExportError(RuntimeError):
    """The model could not be exported, or its export does not reproduce torch's vectors."""


class _ModelSpec:
    """What the sentence-transformers folder says about tokenising and pooling."""

    def __init__(self, path: Path) -> None:
        modules = json.loads((path / "modules.json").read_text())
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or not set(kinds[2:]) <= {"Normalize"}:
            raise ExportError(f"unsupported module pipeline {kinds} in {path}")
        pooling_dir = path / modules[1].get("path", "1_Pooling")
        pooling = json.loads((pooling_dir / "config.json").read_text())
        if pooling.get("pooling_mode_mean_tokens"):
            self.pooling = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        else:
            raise ExportError(f"unsupported pooling {pooling} in {path}")
        config_file = path / "sentence_bert_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        self.max_length = int(config.get("max_seq_length") or 512)
        self.lowercase = bool(config.get("do_lower_case", False))


def _fingerprint(path: Path) -> str:
    """A hash of the files that decide the vectors, so a changed model is exported again."""
    digest = hashlib.blake2b(f"export-{_EXPORT_FORMAT}-opset-{_OPSET}".encode(), digest_size=10)
    for name in sorted(os.listdir(path)):
        file = path / name
        if file.is_file() and file.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            digest.update(name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _export(model_path: Path, target: Path) -> None:
    """Write the transformer of `model_path` as an ONNX graph with dynamic batch and length."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()

    class _Hidden(torch.nn.Module):
        # Keyword arguments: BertModel.forward's positional order changes between releases.
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    sample = tokenizer(["a short sample question"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    # The tracer warns about Python branches on shapes that are fixed for this model; the
    # result is checked against torch's vectors anyway, so the warnings are only noise.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Hidden(model),
            tuple(sample[name] for name in names),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT
        )


class OnnxEmbedder:
    """A sentence-transformers model folder, exported once to ONNX and run by ONNX Runtime.

    Produces the vectors of `SentenceTransformerEmbedder` for the same folder (cosine at least
    0.999, checked on export) and reports the same name, so stored vectors stay valid when the
    backend changes. Raises `ExportError` when the folder cannot be exported; callers fall back
    to the torch backend.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cache_dir: str | Path,
        threads: int = 0,
        quantized: bool = False,
        spin: bool = True,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import onnxruntime
        from tokenizers import Tokenizer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model folder not found: {path}")
        self._spec = _ModelSpec(path)
        self._name = path.name if model_path is not None else "all-MiniLM-L6-v2"
        self.quantized = quantized
        if quantized:
            # Other vectors, another name: a store filled by one backend is re-embedded by the
            # other instead of mixing vectors of both.
            self._name += "-int8"

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self._spec.max_length)
        tokenizer.no_padding()  # padding is done per batch, to that batch's longest text
        self._tokenizer = tokenizer

        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.graph_path = folder / f"{self._name}-{_fingerprint(path)}.onnx"
        self.exported = False
        if not self.graph_path.exists():
            self._export_checked(path)
            self.exported = True

        options = onnxruntime.SessionOptions()
        # ONNX Runtime's own default counts physical cores, one on this kind of VM: measured
        # 4.3 ms per question against 3.4 ms with a thread per CPU.
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # With `spin`, worker threads spin between the graph's many small operators instead
        # of sleeping and being woken for each: one question 4.4 -> 3.7 ms here, one-client
        # lookups over HTTP 6.4 -> 5.5 ms, for 3-6% less throughput at 8 and 32 clients
        # (benchmarks/results/spin-ab.txt). They stop spinning when the call returns, so idle
        # threads don't burn the cores the HTTP server needs between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(self.graph_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a truncated or foreign file: export again, once
            log.warning("cached ONNX graph %s unusable (%s): exporting again", self.graph_path, exc)
            self._export_checked(path)
            self.exported = True
            self._session = onnxruntime.InferenceSession(
                str(self.graph_path), options, providers=["CPUExecutionProvider"]
            )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._dim = int(self._session.get_outputs()[0].shape[-1])
        log.info(
            "embedding model loaded",
            extra={"model": self._name, "dim": self._dim, "backend": "onnxruntime"},
        )

    def _export_checked(self, model_path: Path) -> None:
        """Export to a temporary file, compare with torch, then move into place atomically."""
        tmp = self.graph_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            try:
                _export(model_path, tmp)
            except Exception as exc:
                raise ExportError(f"could not export {model_path} to ONNX: {exc}") from exc
            floor = MIN_EXPORT_COSINE
            if self.quantized:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                full = tmp.with_suffix(".fp32.tmp")
                os.replace(tmp, full)
                try:
                    # Matrix products only: int8 word embeddings hurt short texts the most.
                    quantize_dynamic(
                        full,
                        tmp,
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        op_types_to_quantize=["MatMul"],
                    )
                finally:
                    full.unlink(missing_ok=True)
                floor = MIN_INT8_COSINE
            worst = self._compare_with_torch(model_path, tmp)
            if worst < floor:
                raise ExportError(f"ONNX export differs from torch: min cosine {worst:.6f}")
            os.replace(tmp, self.graph_path)
            log.info("exported %s to %s (min cosine %.7f)", model_path, self.graph_path, worst)
        finally:
            tmp.unlink(missing_ok=True)

    def _compare_with_torch(self, model_path: Path, graph: Path) -> float:
        import onnxruntime

        from .sentence import SentenceTransformerEmbedder

        reference = SentenceTransformerEmbedder(model_path).embed(_PROBES)
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        candidate = self._run(session, inputs, _PROBES)
        return float(np.min(np.sum(reference * candidate, axis=1)))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self._run(self._session, self._inputs, texts)

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        """The vectors of `embed`, and per text the unit vectors of its word pieces in context
        (the model's last layer, without [CLS] and [SEP]), from the same model call."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32), []
        tokens: list[Matrix] = [np.zeros((0, self._dim), dtype=np.float32)] * len(texts)
        return self._run(self._session, self._inputs, texts, tokens), tokens

    def _run(
        self,
        session: Any,
        inputs: list[str],
        texts: Sequence[str],
        tokens: list[Matrix] | None = None,
    ) -> Matrix:
        batch = [text.lower() for text in texts] if self._spec.lowercase else list(texts)
        encodings = self._tokenizer.encode_batch(batch)
        # Texts of similar length share a batch, so little compute goes to padding.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(encodings), 0), dtype=np.float32)
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                enc = encodings[i]
                ids[row, : len(enc.ids)] = enc.ids
                mask[row, : len(enc.ids)] = enc.attention_mask
                types[row, : len(enc.ids)] = enc.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = session.run(None, {name: feed[name] for name in inputs})[0]
            pooled = self._pool(hidden, mask)
            if tokens is not None:
                for row, i in enumerate(chunk):
                    tokens[i] = _word_pieces(hidden[row, : len(encodings[i].ids)])
            if out.shape[1] == 0:
                out = np.empty((len(encodings), pooled.shape[1]), dtype=np.float32)
            out[chunk] = pooled
        return l2_normalise(out)

    def _pool(self, hidden: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> Matrix:
        if self._spec.pooling == "cls":
            first: Matrix = np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
            return first
        weights = mask[..., None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        counts = np.maximum(weights.sum(axis=1), 1e-9)
        mean: Matrix = (summed / counts).astype(np.float32)
        return mean
