"""A few train steps on one batch, for the tests that fine-tune an import or train a model to export."""

import numpy as np

from cxrtrek_jax.model import CXRTrekNet
from cxrtrek_jax.train import checkpointing
from cxrtrek_jax.train import optimizer as opt
from cxrtrek_jax.train import sharding as sh
from cxrtrek_jax.train import step as ts


def train_steps(initial, cfg, batch, mesh, steps, learning_rate=3e-3, warmup_steps=1):
    """(train state after `steps` steps of AdamW on `batch`, each step's loss, the model's split).

    initial: a checkpoint directory (its params are loaded) or a function from the abstract params
    tree to host params. Parameters are sharded over `mesh` by the logical rules."""
    optim = opt.OptimConfig(learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=steps)
    split = ts.split_abstract_model(lambda rngs: CXRTrekNet(cfg, rngs=rngs))
    params = initial(split.abstract_params) if callable(initial) else checkpointing.load_params(initial)
    tx = opt.make_optimizer(optim)
    shardings = ts.state_shardings(split, tx, mesh)
    state = ts.create_train_state(params, tx, shardings)
    step_fn = ts.make_train_step(split, tx, optim, shardings)
    device_batch = sh.put_batch(batch, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step_fn(state, device_batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all(), losses
    return state, losses, split
