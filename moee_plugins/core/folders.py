"""What a received folder may point at: checks on the files of a saved MoEE folder before anything is read.

A saved folder may come from someone else. Its files are read by path (the config, the statistics, the
tokenizer, the base model's weights in ``moee_model/``), so a symlink inside it could make us read any file
the user can read (another local model, a key file passed off as a tokenizer). A symlink is allowed only
where it stays inside the folder, or, for a folder in the Hugging Face hub cache (``.../snapshots/<rev>/``,
whose files are links into the repository's own ``blobs/``), inside that repository's blob store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def _hub_blobs(folder: Path) -> Path | None:
    """The ``blobs/`` folder of the hub cache repository a snapshot folder belongs to (None if it is not one)."""
    for parent in (folder, *folder.parents):
        if parent.parent.name == "snapshots":
            blobs = parent.parent.parent / "blobs"
            return blobs.resolve() if blobs.is_dir() else None
    return None


def _entries(folder: Path) -> Iterator[Path]:
    """Every file and folder under ``folder``, links not followed (a link to a folder is itself an entry)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in (*dirnames, *filenames):
            yield Path(dirpath, name)


def check_symlinks(directory: str | os.PathLike[str]) -> None:
    """Refuse a saved folder any of whose files (its config, statistics, tokenizer, ``moee_model/``...) is a
    symlink to something outside it (a hub cache snapshot may link into its own ``blobs/``)."""
    folder = Path(directory)
    inside = folder.resolve()
    blobs = _hub_blobs(inside) or _hub_blobs(folder.absolute())
    for path in _entries(folder):
        if not path.is_symlink():
            continue
        target = path.resolve()
        if _inside(target, inside) or (blobs is not None and _inside(target, blobs)):
            continue
        raise ValueError(f"{path} is a symlink to {target}, outside the saved folder {folder}: a saved MoEE folder "
                         "may only link to files inside itself; copy the file into the folder (cp -L) if you "
                         "trust it")
