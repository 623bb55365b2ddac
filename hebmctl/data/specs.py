"""Data spec strings (``KIND:ARGUMENT``) and split names: parsing and validation."""

from __future__ import annotations

from hebmctl.errors import DataError

SPEC_FORMS: dict[str, str] = {
    "mnist": "mnist:DIR (folder with the four MNIST IDX files, .gz or not)",
    "fashion-mnist": "fashion-mnist:DIR (folder with the four Fashion-MNIST IDX files)",
    "cifar10": "cifar10:PATH (zip or folder with train/<class>/*.jpg and test/<class>/*.jpg, "
    "or the python-version folder cifar-10-batches-py)",
    "folder": "folder:PATH (image folder or zip; class = sub-folder name)",
    "npz": "npz:PATH (.npz with key 'images' uint8 [N,H,W] or [N,H,W,C], optional 'labels')",
    "pooled": "pooled:heldout=D,seed=S:BASE (the anchors' anomaly protocol on the labelled set BASE: train = a seeded 80 % of the "
    "images of every class but D, test = the other 20 % plus every image of D; e.g. pooled:heldout=4,seed=0:mnist:DIR)",
    "builtin": "builtin:mnist-10k (the MNIST test split shipped with hebmctl), builtin:shapes or "
    "builtin:shapes-64 (procedural shapes with known factors, 32x32 or 64x64 RGB)",
}
BUILTIN_SETS: tuple[str, ...] = ("mnist-10k", "shapes", "shapes-64")
SPLITS: tuple[str, ...] = ("train", "test", "all")


def _valid_forms() -> str:
    return "; ".join(SPEC_FORMS.values())


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``'KIND:ARGUMENT'`` into ``(kind, argument)`` and validate the kind.

    The kind is matched case-insensitively and returned in lower case; the argument (a path,
    or the built-in set's name) is returned stripped of surrounding white space. Raises
    DataError for a missing ``:``, an unknown kind, an empty argument or an unknown built-in set.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DataError(
            f"Data spec {spec!r} has no 'KIND:' prefix. Write it as KIND:ARGUMENT, one of: "
            f"{_valid_forms()}."
        )
    kind, argument = (part.strip() for part in spec.split(":", 1))
    kind = kind.lower()
    if kind not in SPEC_FORMS:
        raise DataError(
            f"Data spec {spec!r} has the unknown kind {kind!r}. Valid kinds are "
            f"{', '.join(SPEC_FORMS)}; use one of: {_valid_forms()}."
        )
    if not argument:
        raise DataError(
            f"Data spec {spec!r} has nothing after the ':'. Write it as {SPEC_FORMS[kind]}."
        )
    if kind == "builtin" and argument not in BUILTIN_SETS:
        raise DataError(
            f"Data spec {spec!r} names the unknown built-in data set {argument!r}. The built-in "
            f"sets are: {', '.join(BUILTIN_SETS)} (use e.g. builtin:mnist-10k)."
        )
    return kind, argument


def check_split(split: str, spec: str) -> str:
    """Return ``split`` if it is one of ``SPLITS``; raise DataError otherwise."""
    if split not in SPLITS:
        raise DataError(
            f"Unknown split {split!r} for data spec {spec!r}. Use one of: "
            f"{', '.join(SPLITS)} ('all' is both)."
        )
    return split
