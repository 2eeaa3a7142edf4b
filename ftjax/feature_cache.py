"""Feature caching for head-only phases (linear probing): run the frozen backbone once, train the
head on the cached features.

In a phase that trains only the head (every param outside `head/` frozen) the backbone is a
fixed function: frozen modules run in inference mode (batch norm on running averages, no
dropout; see `ftjax.models.layers`). Features are computed once from the *evaluation*
preprocessing, so a cached phase trains with augmentation off: where the training preprocessing
is random or differs from evaluation's (`train_preprocessing_differs`), the caller says so.

Features are found without per-model code: every ftjax model's classifier is the root submodule
`head`, and a Flax method interceptor records what the model feeds it. A root-level `Dropout`
on the head's input stays active in a head-only phase (its parent, the root, holds the
trainable head), so the cached head re-applies it at the same rate; any other dropout that would
stay active makes caching refuse, since the features would not be fixed. Next to the features the
cache keeps the batch keys the task reads (`Task.target_keys`, e.g. `label`).

The cached phase runs through the same `PhaseSteps` code on a one-phase plan whose model is the
head alone (params `{'head': ...}`, same group names, same LR schedule, same optimizer settings,
same task), so its optimizer state has exactly the structure the full model's `PhaseSteps` holds
in that phase and the next phase's `enter_phase` carries it as usual. Batches come in the
training iterator's order (the split's `TrainOrder`, same `{'next_index': k}` state), so a cached
phase sees the same examples at the same steps as an uncached one and the data state after it
is valid for the real iterator. `CachedHeadPhase` is a `ftjax.phase_steps.PhaseRunner`.

Not here: the train and eval steps (`ftjax.steps`, `ftjax.phase_steps`), the batch order
(`ftjax.data.pipeline.TrainOrder`), deciding which phases to cache (`ftjax.train`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import param_groups, phase_steps
from ftjax.data.pipeline import TrainOrder
from ftjax.models import layers
from ftjax.models.base import Model, flat_paths
from ftjax.phase_steps import Metrics, PhaseSteps, TrainState
from ftjax.phases import ResolvedPlan

__all__ = [
    "HEAD",
    "FeatureCacheError",
    "HeadSpec",
    "Features",
    "trainable_outside_head",
    "backbone_groups",
    "train_preprocessing_differs",
    "extract_features",
    "cache_splits",
    "head_model",
    "head_subtree",
    "head_steps",
    "CachedBatches",
    "CachedHeadPhase",
    "run_cached_phase",
]

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
    targets: dict[str, np.ndarray]  # the task's batch keys (e.g. 'label': int32[N]), [N, ...] each
    head: HeadSpec

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {"features": self.features[index], **{k: v[index] for k, v in self.targets.items()}}

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


def backbone_groups(steps: PhaseSteps, index: int) -> tuple[str, ...]:
    """Phase `index`'s trainable groups that hold no head param (a phase that trains the
    backbone on purpose; caching can apply only if the features ignore them all)."""
    members = steps.groups.members
    trainable = steps.plan.phases[index].trainable
    return tuple(g for g in trainable if not any(p.startswith(HEAD + "/") for p in members[g]))


def train_preprocessing_differs(split: Any, examples: int = 4) -> bool:
    """Whether the split's training preprocessing is random (augmentation) or differs from eval's
    on its first `examples` records: then cached features, which come from the evaluation
    preprocessing, train with augmentation off."""
    for i in range(min(examples, split.num_examples)):
        record = split.records[i]
        ref = split.eval_fn(record)
        for seed in (0, 1):
            got = split.train_fn(record, np.random.default_rng(seed))
            if got.keys() != ref.keys() or any(not np.array_equal(got[k], ref[k]) for k in ref):
                return True
    return False


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
    """Raise if the features depend on the params at `paths` (trainable backbone params): if
    they change when those params change by one. Two forward passes, not a `jax.jvp`: forward
    mode cannot pass the custom-VJP kernels of `ftjax.ops` (the depthwise conv), and features
    that ignore the params come out bitwise the same."""
    variable, fixed = param_groups.split_params(params, frozenset(paths))
    features = jax.jit(lambda v: fn(param_groups.merge_params(v, fixed), model_state, inputs))
    moved = jax.tree.map(lambda x: x + jnp.ones_like(x), variable)
    if not np.array_equal(features(variable), features(moved), equal_nan=True):
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
    target_keys: tuple[str, ...],
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, HeadSpec]:
    """(features, targets, mask, head spec) for every row of `batches`, padding rows included."""
    extra = trainable_outside_head(params, frozen)
    found: list[HeadSpec] = []
    fn = jax.jit(_features_fn(model, frozen, found))
    feats, masks = [], []
    targets: dict[str, list[np.ndarray]] = {k: [] for k in target_keys}
    for batch in batches:
        inputs = {k: batch[k] for k in model.input_keys if k in batch}
        if extra and not feats:
            _check_features_ignore(
                _features_fn(model, frozen, None), params, model_state, inputs, extra
            )
        out = fn(params, model_state, inputs)
        feats.append(out)  # fetched after the loop, so the next batch is dispatched meanwhile
        for k in target_keys:
            targets[k].append(np.asarray(batch[k]))
        rows = len(next(iter(inputs.values())))
        masks.append(np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(rows, bool))
    if not feats:
        raise FeatureCacheError("no batches to extract features from; the split is empty")
    return (
        np.concatenate(jax.device_get(feats)),
        {k: np.concatenate(v) for k, v in targets.items()},
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
    target_keys: tuple[str, ...],
) -> Features:
    """What `model` feeds its head for every real row of `batches` (rows with batch['mask'] False
    are dropped), with the batches' `target_keys` (a task's `target_keys`) alongside.

    `frozen` is the phase's frozen set: every param outside `head/`, except params the features
    provably do not depend on (checked on the first batch). One jitted forward
    pass, compiled once per distinct batch shape; the head's output is unused and XLA drops it.
    """
    feats, targets, mask, spec = _extract(model, params, model_state, batches, frozen, target_keys)
    return Features(feats[mask], {k: v[mask] for k, v in targets.items()}, spec)


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
    steps: PhaseSteps,
    state: TrainState,
    index: int,
    splits: Mapping[str, Any],
    *,
    batch_size: int,
    names: tuple[str, ...] = ("train", "validation"),
) -> dict[str, Features]:
    """Features of the whole of `splits[name]`, in split order, for phase `index` of `steps`.

    The phase must be head-only. Features come from the evaluation preprocessing (augmentation
    off; see `train_preprocessing_differs`). Each process computes its share of the rows and, on
    several processes, all of them are gathered everywhere (training batches draw from the whole
    split). `batch_size` is the global extraction batch.
    """
    if steps.task.output_level != "example":
        raise FeatureCacheError(
            f"the {steps.task.name} task's head reads every token's hidden state, which differ in "
            "length from batch to batch; cached features are for example-level heads"
        )
    frozen = steps.frozen_paths(index)
    trainable_outside_head(state.params, frozen)
    return {name: _split_features(steps, state, splits[name], frozen, batch_size) for name in names}


def _split_features(
    steps: PhaseSteps, state: TrainState, split: Any, frozen: frozenset[str], batch_size: int
) -> Features:
    feats, targets, mask, spec = _extract(
        steps.model,
        state.params,
        state.model_state,
        split.eval_batches(batch_size),
        frozen,
        steps.task.target_keys,
    )
    per_process = batch_size // jax.process_count()
    feats, mask = (_in_eval_order(x, per_process) for x in (feats, mask))
    targets = {k: _in_eval_order(v, per_process) for k, v in targets.items()}
    to_split_order = np.argsort(split.eval_order)  # eval batches may run sorted by length
    return Features(
        feats[mask][to_split_order],
        {k: v[mask][to_split_order] for k, v in targets.items()},
        spec,
    )


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


def _phase_params(steps: PhaseSteps, index: int, params: Mapping[str, Any]) -> tuple[dict, dict]:
    """(trainable, frozen) params of phase `index`."""
    return param_groups.split_params(params, steps.trainable_paths(index))


def _without_head(model_state: Mapping[str, Any]) -> dict[str, Any]:
    return {col: {k: x for k, x in v.items() if k != HEAD} for col, v in model_state.items()}


def _head_groups(steps: PhaseSteps, index: int) -> tuple[tuple[str, str], ...]:
    """The phase's trainable groups as exact-path patterns: same names, same members."""
    trainable = steps.plan.phases[index].trainable
    return tuple((g, "|".join(re.escape(p) for p in steps.groups.members[g])) for g in trainable)


