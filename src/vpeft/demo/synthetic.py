"""Synthetic VTAB-1K-style tasks for the offline demo (``vpeft synth``).

Every task is written in the real VTAB-1K on-disk layout, so the ordinary VTAB loader reads it::

    <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <root>/<task>/images/<split>/000000.jpg ...   (split in train800, val200, test, train800val200)

Each list line is ``images/<split>/<index>.jpg <label>``. Like the public VTAB-1K generators,
train800val200 is its own folder of copies (train800's images, then val200's, renumbered), so the
loader's content-based union check runs on every demo. Pixels come partly from real images
shipped inside installed packages (scikit-learn's digits and sample photos, scikit-image's
``skimage.data`` photos and LFW subset) and partly from shapes rendered with PIL; nothing touches
the network. ``source`` is a broader labelled set on which the demo pretrains its tiny ViT.

Generation is deterministic: the same arguments give byte-identical files. Each split draws from
its own random stream (seeded by the seed, a stable per-task offset and the split), so changing
the size of one split does not change the images of another.

The tasks' registry (``DEMO_TASKS``, ``SOURCE_TASK``: names, groups, classes) lives in the core,
:mod:`vpeft.data.catalog`, which the pipeline reads without importing this generator; it is
re-exported here under its old names.
"""
from __future__ import annotations

import colorsys
import functools
import importlib.util
import io
import math
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# The registry and the constants that define the tasks' classes (vpeft.data.catalog, the core):
from vpeft.data.catalog import (DEMO_SOURCE as SOURCE_TASK, DEMO_TASKS, SyntheticTask,
                                POSITION_BINS as _POSITION_BINS,
                                SOURCE_COLOURS as _SOURCE_COLOURS,
                                SOURCE_GLYPH_COUNTS as _SOURCE_GLYPH_COUNTS,
                                SOURCE_ORIENTATIONS as _SOURCE_ORIENTATIONS,
                                SOURCE_PHOTOS as _SOURCE_PHOTOS, SOURCE_SHAPES as _SOURCE_SHAPES,
                                TEXTURE_PHOTOS as _TEXTURE_PHOTOS)
from vpeft.io import atomic_dir

__all__ = [
    "DEFAULT_SIZES",
    "DEMO_TASKS",
    "SOURCE_TASK",
    "SPLITS",
    "SyntheticTask",
    "generate_demo",
    "generate_source",
    "generate_task",
]


SPLITS: tuple[str, ...] = ("train800", "val200", "test")
DEFAULT_SIZES: Mapping[str, int] = {"train800": 800, "val200": 200, "test": 400}
_JPEG_QUALITY = 95
_SS = 4  # supersampling factor for rendered shapes: drawn at 4x, box-reduced (anti-aliasing)

# --------------------------------------------------------------------------------------------
# Pixel sources: photos shipped inside scikit-image / scikit-learn (no pooch download needed).
# --------------------------------------------------------------------------------------------

# Photos for the `digits` backgrounds (natural scenes). The `textures` and `source` photos define
# those tasks' classes, so they are in vpeft.data.catalog (_TEXTURE_PHOTOS, _SOURCE_PHOTOS here).
_DIGIT_BACKGROUNDS = ("skimage:coffee", "skimage:rocket", "skimage:astronaut", "skimage:chelsea",
                      "sklearn:china", "sklearn:flower")

_COUNT_SHAPES = ("circle", "square", "triangle")
_SPRITES = ("square", "ellipse", "heart")  # the three dSprites shapes


