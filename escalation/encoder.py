"""The sentence encoder both paths run: ONNX Runtime + a Hugging Face `tokenizers` tokenizer.

Training embeds the corpus with this class and the service embeds requests with it, loaded from the
same files inside the model artifact, so a text gets the same vector offline and online. It needs only
onnxruntime, tokenizers and numpy (no torch): mean pooling over the attention mask, then L2
normalisation, exactly as sentence-transformers' all-MiniLM-L6-v2 pipeline does.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np

ENCODER_FILES = ("model.onnx", "tokenizer.json", "encoder.json")


class OnnxEncoder:
    """Loads `model.onnx`, `tokenizer.json` and `encoder.json` (max_seq_length, dim) from one folder."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        missing = [f for f in ENCODER_FILES if not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(f"encoder folder {folder} lacks {', '.join(missing)}; re-run `escalation train`")
        self.folder = folder
        self.info = json.loads((folder / "encoder.json").read_text())
        self.max_seq_length = int(self.info["max_seq_length"])
        self.dim = int(self.info["dim"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()

        # Each run uses one thread, and a batch runs its texts on `parallel` threads at once (ONNX
        # Runtime releases the GIL). For one short text, two intra-op threads were no faster than
        # one (6.4 ms either way on 2 cores), while two single-threaded runs side by side encode
        # 1.7x more texts a second than one run with two threads. ESCALATION_ENCODER_THREADS overrides.
        self.parallel = max(1, threads or int(os.environ.get("ESCALATION_ENCODER_THREADS", "0")) or os.cpu_count() or 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="encoder") if self.parallel > 1 else None

    @cached_property
    def fingerprint(self) -> str:
        """Two encoders with identical files embed every text identically: the shadow scores its
        challenger from the champion's embeddings when the fingerprints match. Hashed on first use
        (about 65 ms), so loading a model and the decide path never pay for it."""
        digest = hashlib.sha256()
        for name in ENCODER_FILES:
            digest.update((self.folder / name).read_bytes())
        return digest.hexdigest()[:16]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Returns an (n, dim) float32 array of unit vectors, in the order of `texts`.

        Each text runs alone. Dynamic int8 quantisation picks its activation scale from the whole
        input tensor, so a text padded into a batch with other texts gets a slightly different vector
        (cosine down to 0.98 in our measurement) than the same text alone. Running texts one by one
        makes a text's vector independent of what it is batched with, which is what lets training,
        `escalation score` and /classify agree to 1e-6. benchmarks/encoder.py prints what padded
        batches would gain.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        if self._pool is None or len(ids) < 2:
            for i, row in enumerate(ids):
                out[i] = self._encode_one(row)
        else:
            for i, vector in enumerate(self._pool.map(self._encode_one, ids)):
                out[i] = vector
        return out

    def _encode_one(self, ids: list[int]) -> np.ndarray:
        input_ids = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        pooled = self.session.run(None, feeds)[0][0].mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def encode_padded(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Padded batches: faster on many cores, but batch-dependent under int8 (see `encode`).

        Kept for the benchmark that measures what determinism costs; nothing on either path uses it.
        """
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [encodings[i].ids for i in idx]
            width = max(len(b) for b in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, b in enumerate(batch):
                ids[row, : len(b)] = b
                mask[row, : len(b)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out
