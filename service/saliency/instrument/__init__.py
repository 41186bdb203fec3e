"""Instrumentation of torch modules, below the models and the engine: forward hooks that capture
activations and trace module calls (`hooks.py`, the only place hooks are registered), modified
backward rules (guided, deconvnet, rescale, LRP: `relevance.py`), the ReLU / ReLU6 spellings
they recognise (`rectifiers.py`) and the op families each rule covers (`propagation.py`). The
model probe (models/probe.py) and the engine (attribution/) both build on it."""
