"""A training loop that scans a step function in compiled chunks, checkpoints with orbax and resumes.

Every simulation in `spectrax.dynamics` is a pure `step(state, t) -> (state, record)`: `state` is any
pytree of arrays (parameters, optimizer state), `t` the int32 step index, `record` the per-step
quantities its theory talks about (loss, charges, logits). `run_steps` runs it with `jax.lax.scan`
in chunks of `chunk` steps (one compile per chunk length), stacks the records into a trajectory,
and, given a `directory`, saves `(state, trajectory so far)` with an orbax `CheckpointManager` after
every chunk. Calling it again with the same directory and settings resumes from the last saved
chunk and ends with the same numbers as an uninterrupted run; other settings are refused.

Randomness belongs inside `step` as `jax.random.fold_in(key, t)` on a key the step closes over (or
indexes a per-step key array), so a resumed run draws exactly the batches the uninterrupted run would.

A step is compiled once per (step, state shapes): a step that compares equal across calls (a frozen
dataclass holding only static settings, with the run's arrays in the state) reuses one program for
every seed and learning rate; a fresh closure compiles again.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from spectrax.io.orbax import abstract_like

__all__ = ["run_steps", "saved_settings"]

Step = Callable[[Any, jax.Array], tuple[Any, Any]]
_SETTINGS = "spectrax_loop.json"


@functools.partial(jax.jit, static_argnums=0)
def _scan(step: Step, state: Any, ts: jax.Array) -> tuple[Any, Any]:
    return jax.lax.scan(step, state, ts)


def saved_settings(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a checkpointed run in `directory` was started with, or None if there is none."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), _SETTINGS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _claim(directory: str, settings: Mapping[str, Any]) -> None:
    """Record `settings` for a new run in `directory`, or refuse a directory used by other settings."""
    wanted = json.loads(json.dumps(dict(settings), default=str))
    saved = saved_settings(directory)
    if saved is None:
        if os.path.isdir(directory) and os.listdir(directory):
            raise FileExistsError(f"{directory} exists and is not a spectrax training checkpoint; choose a new directory")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, _SETTINGS), "w", encoding="utf-8") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)
    elif saved != wanted:
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ValueError(f"{directory} holds a run with other settings (differ: {', '.join(differ)}); "
                         "use a new directory to start over")


def run_steps(step: Step, state: Any, num_steps: int, *, chunk: int = 1000,
              directory: str | os.PathLike | None = None, settings: Mapping[str, Any] | None = None,
              progress: str | None = None) -> tuple[Any, Any]:
    """Run `num_steps` of `step` from `state`; returns `(final_state, trajectory)`.

    `trajectory` has the structure of one step's record with a leading `(num_steps,)` axis, as
    host numpy arrays. With `directory`, the run is saved there after every `chunk` steps and a
    later call resumes from the newest save; `settings` (JSON-able: the hyperparameters, seed,
    `num_steps`) must match the ones the directory was started with. `progress` names a tqdm bar
    over chunks (None: silent).
    """
    if num_steps < 1 or chunk < 1:
        raise ValueError(f"num_steps and chunk must be >= 1 (got {num_steps}, {chunk})")
    record_shape = jax.eval_shape(step, state, jnp.int32(0))[1]
    # one preallocated host buffer per record leaf: chunks are written in place, saves take a view
    trajectory = jax.tree.map(lambda r: np.empty((num_steps, *r.shape), r.dtype), record_shape)
    done = 0
    manager = None
    if directory is not None:
        import orbax.checkpoint as ocp  # heavy, and only needed for checkpointed runs

        directory = os.path.abspath(os.fspath(directory))
        _claim(directory, {"num_steps": num_steps, "chunk": chunk, **dict(settings or {})})
        manager = ocp.CheckpointManager(os.path.join(directory, "steps"),
                                        options=ocp.CheckpointManagerOptions(max_to_keep=2))
        latest = manager.latest_step()
        if latest is not None:
            steps_done = jax.tree.map(lambda r: jax.ShapeDtypeStruct((latest, *r.shape), r.dtype), record_shape)
            target = {"state": abstract_like(state), "trajectory": steps_done}
            saved = manager.restore(latest, args=ocp.args.StandardRestore(target))
            state, done = saved["state"], int(latest)
            jax.tree.map(lambda dst, src: dst.__setitem__(slice(0, done), np.asarray(src)), trajectory,
                         saved["trajectory"])
    bar = tqdm(total=num_steps, initial=done, desc=progress, disable=progress is None, unit="step")
    try:
        while done < num_steps:
            n = min(chunk, num_steps - done)
            state, records = _scan(step, state, jnp.arange(done, done + n, dtype=jnp.int32))
            jax.tree.map(lambda dst, src: dst.__setitem__(slice(done, done + n), np.asarray(src)), trajectory, records)
            done += n
            bar.update(n)
            if manager is not None:
                so_far = jax.tree.map(lambda a: a[:done], trajectory)
                manager.save(done, args=ocp.args.StandardSave({"state": state, "trajectory": so_far}))
                manager.wait_until_finished()
    finally:
        bar.close()
        if manager is not None:
            manager.close()
    return state, trajectory