def _sklearn_file(folder: str, name: str) -> Path | None:
    """A data file shipped in ``sklearn/datasets/<folder>/``, found without importing sklearn.

    ``import sklearn.datasets`` costs ~1.5 s (it pulls in scipy.stats), a tenth of the demo's
    generation budget; the loaders only parse these files. Returns None if the layout differs,
    and callers then fall back to the official loader.
    """
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "datasets" / folder / name
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _photo(ref: str) -> Image.Image:
    """Load a packaged photo (``"skimage:<name>"`` or ``"sklearn:<name>"``) as an RGB image."""
    package, name = ref.split(":", 1)
    try:
        if package == "skimage":
            import skimage.data

            array = np.asarray(getattr(skimage.data, name)())
        elif package == "sklearn":
            path = _sklearn_file("images", f"{name}.jpg")
            if path is not None:
                with Image.open(path) as image:  # what load_sample_image returns, minus imports
                    array = np.asarray(image.convert("RGB"))
            else:
                from sklearn.datasets import load_sample_image

                array = np.asarray(load_sample_image(f"{name}.jpg"))
        else:
            raise ValueError(f"unknown photo package {package!r}")
    except Exception as exc:  # a missing optional file must fail loudly, never download
        raise RuntimeError(f"packaged photo {ref} is not available offline: {exc}") from exc
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    image = Image.fromarray(array)
    return image.convert("RGB")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 8x8 digits as float32 glyphs in [0, 1] and their labels."""
    path = _sklearn_file("data", "digits.csv.gz")
    if path is not None:  # the file load_digits() parses, read the same way
        data = np.loadtxt(path, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    return (images / 16.0).astype(np.float32), target.astype(np.int64)


_MIN_FACE_STD = 8.0  # grey levels; a few of skimage's non-face patches are (nearly) uniform


@functools.lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    """skimage's LFW subset: 200 grey 25x25 images, faces first (100) then non-faces (100)."""
    import skimage.data

    return (np.asarray(skimage.data.lfw_subset()) * 255.0).round().astype(np.uint8)


def _pool(indices: np.ndarray, role: str) -> np.ndarray:
    """Hold out every fifth item for the test split, so test pixels never appear in training."""
    held = np.arange(len(indices)) % 5 == 0
    return indices[held] if role == "test" else indices[~held]


# --------------------------------------------------------------------------------------------
# Small rendering helpers.
# --------------------------------------------------------------------------------------------


def _random_crop(rng: np.random.Generator, photo: Image.Image, size: int, scale: tuple[float, float],
                 rows: tuple[float, float] = (0.0, 1.0)) -> Image.Image:
    """A random square crop of ``photo`` (side ``scale`` x shorter side) resized to ``size``.

    ``rows`` restricts the crop to a horizontal band (fractions of the height), which keeps the
    test crops of a photo apart from the training crops.
    """
    width, height = photo.size
    top, bottom = int(rows[0] * height), int(rows[1] * height)
    side = int(rng.uniform(*scale) * min(width, height))
    side = max(8, min(side, bottom - top, width))
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(top, bottom - side + 1))
    return photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))


