"""Write the web page's bundled photographs (service/saliency/http/static/samples/*.jpg).

The four scikit-image photographs the command line knows (`--sample`), shrunk to at most
MAX_SIDE pixels on the longer side and saved as JPEG so the page ships small files. The output
is committed; run this again only when the list or the size changes.

Usage: python scripts/gen_web_samples.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skimage.data
from PIL import Image

from saliency.cli import SAMPLES  # the photographs `--sample` knows

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "service" / "saliency" / "http" / "static" / "samples"
MAX_SIDE = 512  # the model sees 224x224; 512 keeps the overlays sharp on the page
QUALITY = 85


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SAMPLES:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        path = out / f"{name}.jpg"
        image.save(path, format="JPEG", quality=QUALITY, optimize=True)
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for path in write(args.out):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
