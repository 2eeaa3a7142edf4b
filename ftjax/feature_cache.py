"""Feature caching for head-only phases (linear probing): run the frozen backbone once, train the
head on the cached features.

In a phase that trains only the head (every param outside `head/` frozen) the backbone is a
fixed function: frozen modules run in inference mode (batch norm on running averages, no
dropout; see `ftjax.models.layers`). When the training inputs are also fixed (no random
augmentation) the head sees the same features in every epoch, so computing them once and
training the head on the cache gives the same phase at a fraction of the cost.

Features are found without per-model code: every ftjax model's classifier is the root submodule
`head`, and a Flax method interceptor records what the model feeds it. A root-level `Dropout`
on the head's input stays active in a head-only phase (its parent, the root, holds the
trainable head), so the cached head re-applies it at the same rate; any other dropout that would
stay active makes caching refuse, since the features would not be fixed.

The cached phase runs through the same `Engine` code on a one-phase plan whose model is the head
alone (params `{'head': ...}`, same group names, same LR schedule, same optimizer settings), so
its optimizer state has exactly the structure the full model's Engine holds in that phase and the
next phase's `Engine.enter_phase` carries it as usual. Batches come in the order the grain
training iterator would give them (same seed, same `{'next_index': k}` state), so a cached phase
sees the same examples at the same steps as an uncached one and the data state after it is
valid for the real iterator.

Public API:
  Features, HeadSpec                                    dataclasses
  trainable_outside_head(params, frozen) / check_deterministic(split)
  extract_features(model, params, model_state, batches, *, frozen) -> Features
  cache_splits(engine, state, index, splits, *, batch_size, names) -> {split name: Features}
  head_model(spec, groups) -> Model;  head_subtree(tree) -> {'head': ...}
  head_engine(engine, index, spec, params) -> Engine
  CachedBatches(features, batch_size, *, seed, permutation)  iterator with get_state/set_state
  CachedHeadPhase(engine, index, state, train, *, batch_size, seed, data_state, permutation)
    .step() / .evaluate(features, batch_size) / .full_state() / .data_state() / .done / .current_step
  run_cached_phase(engine, state, index, train, *, batch_size, seed, data_state, permutation) -> (state, data_state, metrics)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import param_groups
from ftjax.data.pipeline import epoch_permutation
from ftjax.models import layers
from ftjax.models.base import Model, flat_paths
from ftjax.phases import ResolvedPlan
from ftjax.step import Engine, Metrics, TrainState

HEAD = "head"


class FeatureCacheError(ValueError):
    """Feature caching does not apply here; the message says why and what to do instead."""


# ----------------------------------------------------------------------------- the captured head


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The model's `head` as found by tracing it.

    module: an unbound copy of the head module. dropout_rate: the rate of the dropout the model
    applies to the head's input while only the head trains (0 if none); dropout_name: that
    dropout's module name when it sits at the root (the cached head gives its own the same name,
    so Flax derives the same dropout masks from the same step RNG). takes_train: whether the
    model passes `train=` to the head.
    """

    module: nn.Module
    dropout_rate: float
    takes_train: bool
    dropout_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Features:
    """Backbone features of a split's real examples (no padding rows), in the split's order."""

    features: np.ndarray  # [N, ...] what the model feeds its head
    labels: np.ndarray  # int32[N]
    head: HeadSpec

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {"features": self.features[index], "label": self.labels[index]}

    def eval_batches(self, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
        """Every example once, the last batch padded (by repeating the last row); 'mask' marks real rows."""
        n = len(self)
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size)
            yield self.batch(np.minimum(rows, n - 1)) | {"mask": rows < n}