def _augment(rng: np.random.Generator, image: Image.Image, *, rot90: bool = True) -> Image.Image:
    """Random flip, rotation by a multiple of 90 degrees (dihedral group) for orientation-free data."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rot90:
        k = int(rng.integers(0, 4))
        if k:
            image = image.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                     Image.Transpose.ROTATE_270)[k - 1])
    return image


def _jitter(rng: np.random.Generator, array: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """Brightness/contrast jitter of a uint8 array, returned as uint8."""
    x = array.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    x = x * rng.uniform(1 - brightness, 1 + brightness)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _contrasting_colour(rng: np.random.Generator, background: Sequence[float],
                        min_distance: float = 120.0) -> tuple[int, int, int]:
    """A random saturated colour at least ``min_distance`` (RGB Euclidean) from ``background``."""
    bg = tuple(float(c) for c in background)
    best, best_d = (255, 255, 255), -1.0
    for _ in range(32):
        colour = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        d = math.dist(colour, bg)  # plain floats: numpy is slow on 3-element arrays
        if d >= min_distance:
            return colour
        if d > best_d:
            best, best_d = colour, d
    return best


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if kind == "square":
        local = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif kind == "triangle":
        local = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif kind == "cross":  # a plus sign, arm half-width 0.3
        w = 0.3
        local = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
                 (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    elif kind == "ellipse":  # 2:1 ellipse like the dSprites one
        local = [(math.cos(t), 0.5 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif kind == "heart":
        ts = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        local = [(16 * math.sin(t) ** 3 / 17,
                  -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
                 for t in ts]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in local]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
                fill: int | tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


@functools.lru_cache(maxsize=8)
def _unit_grid(size: int) -> np.ndarray:
    """Pixel coordinates scaled to [-0.5, 0.5], shape (2, size, size): (y, x)."""
    return np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5


def _gradient_background(rng: np.random.Generator, size: int, colour: Sequence[int],
                         amplitude: float) -> np.ndarray:
    """A flat colour with a gentle linear ramp in a random direction (float32, HxWx3)."""
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = _unit_grid(size)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 * amplitude
    return np.asarray(colour, np.float32)[None, None, :] + ramp[..., None]


def _place_discs(rng: np.random.Generator, radii: np.ndarray, size: float, gap: float,
                 margin: float, tries: int = 64) -> np.ndarray | None:
    """Centres for discs of ``radii`` that keep ``gap`` between each other, or None.

    Rejection sampling, with each disc's candidates drawn as one batch (much faster than one
    scalar draw per try).
    """
    centres = np.empty((0, 2))
    for i, r in enumerate(radii):
        lo, hi = r + margin, size - r - margin
        if hi <= lo:
            return None
        candidates = rng.uniform(lo, hi, size=(tries, 2))
        distances = np.linalg.norm(candidates[:, None, :] - centres[None, :, :], axis=2)
        ok = np.all(distances >= r + radii[:i][None, :] + gap, axis=1)
        if not ok.any():
            return None
        centres = np.vstack([centres, candidates[int(np.argmax(ok))]])
    return centres


# --------------------------------------------------------------------------------------------
# Task renderers: (rng, label, role, size) -> PIL image. role is "train" (train800/val200) or
# "test"; tasks built on real images draw test pixels from held-out items or photo regions.
# --------------------------------------------------------------------------------------------

Renderer = Callable[[np.random.Generator, int, str, int], Image.Image]


def _photo_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A coloured natural-photo crop (float32 HxWx3) with randomly reduced contrast."""
    photo = _photo(_DIGIT_BACKGROUNDS[int(rng.integers(len(_DIGIT_BACKGROUNDS)))])
    crop = np.asarray(_augment(rng, _random_crop(rng, photo, size, (0.15, 0.5)), rot90=False),
                      dtype=np.float32)
    # Flatten the background a little so the digit stays the most salient object.
    mean = crop.mean(axis=(0, 1), keepdims=True)
    return mean + (crop - mean) * rng.uniform(0.5, 1.0)


