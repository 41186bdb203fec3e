"""A digest of a module's weights: what names one model's numbers wherever they are keyed
(measured chunk sizes, cached explanations, the sanity checks' proof that the served model
was never changed)."""

from __future__ import annotations

import hashlib

from torch import nn


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, values)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
