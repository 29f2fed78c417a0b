"""Tests for the synthetic VTAB-1K-format tasks (vpeft.demo.synthetic)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpeft.demo import synthetic as S

SMALL = {"train800": 20, "val200": 10, "test": 10}
SOURCE_SMALL = {"train800": 24, "val200": 24, "test": 12}  # 24 classes
ALL_TASKS = [*S.DEMO_TASKS, S.SOURCE_TASK.name]
LINE = re.compile(r"^images/(train800|val200|test|train800val200)/(\d{6})\.jpg (\d+)$")


def _sizes(name: str) -> dict[str, int]:
    return SOURCE_SMALL if name == S.SOURCE_TASK.name else SMALL


def _meta(name: str) -> S.SyntheticTask:
    return S.SOURCE_TASK if name == S.SOURCE_TASK.name else S.DEMO_TASKS[name]


def _read_list(task_dir: Path, split: str) -> list[tuple[str, int]]:
    text = (task_dir / f"{split}.txt").read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"bad list line {line!r}"
        out.append((line.rsplit(" ", 1)[0], int(match.group(3))))
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(task_dir: Path, split: str) -> list[tuple[np.ndarray, int]]:
    return [(np.asarray(Image.open(task_dir / rel)), label) for rel, label in _read_list(task_dir, split)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for name in ALL_TASKS:
        S.generate_task(name, root, sizes=_sizes(name), seed=0)
    return root


# ---------------------------------------------------------------------------------------------
# Layout and format
# ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    groups = {t.group for t in S.DEMO_TASKS.values()}
    assert {"natural", "specialized", "structured"} <= groups
    for name, task in S.DEMO_TASKS.items():
        assert task.name == name and task.num_classes >= 2 and task.description and task.source
        assert not task.class_names or len(task.class_names) == task.num_classes
    assert S.SOURCE_TASK.name == "source" and S.SOURCE_TASK.num_classes == 24
    assert len(S.SOURCE_TASK.class_names) == 24


def test_package_pixels_match_official_loaders() -> None:
    from sklearn.datasets import load_digits, load_sample_image

    images, target = S._digits()
    official = load_digits()
    assert np.array_equal(images, (official.images / 16.0).astype(np.float32))
    assert np.array_equal(target, official.target)
    for name in ("china", "flower"):
        assert np.array_equal(np.asarray(S._photo(f"sklearn:{name}")), load_sample_image(f"{name}.jpg"))


@pytest.mark.parametrize("name", ALL_TASKS)
def test_layout(generated: Path, name: str) -> None:
    task_dir = generated / name
    meta, sizes = _meta(name), _sizes(name)
    assert sorted(p.name for p in task_dir.iterdir()) == [
        "images", "test.txt", "train800.txt", "train800val200.txt", "val200.txt"]
    lists = {split: _read_list(task_dir, split) for split in ("train800", "val200", "test")}
    for split, entries in lists.items():
        assert len(entries) == sizes[split]
        assert [rel for rel, _ in entries] == [f"images/{split}/{i:06d}.jpg" for i in range(len(entries))]
        assert all(0 <= label < meta.num_classes for _, label in entries)
        assert sorted(p.name for p in (task_dir / "images" / split).iterdir()) == \
            [f"{i:06d}.jpg" for i in range(len(entries))]
    # As the public generators write it: train800val200 is its own folder of copies, train800's
    # images then val200's, renumbered, byte-identical to their originals.
    copies = _read_list(task_dir, "train800val200")
    originals = lists["train800"] + lists["val200"]
    assert [rel for rel, _ in copies] == [f"images/train800val200/{i:06d}.jpg" for i in range(len(originals))]
    assert [label for _, label in copies] == [label for _, label in originals]
    assert all((task_dir / c).read_bytes() == (task_dir / o).read_bytes()
               for (c, _), (o, _) in zip(copies, originals))
    assert {label for _, label in lists["train800"] + lists["val200"]} == set(range(meta.num_classes))
    # Balanced as far as sizes allow.
    counts = np.bincount([label for _, label in lists["train800"]], minlength=meta.num_classes)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ALL_TASKS)
def test_image_properties(generated: Path, name: str) -> None:
    expected_mode = "L" if name == "position" else "RGB"
    for path in (generated / name / "images").rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size == (32, 32)
            assert image.mode == expected_mode


def test_other_image_size(tmp_path: Path) -> None:
    paths = S.generate_demo(tmp_path, image_size=16, sizes=SMALL, source_per_class=5)
    assert [p.name for p in paths] == [*S.DEMO_TASKS, "source"]
    for path in paths:
        with Image.open(next((path / "images" / "test").iterdir())) as image:
            assert image.size == (16, 16)


def test_minimal_sizes_cover_all_classes(tmp_path: Path) -> None:
    task_dir = S.generate_task("digits", tmp_path, sizes={"train800": 5, "val200": 5, "test": 0})
    labels = [label for split in ("train800", "val200") for _, label in _read_list(task_dir, split)]
    assert sorted(labels) == list(range(10))
    assert _read_list(task_dir, "test") == []


def test_size_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        S.generate_task("digits", tmp_path, sizes={"train800": 4, "val200": 4})
    with pytest.raises(ValueError):
        S.generate_task("count", tmp_path, sizes={"train800": 10, "val200": 5, "train800val200": 16})
    with pytest.raises(ValueError):
        S.generate_task("count", tmp_path, sizes={"train": 10})
    with pytest.raises(ValueError):
        S.generate_task("nope", tmp_path)
    # The config's derived key is accepted when consistent.
    S.generate_task("count", tmp_path, sizes={"train800": 6, "val200": 2, "train800val200": 8, "test": 2})
    assert list(tmp_path.iterdir()) == [tmp_path / "count"]


def test_generate_source_defaults_split(tmp_path: Path) -> None:
    task_dir = S.generate_source(tmp_path, per_class=10)
    assert [len(_read_list(task_dir, s)) for s in ("train800", "val200", "test")] == [7 * 24, 24, 2 * 24]


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_deterministic(generated: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    for name in ALL_TASKS:
        S.generate_task(name, again, sizes=_sizes(name), seed=0)
        assert _digest(again / name) == _digest(generated / name), name


def test_seed_changes_output(generated: Path, tmp_path: Path) -> None:
    for name in ALL_TASKS:
        S.generate_task(name, tmp_path, sizes=_sizes(name), seed=1)
        assert _digest(tmp_path / name) != _digest(generated / name), name


def test_splits_are_independent_streams(generated: Path, tmp_path: Path) -> None:
    # Resizing train800 must not change the test images.
    S.generate_task("count", tmp_path, sizes={**SMALL, "train800": 33}, seed=0)
    a, b = _digest(tmp_path / "count"), _digest(generated / "count")
    assert {k: v for k, v in a.items() if "test" in k} == {k: v for k, v in b.items() if "test" in k}


# ---------------------------------------------------------------------------------------------
# Labels mean what they say
# ---------------------------------------------------------------------------------------------


def test_count_labels_match_components(tmp_path: Path) -> None:
    from scipy import ndimage

    task_dir = S.generate_task("count", tmp_path, sizes={"train800": 60, "val200": 0, "test": 0})
    correct = 0
    for array, label in _load(task_dir, "train800"):
        pixels = array.astype(np.float32)
        background = np.median(pixels.reshape(-1, 3), axis=0)  # shapes never cover half the image
        mask = np.linalg.norm(pixels - background, axis=2) > 50
        correct += ndimage.label(mask)[1] == label + 1
    assert correct / 60 >= 0.9


def test_position_labels_follow_x(tmp_path: Path) -> None:
    task_dir = S.generate_task("position", tmp_path, sizes={"train800": 64, "val200": 0, "test": 0})
    xs: dict[int, list[float]] = {}
    for array, label in _load(task_dir, "train800"):
        assert array.ndim == 2
        _, x = np.nonzero(array > 127)
        assert x.size > 0
        xs.setdefault(label, []).append(float(x.mean()))
    means = [np.mean(xs[k]) for k in range(S.DEMO_TASKS["position"].num_classes)]
    assert all(b > a for a, b in zip(means, means[1:])), means


def _glyph_vector(alpha: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box, resize to 8x8, normalise (zero mean, unit norm)."""
    ys, xs = np.nonzero(alpha > alpha.max() * 0.3)
    crop = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    v = np.asarray(Image.fromarray(crop, "F").resize((8, 8), Image.Resampling.BILINEAR)).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def test_digits_contain_sklearn_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    # A flat grey background isolates the glyph; everything else is the real rendering path.
    monkeypatch.setattr(S, "_photo_background",
                        lambda rng, size: np.full((size, size, 3), 128.0, np.float32))
    task_dir = S.generate_task("digits", tmp_path, sizes={"train800": 50, "val200": 0, "test": 50})
    digits = load_digits()
    templates = np.stack([np.mean([_glyph_vector(im) for im in digits.images[digits.target == c]], axis=0)
                          for c in range(10)])
    for split in ("train800", "test"):
        hits = [int(np.argmax(templates @ _glyph_vector(np.abs(a.astype(np.float32) - 128).mean(2)))) == y
                for a, y in _load(task_dir, split)]
        assert np.mean(hits) >= 0.6, (split, np.mean(hits))  # chance is 0.1