def _paste_glyph(rng: np.random.Generator, canvas: np.ndarray, glyph: np.ndarray, side: int,
                 x0: int, y0: int, colour: Sequence[float] | None = None) -> None:
    """Alpha-composite an upscaled 8x8 glyph (values in [0, 1]) onto ``canvas`` in place."""
    height, width = canvas.shape[:2]
    gw = max(3, int(side * rng.uniform(0.8, 1.0)))  # mild aspect jitter
    alpha = np.asarray(Image.fromarray(glyph, mode="F").resize((gw, side), Image.Resampling.BILINEAR))
    alpha = np.clip(alpha, 0.0, 1.0)[: height - y0, : width - x0]
    region = canvas[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
    if colour is None:
        # Dark ink on bright regions, bright ink on dark ones: the digit must stay readable.
        luminance = float(region.mean())
        v = rng.uniform(0.0, 0.25) if luminance > 110 else rng.uniform(0.85, 1.0)
        colour = _hsv(rng.random(), rng.uniform(0.0, 0.8), v)
    a = alpha[..., None]
    region[...] = region * (1 - a) + np.asarray(colour, np.float32) * a


def _render_digits(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    images, targets = _digits()
    pool = _pool(np.flatnonzero(targets == label), role)
    glyph = images[int(rng.choice(pool))]
    canvas = _photo_background(rng, size)
    side = max(6, int(rng.uniform(0.5, 0.85) * size))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    _paste_glyph(rng, canvas, glyph, side, x0, y0)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")


def _render_faces(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    faces = _lfw()
    # 0..99 faces, 100..199 non-faces; blank patches left out: a crop of one is the same black
    # image every time, and train800 and val200 would share pixels (vpeft prepare refuses that)
    candidates = np.arange(100) + 100 * label
    pool = _pool(candidates[faces[candidates].reshape(100, -1).std(axis=1) >= _MIN_FACE_STD], role)
    image = Image.fromarray(faces[int(rng.choice(pool))], "L")
    side = int(rng.integers(19, 26))  # crop jitter inside the 25x25 patch
    x0, y0 = int(rng.integers(0, 26 - side)), int(rng.integers(0, 26 - side))
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    image = _augment(rng, image, rot90=False)
    grey = _jitter(rng, np.asarray(image), brightness=0.3, contrast=0.3).astype(np.float32)
    tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # mild colour cast, as in photos
    return Image.fromarray(np.clip(grey[..., None] * tint + 0.5, 0, 255).astype(np.uint8), "RGB")


def _render_textures(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    photo = _photo(_TEXTURE_PHOTOS[label])
    # Train/val crops come from the top 75% of each photo, test crops from the bottom 25%.
    rows = (0.75, 1.0) if role == "test" else (0.0, 0.75)
    return _photo_crop(rng, photo, size, (0.08, 0.3), rows, jitter=0.2)


_MIN_CROP_STD = 2.0  # grey levels: below this a crop is a blank patch (e.g. saturated sky)


def _photo_crop(rng: np.random.Generator, photo: Image.Image, size: int, scale: tuple[float, float],
                rows: tuple[float, float] = (0.0, 1.0), *, jitter: float) -> Image.Image:
    """A jittered random crop of ``photo`` with some texture: blank crops are drawn again, since
    every blank crop of a saturated region is the same image, and train800 and val200 would
    share pixels (vpeft prepare refuses that)."""
    for _ in range(50):
        crop = _augment(rng, _random_crop(rng, photo, size, scale, rows))
        array = _jitter(rng, np.asarray(crop), brightness=jitter, contrast=jitter)
        if array.std() >= _MIN_CROP_STD:
            break
    return Image.fromarray(array, "RGB")


def _render_count(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    n = label + 1
    canvas_size = size * _SS
    bg = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.9))
    radii = rng.uniform(0.08, 0.15, size=n) * canvas_size
    centres = None
    for _ in range(40):  # shrink the shapes until they fit without touching
        centres = _place_discs(rng, radii, canvas_size, gap=0.07 * canvas_size, margin=_SS)
        if centres is not None:
            break
        radii = radii * 0.9
    if centres is None:
        raise RuntimeError(f"could not place {n} shapes on a {size}px image")
    image = Image.new("RGB", (canvas_size, canvas_size), bg)
    draw = ImageDraw.Draw(image)
    for (cx, cy), r in zip(centres, radii):
        kind = _COUNT_SHAPES[int(rng.integers(len(_COUNT_SHAPES)))]
        _draw_shape(draw, kind, cx, cy, r, rng.uniform(0, 2 * math.pi), _contrasting_colour(rng, bg))
    array = np.asarray(image.reduce(_SS), dtype=np.float32)
    array = array + _gradient_background(rng, size, (0, 0, 0), amplitude=10.0)
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")


def _render_position(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    canvas_size = size * _SS
    # Bins span the same x-range for every sprite, so the label depends on position only.
    margin = 0.15 * canvas_size + _SS
    width = (canvas_size - 2 * margin) / _POSITION_BINS
    cx = margin + (label + rng.uniform(0.02, 0.98)) * width
    cy = rng.uniform(margin, canvas_size - margin)
    r = rng.uniform(0.07, 0.14) * canvas_size
    image = Image.new("L", (canvas_size, canvas_size), 0)
    kind = _SPRITES[int(rng.integers(len(_SPRITES)))]
    _draw_shape(ImageDraw.Draw(image), kind, cx, cy, r, rng.uniform(0, 2 * math.pi), 255)
    return image.reduce(_SS)


def render_source(rng: np.random.Generator, label: int, role: str, size: int) -> Image.Image:
    n_shapes = len(_SOURCE_SHAPES) * len(_SOURCE_COLOURS)
    n_photos = len(_SOURCE_PHOTOS)
    if label < n_shapes:  # one shape of a colour family on a grey noisy background
        kind = _SOURCE_SHAPES[label // len(_SOURCE_COLOURS)]
        hue = list(_SOURCE_COLOURS.values())[label % len(_SOURCE_COLOURS)]
        canvas_size = size * _SS
        grey = int(rng.integers(0, 256))
        image = Image.new("RGB", (canvas_size, canvas_size), (grey,) * 3)
        r = rng.uniform(0.15, 0.35) * canvas_size
        cx, cy = rng.uniform(r, canvas_size - r, size=2)
        colour = _hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))
        _draw_shape(ImageDraw.Draw(image), kind, cx, cy, r, rng.uniform(0, 2 * math.pi), colour)
        array = np.asarray(image.reduce(_SS), dtype=np.float32)
        array += rng.normal(0.0, rng.uniform(2.0, 12.0), size=(size, size, 1)).astype(np.float32)
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")
    label -= n_shapes
    if label < n_photos:  # larger crops than `textures`, of other photos
        return _photo_crop(rng, _photo(_SOURCE_PHOTOS[label]), size, (0.25, 0.6), jitter=0.25)
    label -= n_photos
    # 1-3 digit glyphs (any digit), all upright or all rotated by 90 degrees.
    count = _SOURCE_GLYPH_COUNTS[label // len(_SOURCE_ORIENTATIONS)]
    rotate = _SOURCE_ORIENTATIONS[label % len(_SOURCE_ORIENTATIONS)] == "rot90"
    images, _ = _digits()
    bg = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.0, 1.0))
    canvas = _gradient_background(rng, size, bg, amplitude=15.0)
    side = max(5, int(rng.uniform(0.3, 0.45) * size))
    half = side / 2
    centres = _place_discs(rng, np.full(count, half), float(size), gap=1.0, margin=0.0)
    if centres is None:  # crowded: fall back to a diagonal arrangement
        centres = np.stack([np.linspace(half, size - half, count)] * 2, axis=1)
    colour = _contrasting_colour(rng, bg)
    for cx, cy in centres:
        glyph = images[int(rng.integers(len(images)))]
        glyph = np.ascontiguousarray(np.rot90(glyph, -1) if rotate else glyph)
        x0 = int(np.clip(cx - half, 0, size - side))
        y0 = int(np.clip(cy - half, 0, size - side))
        _paste_glyph(rng, canvas, glyph, side, x0, y0, colour)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# The renderers of the tasks in vpeft.data.catalog's registry.
# --------------------------------------------------------------------------------------------

_RENDERERS: dict[str, Renderer] = {
    "digits": _render_digits,
    "faces": _render_faces,
    "textures": _render_textures,
    "count": _render_count,
    "position": _render_position,
    "source": render_source,
}
_GREY_TASKS = frozenset({"position"})  # stored mode "L", as real VTAB stores dSprites


def _task(name: str) -> SyntheticTask:
    if name == SOURCE_TASK.name:
        return SOURCE_TASK
    try:
        return DEMO_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic task {name!r}; known: "
                         f"{sorted(DEMO_TASKS) + [SOURCE_TASK.name]}") from None


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------


def _save_image(image: Image.Image, path: Path) -> None:
    """Write one JPEG. 4:4:4 chroma keeps colours of 32-pixel images intact.

    Encoding into memory and writing the bytes in one call is ~3x faster than
    ``Image.save(path)`` for thousands of tiny files (PIL's file path does extra syscalls).
    """
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, subsampling=0, optimize=False)
    path.write_bytes(buffer.getvalue())


