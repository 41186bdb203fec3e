"""Reports and their plots, outside the serving path: `saliency report sanity` and `saliency
report roar` (run on the engine and the quality metrics, written as Markdown, JSON and
matplotlib figures), and the load test's latency chart. Nothing the service runs imports this."""
