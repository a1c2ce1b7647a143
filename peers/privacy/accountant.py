"""How much privacy a peer has spent: Opacus' RDP accountant over the rounds it released a
noised update (sample rate 1: every round, the whole client)."""

from __future__ import annotations

import math

DEFAULT_DELTA = 1e-5
# RDP orders to optimise over: Opacus' defaults start at 1.1, too coarse for the large epsilons
# of many unsampled rounds; finer near 1, wider above.
ALPHAS = [1 + x / 100 for x in range(1, 100)] + [2 + x / 10 for x in range(100)] + list(range(12, 256))


def epsilon_after(rounds: int, noise_multiplier: float, delta: float = DEFAULT_DELTA) -> float:
    """Epsilon (at ``delta``) after ``rounds`` releases with Gaussian noise of this multiplier."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # here: importing Opacus takes a second

    accountant = RDPAccountant()
    # What `rounds` calls of accountant.step(noise_multiplier=..., sample_rate=1.0) leave in its
    # history (it merges equal steps), without the calls.
    accountant.history = [(noise_multiplier, 1.0, rounds)]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


def rounds_within_budget(
    budget: float, noise_multiplier: float, delta: float = DEFAULT_DELTA, limit: int = 100_000
) -> int:
    """The most rounds whose epsilon stays within ``budget`` (epsilon grows with rounds: bisection)."""
    if epsilon_after(1, noise_multiplier, delta) > budget:
        return 0
    low, high = 1, limit
    while low < high:
        mid = (low + high + 1) // 2
        if epsilon_after(mid, noise_multiplier, delta) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


class ClientDPAccountant:
    """One peer's spending in one job: ``spend()`` per released round, refused past the budget."""

    def __init__(self, noise_multiplier: float, budget: float, delta: float = DEFAULT_DELTA):
        self.noise_multiplier = noise_multiplier
        self.budget = budget
        self.delta = delta
        self.rounds = 0

    @property
    def epsilon(self) -> float:
        return epsilon_after(self.rounds, self.noise_multiplier, self.delta)

    def can_spend(self) -> bool:
        """Whether one more release keeps epsilon within the budget (0: no budget set)."""
        return self.budget <= 0 or epsilon_after(self.rounds + 1, self.noise_multiplier, self.delta) <= self.budget

    def spend(self) -> float:
        if not self.can_spend():
            raise ValueError(f"one more round would take epsilon past the budget {self.budget}")
        self.rounds += 1
        return self.epsilon