class _HeadRecorder:
    """A Flax interceptor recording the head's input and the dropouts active in a head-only phase."""

    def __init__(self, frozen_scopes: frozenset[str]):
        self.frozen_scopes = frozen_scopes
        self.calls: list[tuple[nn.Module, tuple, dict]] = []
        self.dropouts: list[tuple[tuple[str, ...], float, Any]] = []  # (scope path, rate, output)

    def __call__(self, next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or module.scope is None:
            return out
        path = tuple(module.scope.path)
        if path == (HEAD,):
            self.calls.append((module.clone(parent=None, name=None), args, kwargs))
        elif (
            isinstance(module, layers.Dropout)
            and module.rate > 0
            and "/".join(path[:-1]) not in self.frozen_scopes
        ):
            self.dropouts.append((path, module.rate, out))
        return out

    def head_input(self) -> Any:
        if not self.calls:
            raise FeatureCacheError(
                f"the model never calls a root submodule named {HEAD!r}; feature caching needs the classifier "
                f"to be the module `{HEAD}` (param paths {HEAD}/...), as every ftjax model has"
            )
        if len(self.calls) > 1:
            raise FeatureCacheError(
                f"the model calls its {HEAD!r} module {len(self.calls)} times; caching needs exactly one call"
            )
        return self.calls[0][1][0]

    def spec(self) -> HeadSpec:
        module, args, kwargs = self.calls[0]
        if len(args) != 1 or set(kwargs) - {"train"}:
            raise FeatureCacheError(
                f"the model calls {HEAD!r} with {len(args)} positional and {sorted(kwargs)} keyword arguments; "
                "caching needs head(features) or head(features, train=...)"
            )
        head_in = args[0]
        feeding = [d for d in self.dropouts if d[2] is head_in]
        others = ["/".join(d[0]) for d in self.dropouts if d[2] is not head_in]
        if others or len(feeding) > 1:
            raise FeatureCacheError(
                f"dropout at {others or ['/'.join(d[0]) for d in feeding]} stays active while only the head trains, "
                "so the backbone's features are not fixed and cannot be cached; set that dropout rate to 0 or "
                "train without feature caching"
            )
        if not feeding:
            return HeadSpec(module, 0.0, "train" in kwargs)
        path, rate, _ = feeding[0]
        return HeadSpec(module, rate, "train" in kwargs, path[0] if len(path) == 1 else None)


# ----------------------------------------------------------------------------- checks


def trainable_outside_head(params: Mapping[str, Any], frozen: frozenset[str]) -> list[str]:
    """Trainable param paths outside `head/`; raises unless every head param is trainable.

    A cacheable phase trains the head and at most params the features do not depend on (e.g. an
    unused BERT pooler grouped with a mean-pooling head); `extract_features` checks the latter.
    """
    paths = flat_paths(params)
    in_head = lambda p: p.startswith(HEAD + "/")
    if not any(in_head(p) for p in paths):
        raise FeatureCacheError(
            f"the params have no {HEAD!r} subtree; feature caching needs the classifier at {HEAD}/..."
        )
    frozen_head = [p for p in paths if p in frozen and in_head(p)]
    if frozen_head:
        raise FeatureCacheError(
            f"head params {frozen_head[:5]} are frozen in this phase; feature caching needs a "
            "phase that trains the whole head and keeps the backbone frozen"
        )
    return [p for p in paths if p not in frozen and not in_head(p)]


def check_deterministic(split: Any, examples: int = 4) -> None:
    """Raise if the split's training preprocessing is random (augmentation) or differs from eval's.

    Cached features come from the evaluation preprocessing; they stand in for training batches only
    if training would have preprocessed every example the same way.
    """
    for i in range(min(examples, split.num_examples)):
        record = split.records[i]
        ref = split.eval_fn(record)
        for seed in (0, 1):
            got = split.train_fn(record, np.random.default_rng(seed))
            if got.keys() != ref.keys() or any(not np.array_equal(got[k], ref[k]) for k in ref):
                raise FeatureCacheError(
                    "the training split's preprocessing is random or differs from evaluation's (e.g. random "
                    "crops or flips), so features computed once would drop it; turn augmentation off for this "
                    "phase or train without feature caching"
                )


# ----------------------------------------------------------------------------- extraction


def _features_fn(model: Model, frozen: frozenset[str], found: list[HeadSpec] | None) -> Callable:
    def features(params, model_state, inputs):
        recorder = _HeadRecorder(layers.fully_frozen_scopes(flat_paths(params), frozen))
        with nn.intercept_methods(recorder):
            # Inference mode is what a frozen backbone runs in during a head-only train step.
            model.apply(params, model_state, inputs, train=False, frozen=frozen)
        head_in = recorder.head_input()
        if found is not None:
            found.append(recorder.spec())
        return head_in

    return features


def _check_features_ignore(
    fn: Callable, params: Any, model_state: Any, inputs: Any, paths: list[str]
) -> None:
    """Raise if the features depend on the params at `paths` (trainable backbone params)."""
    variable, fixed = param_groups.split_params(params, frozenset(paths))

    def tangent_out(v, dv):
        return jax.jvp(
            lambda v: fn(param_groups.merge_params(v, fixed), model_state, inputs), (v,), (dv,)
        )[1]

    ones = jax.tree.map(jnp.ones_like, variable)
    if np.any(np.asarray(jax.jit(tangent_out)(variable, ones)) != 0):
        raise FeatureCacheError(
            f"backbone params {paths[:5]} are trainable in this phase and the features depend on them, so they "
            "change every step and cannot be cached; cache only phases that train the head alone"
        )


def _extract(
    model: Model,
    params: Any,
    model_state: Any,
    batches: Iterable[Mapping[str, Any]],
    frozen: frozenset[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, HeadSpec]:
    """(features, labels, mask, head spec) for every row of `batches`, padding rows included."""
    extra = trainable_outside_head(params, frozen)
    found: list[HeadSpec] = []
    fn = jax.jit(_features_fn(model, frozen, found))
    feats, labels, masks = [], [], []
    for batch in batches:
        inputs = {k: batch[k] for k in model.input_keys if k in batch}
        if extra and not feats:
            _check_features_ignore(
                _features_fn(model, frozen, None), params, model_state, inputs, extra
            )
        out = fn(params, model_state, inputs)
        feats.append(out)  # fetched after the loop, so the next batch is dispatched meanwhile
        labels.append(np.asarray(batch["label"], np.int32))
        masks.append(
            np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(len(labels[-1]), bool)
        )
    if not feats:
        raise FeatureCacheError("no batches to extract features from; the split is empty")
    return (
        np.concatenate(jax.device_get(feats)),
        np.concatenate(labels),
        np.concatenate(masks),
        found[-1],
    )


def extract_features(
    model: Model,
    params: Mapping[str, Any],
    model_state: Mapping[str, Any],
    batches: Iterable[Mapping[str, Any]],
    *,
    frozen: frozenset[str],
) -> Features:
    """What `model` feeds its head for every real row of `batches` (rows with batch['mask'] False are dropped).

    `frozen` is the phase's frozen set: every param outside `head/`, except params the features
    provably do not depend on (checked on the first batch). One jitted forward
    pass, compiled once per distinct batch shape; the head's output is unused and XLA drops it.
    """
    feats, labels, mask, spec = _extract(model, params, model_state, batches, frozen)
    return Features(feats[mask], labels[mask], spec)


def _in_eval_order(x: np.ndarray, per_process: int) -> np.ndarray:
    """Every process's eval-batch rows (each holds its slice of every global batch) in the split's eval order."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    parts = np.asarray(
        multihost_utils.process_allgather(x, tiled=False)
    )  # [processes, steps * per_process, ...]
    parts = parts.reshape(parts.shape[0], -1, per_process, *x.shape[1:])
    return np.swapaxes(parts, 0, 1).reshape(-1, *x.shape[1:])


def cache_splits(
    engine: Engine,
    state: TrainState,
    index: int,
    splits: Mapping[str, Any],
    *,
    batch_size: int,
    names: tuple[str, ...] = ("train", "validation"),
) -> dict[str, Features]:
    """Features of the whole of `splits[name]`, in split order, for phase `index` of `engine`.

    The phase must be head-only and the train split must preprocess deterministically. Each process
    computes its share of the rows and, on several processes, all of them are gathered everywhere
    (training batches draw from the whole split). `batch_size` is the global extraction batch.
    """
    frozen = engine.frozen_paths(index)
    trainable_outside_head(state.params, frozen)
    out = {}
    for name in names:
        split = splits[name]
        if name == "train":
            check_deterministic(split)
        feats, labels, mask, spec = _extract(
            engine.model, state.params, state.model_state, split.eval_batches(batch_size), frozen
        )
        per_process = batch_size // jax.process_count()
        feats, labels, mask = (_in_eval_order(x, per_process) for x in (feats, labels, mask))
        to_split_order = np.argsort(split.eval_order)  # eval batches may run sorted by length
        out[name] = Features(feats[mask][to_split_order], labels[mask][to_split_order], spec)
    return out


# ----------------------------------------------------------------------------- the head on its own


class _CachedHead(nn.Module):
    """The model's head on cached features, behind the dropout the model applies to its input."""

    head: nn.Module
    dropout_rate: float
    takes_train: bool
    dropout_name: str

    @nn.compact
    def __call__(self, features, *, train: bool = False):
        x = layers.Dropout(self.dropout_rate, name=self.dropout_name)(features, train=train)
        return self.head(x, train=train) if self.takes_train else self.head(x)


def head_model(
    spec: HeadSpec, groups: tuple[tuple[str, str], ...] = ((HEAD, HEAD + "/.*"),)
) -> Model:
    """A Model of the head alone: input key 'features', params `{'head': ...}`, the given groups.

    Its params may also hold other params its phase trains (unused by the head, as they are unused
    by the features): they get the same zero gradients and weight decay as in the full model.
    """
    module = _CachedHead(
        spec.module, spec.dropout_rate, spec.takes_train, spec.dropout_name or "feature_dropout"
    )
    return Model(
        module=module,
        input_keys=("features",),
        layer_groups=tuple(groups),
        head_pattern=HEAD + "/.*",
    )


def head_subtree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """`{'head': tree['head']}` (params), or per collection for model state (batch stats of a head)."""
    if HEAD in tree:
        return {HEAD: tree[HEAD]}
    return {col: {HEAD: v[HEAD]} for col, v in tree.items() if isinstance(v, Mapping) and HEAD in v}


def _phase_params(engine: Engine, index: int, params: Mapping[str, Any]) -> tuple[dict, dict]:
    """(trainable, frozen) params of phase `index`."""
    return param_groups.split_params(params, engine.trainable_paths(index))


def _without_head(model_state: Mapping[str, Any]) -> dict[str, Any]:
    return {col: {k: x for k, x in v.items() if k != HEAD} for col, v in model_state.items()}


def _head_groups(engine: Engine, index: int) -> tuple[tuple[str, str], ...]:
    """The phase's trainable groups as exact-path patterns: same names, same members."""
    trainable = engine.plan.phases[index].trainable
    return tuple((g, "|".join(re.escape(p) for p in engine.groups.members[g])) for g in trainable)


def head_engine(engine: Engine, index: int, spec: HeadSpec, params: Mapping[str, Any]) -> Engine:
    """An Engine training the head on features: phase `index` of `engine` alone, same settings."""
    phase = engine.plan.phases[index]
    patterns = _head_groups(engine, index)
    groups = param_groups.assign_groups(_phase_params(engine, index, params)[0], patterns)
    plan = ResolvedPlan((dataclasses.replace(phase, index=0),), phase.trainable)
    return Engine(
        head_model(spec, patterns),
        groups,
        plan,
        engine.optim_cfg,
        mesh=engine.mesh,
        partition_rules=engine.partition_rules,
        label_smoothing=engine.label_smoothing,
    )


# ----------------------------------------------------------------------------- batches


class CachedBatches:
    """Endless shuffled training batches of cached features, in the grain training iterator's order.

    The order is `Split.train_iterator(batch_size, seed=seed)`'s: each epoch one permutation of
    the split drawn from (seed, epoch), global batch k its positions [k*B, (k+1)*B) (the remainder
    dropped), this process reading its slice of each. The state is the same too:
    `{'next_index': batches served}`. `features` must hold the whole split in split order.
    `permutation(epoch)` gives an epoch's record order when the split's is not the plain seeded
    permutation (`Split.permutation` with length grouping).
    """

    def __init__(
        self,
        features: Features,
        batch_size: int,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        permutation: Callable[[int], np.ndarray] | None = None,
    ):
        if not 0 < batch_size <= len(features) or batch_size % process_count:
            raise FeatureCacheError(
                f"global batch size {batch_size} must be in [1, {len(features)}] (the cached "
                f"examples) and divisible by the process count {process_count}"
            )
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.permutation = permutation or functools.partial(
            epoch_permutation, len(features), batch_size, seed
        )
        self.per_process = batch_size // process_count
        self.offset = process_index * self.per_process
        self.steps_per_epoch = len(features) // batch_size
        self._next = 0
        self._epoch: tuple[int, np.ndarray] | None = None

    def __iter__(self) -> CachedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, k = divmod(self._next, self.steps_per_epoch)
        self._next += 1
        start = k * self.batch_size + self.offset
        return self.features.batch(self._permutation(epoch)[start : start + self.per_process])

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.permutation(epoch))
        return self._epoch[1]

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"next_index"} or int(state["next_index"]) < 0:
            raise FeatureCacheError(
                f"iterator state {dict(state)} is not a training iterator state {{'next_index': k >= 0}}"
            )
        self._next = int(state["next_index"])


