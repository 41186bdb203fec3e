"""Backends other than the embedded one (runtime/embedded.py), behind runtime/backend.py's
`Backend` interface: `torchserve` (torchserve.py) runs the same engine inside TorchServe, through
the custom handler in handlers/ (whose work is done by batch.py)."""
