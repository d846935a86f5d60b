"""The omniscient, colluding adversary's step: between a round's replies and the strategy, the malicious clients'
replies are replaced by the update the attack forges from that round's honest updates.

What the step sees is what the threat model (docs/explanation/byzantine.md) grants: the global model the round
sent, every honest update computed this round (all of them, not only those the strategy will receive), the cohort's
size and how many of it are malicious. It does not see the strategy's state, other rounds' updates, or anything of
the clients beyond their replies. It runs in the ServerApp, so it acts alike under simulation, `flwr run` and
deployment. Each malicious reply becomes a dense reply of its own (the same forged update), and its examples and
metrics stay what the client reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, Message

from fedsim.byzantine.vectors import Matrix, flat_size, weights_from
from fedsim.messages.records import record_views, to_record, viewed
from fedsim.server.updates import update_matrix


class Forger(Protocol):
    """An omniscient attack: the update its f malicious clients submit in a cohort of n, from the honest updates
    (a row each), drawing any randomness from `rng`."""

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class Adversary:
    """The attack, its malicious partitions, and the seed its randomness is drawn from with the round."""

    attack: Forger
    malicious: frozenset[int]
    seed: int

    def forge(self, server_round: int, sent: ArrayRecord, replies: dict[int, Message]) -> None:
        """Replace, in place, the replies of the malicious partitions among `replies` with the forged update (the
        honest updates in partition order)."""
        attackers = [p for p in sorted(replies) if p in self.malicious]
        if not attackers:
            return
        start = record_views(sent)
        honest_replies = [replies[p] for p in sorted(replies) if p not in self.malicious]
        if honest_replies:
            honest = update_matrix(honest_replies, start)
            rng = np.random.default_rng([self.seed, 0xAD5, server_round])
            forged = self.attack.forge(honest, len(replies), len(attackers), rng)
        else:  # a cohort of attackers alone has nothing to imitate: they submit the zero update
            forged = np.zeros(flat_size(start))
        record = to_record(list(sent.keys()), weights_from(np.asarray(forged, np.float32), start))
        for p in attackers:  # a record each, over the same bytes (strategies may empty a reply's record)
            replies[p].content["arrays"] = viewed(record)