# ----------------------------------------------------------------------------- the cached phase


def _copy(tree: Any, shardings: Any) -> Any:
    return jax.device_put(tree, shardings, may_alias=False)


class CachedHeadPhase:
    """Phase `index` of `engine` (head-only) run on cached features, one step at a time.

    `state` is the full model's TrainState at any step of the phase, holding that phase's optimizer
    state (as the training loop has it after `enter_phase`); `data_state` is the training
    iterator's state at the same point. The caller's `state` is left intact.
    """

    def __init__(
        self,
        engine: Engine,
        index: int,
        state: TrainState,
        train: Features,
        *,
        batch_size: int,
        seed: int,
        data_state: Mapping[str, Any] | None = None,
        permutation: Callable[[int], np.ndarray] | None = None,
    ):
        self.phase = engine.plan.phases[index]
        trainable_outside_head(state.params, engine.frozen_paths(index))
        step = int(state.step)
        if not self.phase.start <= step < self.phase.end:
            raise FeatureCacheError(
                f"state is at step {step}, outside phase {self.phase.name!r} [{self.phase.start}, {self.phase.end})"
            )
        self.engine = head_engine(engine, index, train.head, state.params)
        self._full = state
        self._frozen = _phase_params(engine, index, state.params)[1]
        self._step = step  # host copy: reading state.step would wait for every step
        self.state = self._head_state(state)
        self.batches = CachedBatches(
            train,
            batch_size,
            seed=seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            permutation=permutation,
        )
        if data_state is not None:
            self.batches.set_state(data_state)

    def _head_state(self, full: TrainState) -> TrainState:
        params, model_state = (
            param_groups.split_params(full.params, self.engine.trainable_paths(0))[0],
            head_subtree(full.model_state),
        )
        shard = self.engine.state_shardings(0, params, model_state)
        expected = jax.tree.structure(self.engine.opt_state_shapes(0, params))
        if jax.tree.structure(full.opt_state) != expected:
            raise FeatureCacheError(
                f"the state's optimizer state does not belong to head-only phase {self.phase.name!r}; call "
                "Engine.enter_phase for it before running it on cached features"
            )
        return TrainState(
            params=_copy(params, shard.params),
            opt_state=_copy(full.opt_state, shard.opt_state),
            model_state=_copy(model_state, shard.model_state),
            step=_copy(full.step, shard.step),
            rng=_copy(full.rng, shard.rng),
        )

    @property
    def current_step(self) -> int:
        """The global step the next `step()` runs (the loop's step counter)."""
        return self._step

    @property
    def done(self) -> bool:
        return self._step >= self.phase.end

    def step(self) -> Metrics:
        """One training step of the head on the next cached batch."""
        if self.done:
            raise FeatureCacheError(
                f"phase {self.phase.name!r} is over (step {self.phase.end}); start the next phase"
            )
        self.state, metrics = self.engine.train_step(0, self.state, next(self.batches))
        self._step += 1
        return metrics

    def evaluate(self, features: Features, batch_size: int) -> dict[str, float]:
        """Loss and accuracy of the current head over every cached example once."""
        sums = None
        for batch in features.eval_batches(batch_size):
            out = self.engine.eval_step(self.state, batch)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = jax.tree.map(float, jax.device_get(sums))
        return {
            "accuracy": sums["correct"] / sums["count"],
            "loss": sums["loss_sum"] / sums["count"],
            "count": int(sums["count"]),
        }

    def full_state(self) -> TrainState:
        """The full model's TrainState now: the trained head merged into the untouched backbone.

        Its head arrays are copies, so it stays valid after further `step()` calls.
        """
        head = jax.tree.map(jnp.copy, self.state)
        params = param_groups.merge_params(head.params, self._frozen)
        model_state = param_groups.merge_params(
            head.model_state, _without_head(self._full.model_state)
        )
        return self._full.replace(
            params=params, opt_state=head.opt_state, model_state=model_state, step=head.step
        )

    def data_state(self) -> dict[str, int]:
        """The training iterator's state at this point (valid for the grain iterator too)."""
        return self.batches.get_state()


def run_cached_phase(
    engine: Engine,
    state: TrainState,
    index: int,
    train: Features,
    *,
    batch_size: int,
    seed: int,
    data_state: Mapping[str, Any] | None = None,
    permutation: Callable[[int], np.ndarray] | None = None,
) -> tuple[TrainState, dict[str, int], list[Metrics]]:
    """Run the rest of head-only phase `index` on cached features.

    Returns the full TrainState at the phase end (step advanced, head trained, backbone arrays
    untouched, the head's optimizer state), the training iterator's state after the phase and the
    per-step metrics.
    """
    runner = CachedHeadPhase(
        engine,
        index,
        state,
        train,
        batch_size=batch_size,
        seed=seed,
        data_state=data_state,
        permutation=permutation,
    )
    history = []
    while not runner.done:
        history.append(runner.step())
    return runner.full_state(), runner.data_state(), history
