"""The committed stubs are what scripts/gen_protos.py makes from protos/ today (no drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_the_proto(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written, "protoc wrote nothing"
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = ROOT / "service" / relative
        assert committed.exists(), f"{relative} is generated but not committed: run scripts/gen_protos.py"
        assert committed.read_bytes() == path.read_bytes(), f"{relative} is stale: run scripts/gen_protos.py"
