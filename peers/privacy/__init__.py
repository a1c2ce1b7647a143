"""Differential privacy for what leaves a peer.

Client-level DP, as Flower's fixed-clipping wrappers do it: each round a peer clips its update
(the trained model minus the model it started the round from) to L2 norm ``clip`` over all its
tensors and adds Gaussian noise of standard deviation ``noise_multiplier * clip`` to every
coordinate before anything is sent (``client_dp.privatize``). Every peer releases its noised
model every round (no sampling), so its privacy loss is the composition of ``rounds`` Gaussian
mechanisms, counted by Opacus' RDP accountant (``accountant``): the peer refuses to train a
round that would take it past the job's epsilon budget, whatever the platform asks.

==============  ==========================================================================
module          role
==============  ==========================================================================
client_dp       clip the update, add calibrated Gaussian noise (a pure function of tensors)
accountant      epsilon after n rounds (Opacus RDP), the rounds a budget allows
dp_sgd          sample-level DP-SGD through Opacus (``dp_level="sample"``): a LocalTrainer
==============  ==========================================================================
"""

# dp_sgd is not imported here: it imports Opacus (a second), which only DP-SGD jobs need.
from peers.privacy.accountant import ClientDPAccountant, epsilon_after, rounds_within_budget
from peers.privacy.client_dp import privatize

__all__ = ["ClientDPAccountant", "epsilon_after", "privatize", "rounds_within_budget"]
