"""The HTTP/JSON API of `saliency serve` (docs/http.md): native routes in protobuf's JSON mapping,
Vertex- and KServe-V1-shaped routes, and the web page's static files, on uvicorn in the gRPC
server's event loop. Every explain goes through the gRPC servicer's core (api/servicer.py)."""
