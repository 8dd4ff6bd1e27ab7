"""Embeddings cached per encoder on disk (var/embeddings/), so retraining after a few new labels
re-embeds only the new texts. Keyed by the encoder file's hash and the exact text."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from escalation import settings
from escalation.encoder import OnnxEncoder


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def encoder_key(folder: Path) -> str:
    h = hashlib.sha256()
    with open(folder / "model.onnx", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def embed(encoder: OnnxEncoder, texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
    path = (cache_dir or settings.VAR / "embeddings") / f"{encoder_key(encoder.folder)}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        data = np.load(path)
        cached = dict(zip(data["keys"].tolist(), data["vectors"]))
    keys = [_digest(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items())
    if missing:
        vectors = encoder.encode([t for _, t in missing])
        cached.update({k: v for (k, _), v in zip(missing, vectors)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(list(cached)), vectors=np.stack(list(cached.values())))
        tmp.replace(path)
    return np.stack([cached[k] for k in keys]).astype(np.float32)