def test_textures_are_separable(tmp_path: Path) -> None:
    # Nearest class centroid on colour/contrast/edge statistics, train crops -> held-out test crops.
    task_dir = S.generate_task("textures", tmp_path, sizes={"train800": 64, "val200": 0, "test": 64})

    def feature(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        grey = a.mean(2)
        edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
        return np.r_[a.mean((0, 1)), a.std((0, 1)), edges]

    train, test = _load(task_dir, "train800"), _load(task_dir, "test")
    x = np.stack([feature(a) for a, _ in train])
    y = np.array([label for _, label in train])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    centroids = np.stack([((x[y == c] - mu) / sd).mean(0) for c in range(8)])
    xt = (np.stack([feature(a) for a, _ in test]) - mu) / sd
    yt = np.array([label for _, label in test])
    accuracy = (np.argmin(((xt[:, None] - centroids[None]) ** 2).sum(2), axis=1) == yt).mean()
    assert accuracy >= 0.3  # chance is 0.125


# ---------------------------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------------------------


def _failing_writer(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    real = S._save_image
    calls = {"n": 0}

    def writer(image: Image.Image, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("disk full (simulated)")
        real(image, path)

    monkeypatch.setattr(S, "_save_image", writer)


def test_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_writer(monkeypatch, after=5)
    with pytest.raises(OSError, match="simulated"):
        S.generate_task("count", tmp_path, sizes=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    S.generate_task("position", tmp_path, sizes=SMALL, seed=0)
    before = _digest(tmp_path / "position")
    _failing_writer(monkeypatch, after=3)
    with pytest.raises(OSError):
        S.generate_task("position", tmp_path, sizes=SMALL, seed=1)
    assert list(tmp_path.iterdir()) == [tmp_path / "position"]
    assert _digest(tmp_path / "position") == before


def test_regeneration_replaces(tmp_path: Path) -> None:
    S.generate_task("faces", tmp_path, sizes=SMALL, seed=0)
    S.generate_task("faces", tmp_path, sizes={"train800": 4, "val200": 2, "test": 2}, seed=3)
    assert list(tmp_path.iterdir()) == [tmp_path / "faces"]
    assert len(_read_list(tmp_path / "faces", "train800")) == 4
    assert len(list((tmp_path / "faces" / "images" / "train800").iterdir())) == 4


# The demo's generators sit outside the core (vpeft.demo)

# Where the core may import vpeft.demo: inside the verbs that generate demo data. Anywhere in
# vpeft.cli (``vpeft synth``; a module or a package), and the robustness pipeline's verb dispatch
# (``robust-synth``, ``fit-clip``). Never at a module's top level.
# the CLI verbs synth, robust-synth and fit-clip; a study kind's synth (vpeft.kinds)
DEMO_IMPORTERS = {("cli", None), ("kinds", "synthesize"), ("kinds", "synthesize_task")}


def _demo_imports(path: Path) -> list[tuple[str | None, int]]:
    """(enclosing top-level function or None, line) of every import of vpeft.demo in ``path``."""
    import ast

    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None:
                inner = child.name
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            if any(n == "vpeft.demo" or n.startswith("vpeft.demo.") for n in names):
                found.append((function, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return found


def test_only_the_demo_verbs_import_the_demo_package() -> None:
    """No core module imports vpeft.demo, except the verbs that generate demo data (in a
    function, so that importing them loads no generator: the CLI's, and the study kinds'
    `synthesize`); the workflow names none of it."""
    import vpeft

    package = Path(vpeft.__file__).parent
    repo = package.parent.parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("demo/"):
            continue
        for function, line in _demo_imports(path):
            allowed = function is not None and any(
                (rel == where or rel.startswith(f"{where}.") or rel.startswith(f"{where}/"))
                and (only is None or function == only) for where, only in DEMO_IMPORTERS)
            if not allowed:
                offenders.append(f"{rel}:{line} ({function or 'module level'})")
    for path in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]:
        if "vpeft.demo" in path.read_text(encoding="utf-8"):
            offenders.append(path.name)
    assert offenders == []
    assert _demo_imports(package / "cli.py"), "the check found no import"
