#!/usr/bin/env python3
"""Build the small category-selectivity stimulus set of `topotrain analyze selectivity`.

    python3 scripts/make_stimuli.py OUT_DIR [--per-category 100] [--size 64] [--seed 0]

Writes OUT_DIR/<category>/<category>_NNN.png (8-bit grayscale, SIZE x SIZE)
for the categories faces, nonfaces, words and textures, and OUT_DIR/PROVENANCE.json.
Everything comes from material that installs offline from package registries
(see stimuli/README.md):

* faces, nonfaces: scikit-image's `skimage/data/lfw_subset.npy`, shipped inside
  the scikit-image wheel (100 LFW faces + 100 LFW background patches, 25 x 25).
  The file is read directly, so scikit-image's own imports are not needed.
* words: English words rendered with the DejaVu fonts of Debian's
  fonts-dejavu-core, by Pillow.
* textures: random crops of the brick, grass and gravel photographs shipped
  in the same scikit-image wheel.

Every category is made at LFW's 25 x 25 and up-sampled to SIZE with the same
bicubic filter, so the categories share resolution and blur and a unit's
preference is less likely to be about sharpness alone.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import pathlib
import sys

try:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
except ImportError as err:  # pragma: no cover - exercised by hand
    sys.exit(f"make_stimuli.py needs numpy and Pillow: pip install numpy pillow scikit-image ({err})")

NATIVE = 25
FONT_DIR = pathlib.Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]
WORDS = (
    "the and for are but not you all any can had her was one our out day get has him his how man "
    "new now old see two way who boy did its let put say she too use cat dog sun map pen cup box "
    "red big run sit top hat car bus art sky sea ice arm leg eye ear egg oak owl fox bee ant"
).split()
TEXTURE_SOURCES = ["brick.png", "grass.png", "gravel.png"]


def skimage_data_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-image is not installed: pip install scikit-image (its wheel ships the images)")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_output(native: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(native.astype(np.uint8), mode="L").resize((size, size), Image.BICUBIC)


def lfw(data_dir: pathlib.Path) -> np.ndarray:
    path = data_dir / "lfw_subset.npy"
    if not path.exists():
        sys.exit(f"{path} is missing: reinstall scikit-image from its wheel")
    images = np.load(path)
    if images.shape != (200, NATIVE, NATIVE):
        sys.exit(f"{path} has shape {images.shape}, expected (200, 25, 25)")
    # Stored as float in [0, 1]; the other categories are 8-bit.
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def render_word(word: str, font_path: pathlib.Path, rng: np.random.Generator) -> np.ndarray:
    # Render large, then shrink to 25 x 25, so glyphs are anti-aliased like photos.
    big = 100
    canvas = Image.new("L", (big, big), color=int(rng.integers(150, 230)))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(font_path), size=int(rng.integers(30, 38)))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (big - (right - left)) / 2 - left + rng.uniform(-6, 6)
    y = (big - (bottom - top)) / 2 - top + rng.uniform(-10, 10)
    draw.text((x, y), word, fill=int(rng.integers(0, 60)), font=font)
    return np.asarray(canvas.resize((NATIVE, NATIVE), Image.LANCZOS))


def texture_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(75, 125))
    h, w = photo.shape
    r, c = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    crop = Image.fromarray(photo[r : r + side, c : c + side])
    return np.asarray(crop.resize((NATIVE, NATIVE), Image.LANCZOS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 2 <= args.per_category <= 100:
        sys.exit("--per-category must be between 2 and 100 (LFW's subset has 100 of each)")
    missing = [f for f in FONTS if not (FONT_DIR / f).exists()]
    if missing:
        sys.exit(f"missing fonts {missing} in {FONT_DIR}: apt-get install fonts-dejavu-core")

    rng = np.random.default_rng(args.seed)
    data_dir = skimage_data_dir()
    faces_and_not = lfw(data_dir)
    photos = [np.asarray(Image.open(data_dir / name).convert("L")) for name in TEXTURE_SOURCES]
    n = args.per_category
    categories = {
        "faces": list(faces_and_not[:n]),
        "nonfaces": list(faces_and_not[100 : 100 + n]),
        "words": [render_word(WORDS[i % len(WORDS)], FONT_DIR / FONTS[i % len(FONTS)], rng) for i in range(n)],
        "textures": [texture_crop(photos[i % len(photos)], rng) for i in range(n)],
    }
    for name, images in categories.items():
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, native in enumerate(images):
            to_output(native, args.size).save(folder / f"{name}_{i:03d}.png", optimize=True)
    provenance = {
        "generator": "scripts/make_stimuli.py",
        "command": f"python3 scripts/make_stimuli.py OUT --per-category {n} --size {args.size} --seed {args.seed}",
        "seed": args.seed,
        "size": args.size,
        "per_category": n,
        "versions": {name: package_version(name) for name in ("numpy", "pillow", "scikit-image")},
        "sources": {
            "faces": f"scikit-image wheel skimage/data/lfw_subset.npy [0:{n}] (LFW, Huang et al.)",
            "nonfaces": f"scikit-image wheel skimage/data/lfw_subset.npy [100:{100 + n}] (LFW backgrounds)",
            "words": f"Pillow rendering with {', '.join(FONTS)} from Debian fonts-dejavu-core",
            "textures": f"random crops of scikit-image wheel skimage/data/{{{','.join(TEXTURE_SOURCES)}}}",
        },
    }
    (args.out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"wrote {4 * n} stimuli in {len(categories)} categories to {args.out}")


if __name__ == "__main__":
    main()
