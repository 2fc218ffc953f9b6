"""Save each notebook's key figure as a thumbnail for the README (run after executing the notebooks),
and copy the MNIST interpolation GIF that notebook 8's full-mode run wrote into model_visualisation/.

    python tools/make_thumbnails.py

The figures are the PNG outputs the notebooks' own code drew on real data; this only picks one per
notebook and scales it down.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import nbformat
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "model_visualisation"  # where the thumbnails go
NOTEBOOKS = REPO / "notebooks"
# which PNG output (in order of appearance) is each notebook's key figure
KEY_FIGURE = {"01": 0, "02": 0, "03": 0, "04": 0, "05": 3, "06": 2, "07": 3, "08": 0, "09": 3, "10": 4}


def main(width: int = 480) -> None:
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        pngs = [o["data"]["image/png"] for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        index = KEY_FIGURE.get(path.name[:2], 0)
        if index >= len(pngs):
            print(f"{path.name}: no figure {index} (run the notebook first)")
            continue
        image = Image.open(io.BytesIO(base64.b64decode(pngs[index]))).convert("RGB")
        image.thumbnail((width, width * 2))
        out = HERE / f"{path.stem}.png"
        image.save(out, optimize=True)
        print(f"{out.relative_to(HERE.parent)} {image.size}")
    from vqvae_lib.paths import checkpoint_dir

    # the GIF notebook 8 wrote: copied only after its full-mode run, so that the README shows that run's frames
    gif = checkpoint_dir().parent / "interpolations" / "mnist_interpolation.gif"
    if gif.exists():
        shutil.copy(gif, HERE / gif.name)
        print(f"{(HERE / gif.name).relative_to(HERE.parent)} (from notebook 8's run)")
    else:
        print(f"{gif} is missing: run notebook 8 first")


if __name__ == "__main__":
    main()
