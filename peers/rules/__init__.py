"""Aggregation rules: pure functions of tensors, one small module per rule.

Every rule has the signature

    aggregate(updates: list[dict[str, Tensor]], weights: list[float] | None = None, **params)
        -> dict[str, Tensor]

and works tensor-name-wise: all updates must have the same names and shapes; the result has
them too, in each tensor's dtype. Each tensor is computed in float32 if it is float32, float16
or bfloat16, in float64 if it is float64 or an integer or boolean buffer (rounded back); a rule
that selects a single update (krum) returns it bit for bit. Errors (empty input, mismatched
names or shapes, NaN/Inf, bad or unknown params) raise ``ValueError``.

=============  ============================================  ===================================
name           rule                                          params
=============  ============================================  ===================================
mean           weighted mean (FedAvg)                        --
median         coordinate-wise median                        --
trimmed_mean   coordinate-wise trimmed mean                  trim (fraction per side or count)
krum           Krum                                          f (required), m=1
multi_krum     multi-Krum                                    f (required), m=n-f
bulyan         Bulyan (repeated Krum + mean near the median) f (required)
norm_clip      clip L2 norm then weighted mean               max_norm (required), reference
clipped_gossip own model + clipped pulls (ClippedGossip)      f=0, tau (adaptive unless given)
=============  ============================================  ===================================

The order-statistic rules (median, trimmed_mean, bulyan) validate ``weights`` but do not use
them; krum/multi_krum weight the selected updates; mean and norm_clip are weighted means;
clipped_gossip treats ``updates[0]`` as the aggregating peer's own model.
"""

from __future__ import annotations

from collections.abc import Callable

from peers.rules import bulyan, clipped_gossip, krum, mean, median, norm_clip, trimmed_mean

Rule = Callable[..., dict]

RULES: dict[str, Rule] = {
    "mean": mean.aggregate,
    "median": median.aggregate,
    "trimmed_mean": trimmed_mean.aggregate,
    "krum": krum.aggregate,
    "multi_krum": krum.multi_krum,
    "bulyan": bulyan.aggregate,
    "norm_clip": norm_clip.aggregate,
    "clipped_gossip": clipped_gossip.aggregate,
}


def get_rule(name: str) -> Rule:
    """The aggregation function called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown aggregation rule {name!r}; known rules: {', '.join(RULES)}") from None


__all__ = ["RULES", "Rule", "get_rule"]
