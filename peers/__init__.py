"""Peer side of the DFL platform: training nodes that exchange weights with neighbours.

Nothing in this package may import Django or Channels; peers talk to the platform
only through the message vocabulary in ``peers.protocol`` over a ``Transport``.
"""