def _resolve_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    """Fill defaults; accept (and check) the derived ``train800val200`` key configs carry."""
    resolved = dict(DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key == "train800val200":
            continue
        if key not in resolved:
            raise ValueError(f"unknown split {key!r}; expected one of {SPLITS}")
        if int(value) < 0:
            raise ValueError(f"split {key!r} size must be >= 0, got {value}")
        resolved[key] = int(value)
    if sizes and "train800val200" in sizes and \
            int(sizes["train800val200"]) != resolved["train800"] + resolved["val200"]:
        raise ValueError("sizes['train800val200'] must equal train800 + val200")
    return resolved


def _split_labels(rng: np.random.Generator, n: int, num_classes: int, start: int) -> np.ndarray:
    """Balanced labels (round-robin from ``start``), shuffled."""
    return rng.permutation((start + np.arange(n)) % num_classes)


def _task_offset(name: str) -> int:
    """Stable per-task seed offset (CRC32; Python's str hash is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))


def generate_task(name: str, root: Path, *, sizes: Mapping[str, int] | None = None,
                  image_size: int = 32, seed: int = 0) -> Path:
    """Write task ``name`` under ``root/name`` in the VTAB-1K layout and return that directory.

    ``sizes`` maps splits (train800, val200, test) to image counts, default 800/200/400. The task
    is built in a temporary directory beside the target and moved into place at the end, so a
    failure leaves neither a partial task nor the temporary directory; an existing task directory
    is replaced.
    """
    task = _task(name)
    split_sizes = _resolve_sizes(sizes)
    if split_sizes["train800"] + split_sizes["val200"] < task.num_classes:
        raise ValueError(f"{name}: train800 + val200 must be >= {task.num_classes} so every class "
                         f"appears, got {split_sizes['train800']} + {split_sizes['val200']}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    render = _RENDERERS[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    with atomic_dir(target) as tmp:
        base = seed + _task_offset(name)
        lines: dict[str, list[str]] = {}
        # val200 continues train800's round-robin of labels, so train800 + val200 covers every
        # class whenever together they hold at least num_classes images.
        starts = {"train800": 0, "val200": split_sizes["train800"], "test": 0}
        for split_id, split in enumerate(SPLITS):
            rng = np.random.default_rng([base, split_id])
            labels = _split_labels(rng, split_sizes[split], task.num_classes, starts[split])
            role = "test" if split == "test" else "train"
            folder = tmp / "images" / split
            folder.mkdir(parents=True)
            lines[split] = []
            for index, label in enumerate(labels.tolist()):
                image = render(rng, label, role, image_size)
                image = image.convert("L" if name in _GREY_TASKS else "RGB")
                relative = f"images/{split}/{index:06d}.jpg"
                _save_image(image, tmp / relative)
                lines[split].append(f"{relative} {label}\n")
        # The generators decode train800 + val200 again and save each image under its new name;
        # the encoder is deterministic, so the copy's bytes equal the original's.
        copies = tmp / "images" / "train800val200"
        copies.mkdir(parents=True)
        lines["train800val200"] = []
        for index, line in enumerate(lines["train800"] + lines["val200"]):
            original, label = line.split()
            relative = f"images/train800val200/{index:06d}.jpg"
            shutil.copyfile(tmp / original, tmp / relative)
            lines["train800val200"].append(f"{relative} {label}\n")
        for split in ("train800", "val200", "train800val200", "test"):
            (tmp / f"{split}.txt").write_text("".join(lines[split]), encoding="utf-8")
    return target


def generate_source(root: Path, *, per_class: int = 100, sizes: Mapping[str, int] | None = None,
                    image_size: int = 32, seed: int = 0) -> Path:
    """Write the pretraining set ``root/source`` (24 classes) in the same layout.

    By default each class gets ``per_class`` images split 70/10/20 over train800/val200/test
    (2,400 images for ``per_class=100``); explicit ``sizes`` override that.
    """
    if sizes is None:
        n_test, n_val = per_class // 5, per_class // 10
        c = SOURCE_TASK.num_classes
        sizes = {"train800": (per_class - n_test - n_val) * c, "val200": n_val * c, "test": n_test * c}
    return generate_task(SOURCE_TASK.name, root, sizes=sizes, image_size=image_size, seed=seed)


def generate_demo(root: Path, *, tasks: Sequence[str] | None = None, image_size: int = 32,
                  seed: int = 0, sizes: Mapping[str, int] | None = None,
                  source_per_class: int = 100, include_source: bool = True) -> list[Path]:
    """Generate the demo tasks (default: all of ``DEMO_TASKS``) and the source set.

    ``sizes`` applies to the downstream tasks; the source set's size is set by
    ``source_per_class``. Returns the written task directories, source last.
    """
    names = list(DEMO_TASKS) if tasks is None else [t for t in tasks if t != SOURCE_TASK.name]
    written = [generate_task(n, root, sizes=sizes, image_size=image_size, seed=seed) for n in names]
    if include_source:
        written.append(generate_source(root, per_class=source_per_class, image_size=image_size,
                                       seed=seed))
    return written
