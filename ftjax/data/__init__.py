"""ftjax input pipelines: TFDS (offline builders or any catalogue name) or users' own files, read
with grain into fixed-shape numpy batches, sharded per process, resumable mid-epoch.

API (what the training loop calls)::

    from ftjax.data import DataConfig, build_splits
    splits = build_splits(DataConfig(name="rotten_tomatoes", data_dir=...), preprocessing, task,
                          process_index=jax.process_index(), process_count=jax.process_count())
    train = splits["train"]                       # also "validation", "test": ftjax.data.Split
    train.num_examples                            # whole split, all processes
    train.steps_per_epoch(batch_size)             # remainder dropped; batch_size is global
    it = train.train_iterator(batch_size, seed=0) # endless; next(it) -> batch dict
    state = it.get_state(); it.set_state(state)   # exact mid-epoch restore (a small dict)
    for batch in splits["validation"].eval_batches(batch_size): ...  # one pass, batch["mask"]

`preprocessing` comes from the pretrained loader: for text `{"tokenizer_file": path, "max_length": n}`,
for images `{"image_size": n, "mean": (r, g, b), "std": (r, g, b)}` in 0..255 pixel units. A
`task` (`ftjax.tasks`; default: classification over the data's classes) turns records' labels
into the batch's targets. Batches: text 'input_ids', 'attention_mask', 'token_type_ids'
int32[B, L] (a text pair as one sequence with segment ids); images 'image' float32[B, H, W, 3]
(normalised; training images augmented as `data.augment` says); the task's target keys ('label'
int32[B], 'labels' float32[B, K], 'target' float32[B], per-token 'tags' int32[B, L], QA spans);
eval batches add 'mask' bool[B]. B is the per-process share of the global batch size.
`DataConfig` documents the data fields; `load_records` says which task the labels describe.

Offline datasets: 'rotten_tomatoes' (9,180 / 1,021 / 2,551) and 'fashion_mnist' (55,000 / 5,000 /
10,000), prepared into `data_dir` on first use (builders/); 'conll2003', 'conll2003_entity_types'
and 'lee_pairs' read from installed data packages (packaged.py). The build logic is in build.py;
this module is the public surface. Not here: models, training, metrics.
"""

from ftjax.data.build import ExampleFns, build_splits, load_records, model_kind
from ftjax.data.config import AUGMENTATIONS, DataConfig
from ftjax.data.pipeline import Split
from ftjax.data.sources import DatasetSplits

__all__ = [
    "AUGMENTATIONS",
    "DataConfig",
    "DatasetSplits",
    "ExampleFns",
    "Split",
    "build_splits",
    "load_records",
    "model_kind",
]
