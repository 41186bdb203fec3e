"""The Python client needs grpcio, protobuf and numpy only (no torch).

Two checks: `saliency.client` imports with torch blocked, and only modules that the
`saliency-client` distribution (clients/python) ships; and a fresh venv with just that
distribution (and its three dependencies) explains an image against a real service over
gRPC, while `import torch` fails there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tomllib
from PIL import Image

from saliency.client import ExplainerClient, Targets
from service_harness import ServiceThread, png_bytes, with_config

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "service"
CLIENT_PROJECT = ROOT / "clients" / "python"

# Raises on any import of torch, then imports the client and reports the saliency modules
# loaded, by file, relative to the package.
BLOCKED_IMPORT = textwrap.dedent(
    """
    import json, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ImportError(f"torch is blocked in this test (imported: {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    import saliency.client  # noqa: F401
    import saliency.wire.results  # noqa: F401

    loaded = sorted(
        m.__file__.split("saliency/", 1)[1] for n, m in sys.modules.items()
        if n.split(".")[0] == "saliency" and getattr(m, "__file__", None)
    )
    heavy = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "PIL", "scipy", "skimage"))
    print(json.dumps({"loaded": loaded, "heavy": heavy}))
    """
)


def _shipped_files() -> set[str]:
    """Files of the saliency package the client distribution ships, relative to saliency/."""
    config = tomllib.loads((CLIENT_PROJECT / "pyproject.toml").read_text())
    included = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for source, target in included.items():
        assert (CLIENT_PROJECT / source).resolve() == SOURCE / target, (source, target)
    return {target.split("saliency/", 1)[1] for target in included.values()}


def test_the_client_imports_with_torch_blocked_and_only_what_its_distribution_ships():
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    loaded = set(report["loaded"])
    assert {"client.py", "wire/results.py", "v1/explainer_pb2.py"} <= loaded
    assert loaded <= _shipped_files(), sorted(loaded - _shipped_files())


def test_a_torch_import_fails_under_the_blocker():
    """The blocker itself works (else the test above would pass vacuously)."""
    script = BLOCKED_IMPORT.replace("import saliency.client  # noqa: F401", "import torch")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "torch is blocked" in done.stderr


# Runs inside the fresh venv: explain the image, save the maps, and show torch is absent.
VENV_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np
    from saliency.client import ExplainerClient, OutputOptions, Targets

    address, image_path, out = sys.argv[1:4]
    with ExplainerClient(address, timeout=60) as client:
        health = client.health()
        models = [m.name for m in client.list_models()]
        result = client.explain(
            open(image_path, "rb").read(), "tinycnn", {"gradcam": None, "ig": {"n_steps": 8}},
            Targets(top_k=2), OutputOptions(map_dtype="float16"),
        )
    np.savez(out, **{f"{a.method}_{a.target}": a.map for a in result.attributions})
    print(json.dumps({
        "health": health, "models": models, "targets": list(result.targets),
        "labels": [p.label for p in result.predictions],
        "types": sorted({type(a.map).__name__ for a in result.attributions}),
        "torch_spec": importlib.util.find_spec("torch") is not None,
        "modules": sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "PIL", "scipy")),
    }))
    """
)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv with `pip install clients/python` and nothing else (offline, the package index)."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(CLIENT_PROJECT)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return python


@pytest.mark.slow
def test_a_venv_without_torch_explains_over_grpc(client_venv, tmp_path):
    python = client_venv
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True, timeout=120
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "torch" not in names and {"saliency-client", "grpcio", "protobuf", "numpy"} <= names

    rgb = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((64, 48)))
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes(rgb))
    service = ServiceThread(with_config(models=("tinycnn",), http_port=0))
    try:
        out = tmp_path / "maps.npz"
        # No PYTHONPATH: the venv must find saliency in its own site-packages, not in service/.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(
            [str(python), "-c", VENV_SCRIPT, service.address, str(image), str(out)],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # The same call from this interpreter (which has torch) gives the same maps.
        with ExplainerClient(service.address, timeout=60) as client:
            from saliency.client import OutputOptions

            expected = client.explain(
                image.read_bytes(), "tinycnn", {"gradcam": None, "ig": {"n_steps": 8}},
                Targets(top_k=2), OutputOptions(map_dtype="float16"),
            )
    finally:
        service.stop()
    assert report["health"] == "SERVING" and report["models"] == ["tinycnn"]
    assert report["torch_spec"] is False and report["modules"] == []
    assert report["types"] == ["ndarray"] and report["targets"] == list(expected.targets)
    assert report["labels"] == [p.label for p in expected.predictions]
    maps = np.load(out)
    assert sorted(maps.files) == sorted(f"{a.method}_{a.target}" for a in expected.attributions)
    for a in expected.attributions:
        got = maps[f"{a.method}_{a.target}"]
        assert got.dtype == np.float32 and got.shape == (32, 32)
        np.testing.assert_allclose(got, a.map, rtol=1e-3, atol=1e-3 * float(np.abs(a.map).max()) + 1e-8)