def head_steps(
    steps: PhaseSteps, index: int, spec: HeadSpec, params: Mapping[str, Any]
) -> PhaseSteps:
    """PhaseSteps training the head on features: phase `index` of `steps` alone, same settings."""
    phase = steps.plan.phases[index]
    patterns = _head_groups(steps, index)
    groups = param_groups.assign_groups(_phase_params(steps, index, params)[0], patterns)
    plan = ResolvedPlan((dataclasses.replace(phase, index=0),), phase.trainable)
    return PhaseSteps(
        head_model(spec, patterns),
        groups,
        plan,
        steps.optim_cfg,
        task=steps.task,
        mesh=steps.mesh,
        partition_rules=steps.partition_rules,
        skip_nonfinite=steps.skip_nonfinite,
    )


# ----------------------------------------------------------------------------- batches


class CachedBatches:
    """Endless training batches of cached features in the training iterator's order.

    `order` is the split's `TrainOrder` for the training batch size and seed (what
    `Split.train_iterator` reads), so batch k holds the same examples as the grain iterator's
    batch k on this process, and the state is the same too: `{'next_index': batches served}`.
    `features` must hold the whole split in split order.
    """

    def __init__(self, features: Features, order: TrainOrder):
        if order.num_examples != len(features):
            raise FeatureCacheError(
                f"the batch order is over {order.num_examples} examples but {len(features)} "
                "are cached; cache the whole training split"
            )
        self.features, self.order = features, order
        self.steps_per_epoch = order.steps_per_epoch
        self._next = 0

    def __iter__(self) -> CachedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self.order.batch_rows(self._next)
        self._next += 1
        return self.features.batch(rows)

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
    """Phase `index` of `steps` (head-only) run on cached features, one step at a time (a
    `ftjax.phase_steps.PhaseRunner`).

    `state` is the full model's TrainState at any step of the phase, holding that phase's optimizer
    state (as the training loop has it after `enter_phase`); `order` is the training split's
    `TrainOrder` and `data_state` the training iterator's state at the same point. The caller's
    `state` is left intact.
    """

    def __init__(
        self,
        steps: PhaseSteps,
        index: int,
        state: TrainState,
        train: Features,
        *,
        order: TrainOrder,
        data_state: Mapping[str, Any] | None = None,
    ):
        self.phase = steps.plan.phases[index]
        trainable_outside_head(state.params, steps.frozen_paths(index))
        step = int(state.step)
        if not self.phase.start <= step < self.phase.end:
            raise FeatureCacheError(
                f"state is at step {step}, outside phase {self.phase.name!r} [{self.phase.start}, {self.phase.end})"
            )
        self.steps = head_steps(steps, index, train.head, state.params)
        self._full = state
        self._frozen = _phase_params(steps, index, state.params)[1]
        self._step = step  # host copy: reading state.step would wait for every step
        self.state = self._head_state(state)
        self.batches = CachedBatches(train, order)
        if data_state is not None:
            self.batches.set_state(data_state)

    def _head_state(self, full: TrainState) -> TrainState:
        params, model_state = (
            param_groups.split_params(full.params, self.steps.trainable_paths(0))[0],
            head_subtree(full.model_state),
        )
        shard = self.steps.state_shardings(0, params, model_state)
        expected = jax.tree.structure(self.steps.opt_state_shapes(0, params))
        if jax.tree.structure(full.opt_state) != expected:
            raise FeatureCacheError(
                f"the state's optimizer state does not belong to head-only phase {self.phase.name!r}; call "
                "PhaseSteps.enter_phase for it before running it on cached features"
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
        self.state, metrics = self.steps.train_step(0, self.state, next(self.batches))
        self._step += 1
        return metrics

    def evaluate(self, features: Features, batch_size: int) -> dict[str, float]:
        """The task's metrics of the current head over every cached example once."""
        return phase_steps.evaluate(self.steps, self.state, features.eval_batches(batch_size))

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
    steps: PhaseSteps,
    state: TrainState,
    index: int,
    train: Features,
    *,
    order: TrainOrder,
    data_state: Mapping[str, Any] | None = None,
) -> tuple[TrainState, dict[str, int], list[Metrics]]:
    """Run the rest of head-only phase `index` on cached features.

    Returns the full TrainState at the phase end (step advanced, head trained, backbone arrays
    untouched, the head's optimizer state), the training iterator's state after the phase and the
    per-step metrics.
    """
    runner = CachedHeadPhase(steps, index, state, train, order=order, data_state=data_state)
    history = []
    while not runner.done:
        history.append(runner.step())
    return runner.full_state(), runner.data_state(), history
