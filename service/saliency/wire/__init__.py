"""The `saliency.v1` wire format without torch: protobuf messages <-> numpy and plain values.

What the Python client needs, and what the server-side codecs (`saliency.api`, the TorchServe
backend) build on, so both sides read and write one format. Imports only protobuf, numpy,
the generated stubs (`saliency.v1`) and `saliency.errors`; a test keeps it that way.

- `tables`: the API's enums <-> the names the rest of saliency uses (methods, dtypes, ...)
- `arrays`: `Tensor` messages <-> numpy arrays
- `types`: the API's value types (targets, predictions, options, quality scores, ...)
- `params`: method parameters -> `MethodRequest` (client side)
- `requests`: requests from plain values; `results`: responses -> plain values with numpy maps
"""
