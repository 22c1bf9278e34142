"""Are a checkpoint's image tokens informative, and how collapsed are they?

    python -m benchmarks.image_features --checkpoint demo_out/run/checkpoints \
        --data demo_out/phantom/cxrtrek.json [--max-studies 200] [--out image_features.json]

For the first image of every study (the current frontal view), the projected image tokens
(`CXRTrekNet.encode_images`, [N tokens, E]) of all studies are split into their common mean vector and
each token's deviation from it; the norms are printed for the checkpoint and for a freshly
initialised model of the same config. Tokens that are one big common vector plus a small per-image
part carry little for the decoder after its RMSNorm. On phantom data (studies carry their ground truth
in `phantom_truth`) a ridge probe from the mean-pooled tokens to the AP/PA view, fitted on the train
split and scored on the other splits, says whether the view is still linearly readable from them.
The decoder's actual use of the images is `val_image_gain` (`cxrtrek_jax.train.image_reliance`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

__all__ = ["token_statistics", "ridge_probe_accuracy", "main"]


def token_statistics(features: np.ndarray) -> dict[str, float]:
    """features float[..., E] (any leading dims: images, tokens): mean token norm, norm of the
    common mean vector, and mean norm of the tokens' deviations from it."""
    flat = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    mean = flat.mean(axis=0)
    return {"token_norm": float(np.linalg.norm(flat, axis=1).mean()),
            "common_mean_norm": float(np.linalg.norm(mean)),
            "deviation_norm": float(np.linalg.norm(flat - mean, axis=1).mean())}


def ridge_probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, ridge: float = 10.0) -> float:
    """Accuracy on the ~train rows of a ridge classifier (targets +-1) fitted on the train rows.

    x float[S, D] (standardised with the train rows' statistics), y bool[S], train bool[S]."""
    if train.all() or not train.any():
        raise ValueError("the probe needs rows on both sides of the train mask")
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(a[train].T @ a[train] + ridge * np.eye(a.shape[1]), a[train].T @ (2.0 * y[train] - 1.0))
    return float(((a[~train] @ w > 0) == y[~train]).mean())


def _first_images(data: Path, size: int, max_studies: int):
    from data_pipeline.files.cxrtrek_json import iter_studies
    from data_pipeline.files.images import load_image, resize_with_pad

    images, views, splits = [], [], []
    for study in iter_studies(data):
        if len(images) >= max_studies:
            break
        images.append(resize_with_pad(load_image(data.parent / study.images[0]), size))
        truth = study.cxrtrek_extras.get("phantom_truth")
        views.append(truth["current"]["acquisition"]["view"] if truth else None)
        splits.append(study.cxrtrek_extras.get("split"))
    return np.stack(images), views, splits


def _encode(model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    import jax.numpy as jnp

    out = [np.asarray(model.encode_images(jnp.asarray(images[i:i + batch])[:, None])) for i in range(0, len(images), batch)]
    return np.concatenate(out)[:, 0]  # [S, N, E]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="CXRTrek JSON (images relative to its folder)")
    parser.add_argument("--max-studies", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from flax import nnx

    from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
    from cxrtrek_jax.model import CXRTrekNet

    loaded = load_checkpoint_model(args.checkpoint)
    images, views, splits = _first_images(Path(args.data), loaded.config.vision.image_size, args.max_studies)
    trained = _encode(nnx.merge(loaded.graphdef, loaded.state), images)
    fresh = _encode(CXRTrekNet(loaded.config, rngs=nnx.Rngs(0)), images)
    result = {"studies": len(images), "trained": token_statistics(trained), "initialised": token_statistics(fresh)}
    if all(v is not None for v in views) and any(s == "train" for s in splits) and any(s != "train" for s in splits):
        train = np.array([s == "train" for s in splits])
        y = np.array([v == "AP" for v in views])
        result["view_probe_accuracy"] = ridge_probe_accuracy(trained.mean(axis=1), y, train)
        result["view_probe_ap_rate"] = float(y[~train].mean())
        result["view_probe_studies"] = int((~train).sum())
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
