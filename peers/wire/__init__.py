"""The weight path, in the order a round uses it: ``format`` (state dicts <-> safetensors bytes,
validated on arrival) on top of ``tensorbytes`` (the strict zero-copy parser and writer),
``compression`` and ``codec`` (what a peer encodes for a neighbour and decodes from one),
``signing`` (Ed25519 node keys), ``exchange`` (signed chunked streams and their reassembly) and
``buffers`` (recycled receive buffers). Importing this package loads nothing: ``signing`` needs
no torch, the others do."""
