"""A data set with learnable next items, for the sequence and top-N model tests."""

from __future__ import annotations

import numpy as np

from recserve.training.data import InteractionData, make_synthetic_movielens

GROUPS, ITEMS_PER_GROUP, STEPS = 10, 15, 12


def planted_sequences() -> InteractionData:
    """Users in 10 groups; each group walks its own cycle of 15 items, one step per
    interaction, from a random start. The group's items and the next item are learnable;
    popularity is nearly flat."""
    base = make_synthetic_movielens(n_users=200, n_items=GROUPS * ITEMS_PER_GROUP, seed=3)
    rng = np.random.default_rng(7)
    user_ids, item_ids = base.users.user_id, base.items.item_id
    users, items, times = [], [], []
    for u, user in enumerate(user_ids):
        group = u % GROUPS
        start = rng.integers(ITEMS_PER_GROUP)
        steps = (start + np.arange(STEPS)) % ITEMS_PER_GROUP
        users.extend([user] * STEPS)
        items.extend(item_ids[group * ITEMS_PER_GROUP + steps].tolist())
        times.extend((1_000_000 + 100 * u + np.arange(STEPS)).tolist())
    return InteractionData(
        "planted",
        np.array(users),
        np.array(items),
        np.full(len(users), 5.0),
        np.array(times),
        base.users,
        base.items,
    )


# Settings that train the sequence models and the DIN ranker in well under a second on
# the small synthetic data sets of the tests.
SMALL_SEQUENCE = dict(epochs=2, embedding_dim=8, hidden_size=8, max_length=10, num_threads=1)
SMALL_DIN = dict(
    epochs=2,
    embedding_dim=8,
    max_length=10,
    hard_negatives=5,
    random_negatives=3,
    retrieve_n=12,
    blend_steps=20,
    num_threads=1,
)
