"""A small labelled workspace the AppTests share: blobs imported as a feature set, its map computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def blobs(n_per=70, k=4, dim=24, seed=0):
    """k well-separated Gaussian blobs (shuffled) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (k, dim))
    x = np.concatenate([rng.normal(c, 1.0, (n_per, dim)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(k), n_per)
    order = rng.permutation(x.shape[0])
    return x[order], labels[order]


def blobs_workspace(root: Path, monkeypatch, *, planted_duplicates: int = 0) -> dict:
    """Import `blobs()` with ids and labels into a workspace under `root` (made the current one via
    `monkeypatch`), register it and compute its map.  With `planted_duplicates` = k, the last k
    rows are exact copies of the first k (``env["duplicates"]``: the planted pairs)."""
    from bilaf_core import projection
    from bilaf_core.features import import_embeddings
    from bilaf_core.workspace import Workspace

    x, labels = blobs()
    n = x.shape[0]
    pairs = [(i, n - planted_duplicates + i) for i in range(planted_duplicates)]
    for i, j in pairs:
        x[j], labels[j] = x[i], labels[i]
    np.save(root / "emb.npy", x)
    np.save(root / "labels.npy", labels)
    (root / "ids.txt").write_text("\n".join(f"img/{i:04d}.png" for i in range(x.shape[0])) + "\n")
    monkeypatch.setenv("BILAF_WORKSPACE", str(root / "ws"))
    ws = Workspace(root / "ws")
    path = import_embeddings(root / "emb.npy", ids_path=root / "ids.txt", labels_path=root / "labels.npy",
                             out_dir=Path(ws.features_root) / "blobs")
    fs_id = ws.register_feature_set(path)
    projection.project_feature_set(path)
    return {"root": root, "ws": ws, "fs_id": fs_id, "path": path, "n": x.shape[0], "x": x, "duplicates": pairs}
