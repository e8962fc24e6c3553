"""Resize one image so that its longer edge is `size` pixels (down for a thumbnail, up for an upscale), keeping
the aspect ratio; writes thumbnail.png and result.json to $OUTPUT_DIR.

Resamples on the GPU (torch bicubic with antialiasing) when torch imports and CUDA is visible, else with Pillow's
Lanczos filter on the CPU. Pillow is needed either way (it reads and writes the files): the host's Python may lack
it, and then the task fails with one line saying so.
usage: thumbnail.py PATH --size N (the adapter downloads the task's s3 input and passes its local path)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from _result import torch_cuda, write_result  # a sibling module: see _result.py

OUTPUT = "thumbnail.png"
NO_PILLOW = (
    "thumbnail: Pillow is not installed for this Python ({python}); install it on the GPU host: pip install pillow"
)


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_cpu(image: Any, dims: tuple[int, int]) -> Any:
    from PIL import Image

    return image.resize(dims, Image.Resampling.LANCZOS)


def resize_gpu(torch: Any, image: Any, dims: tuple[int, int]) -> Any:
    import numpy as np  # type: ignore[import-not-found]  # torch's own dependency
    from PIL import Image

    array = np.asarray(image)  # H x W x C, uint8
    tensor = torch.from_numpy(array).to("cuda").permute(2, 0, 1).unsqueeze(0).float()
    out = torch.nn.functional.interpolate(tensor, size=(dims[1], dims[0]), mode="bicubic", antialias=True)
    pixels = out.clamp(0, 255).round().to(torch.uint8).squeeze(0).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, mode=image.mode)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        from PIL import Image, ImageOps
    except ImportError:
        print(NO_PILLOW.format(python=sys.executable), file=sys.stderr)
        return 2
    with Image.open(args.path) as opened:
        source_format = opened.format
        image = ImageOps.exif_transpose(opened)  # upright, as a viewer shows it
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    dims = target_size(image.width, image.height, args.size)
    torch = torch_cuda()
    start = time.perf_counter()
    resized = resize_gpu(torch, image, dims) if torch else resize_cpu(image, dims)
    elapsed = time.perf_counter() - start
    resized.save(os.path.join(os.environ.get("OUTPUT_DIR", "."), OUTPUT), format="PNG", optimize=True)
    device = f"cuda:{torch.cuda.get_device_name(0)}" if torch else "cpu:pillow"
    write_result(
        {
            "output": OUTPUT,
            "source": {"format": source_format, "width": image.width, "height": image.height},
            "width": dims[0],
            "height": dims[1],
            "device": device,
            "elapsed_s": elapsed,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
