"""The handler file of the built-in models' archives (`make models`).

TorchServe takes the one class defined in an archive's handler file; the work is done by
`saliency.torchserve.handler`, which `saliency archive` packs as the handler itself.
"""

from saliency.torchserve.handler import SaliencyHandler as _Handler


class SaliencyHandler(_Handler):
    """initialize(context) loads the archive's model once; handle(data, context) answers a batch."""
