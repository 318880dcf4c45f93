"""Sample data: fetched pooch-style from the public originals into a cache, checksums verified.

Two environment variables:

* ``NAPARI_MEDSEG_DATA_DIR``: a local folder laid out like the project's ``shared/data`` (for example
  ``../shared/data``). Files are taken from there (and still checked against their sha256); nothing
  is downloaded. Tests and CI set it.
* ``NAPARI_MEDSEG_CACHE``: where downloads go (default: the platform cache folder, via pooch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import InvalidInput, MedSegIOError

ENV_DATA_DIR = "NAPARI_MEDSEG_DATA_DIR"
ENV_CACHE = "NAPARI_MEDSEG_CACHE"

SAMPLES = {
    "ct_dicom": "volumes/ct-dicom-series-jpeg2000",
    "ct_abdomen": "volumes/ct-abdomen-small.nii.gz",
    "ct_abdomen_seg": "volumes/ct-abdomen-small_totalseg-output.nii.gz",
    "mr_spine": "volumes/pam50-small-t2.nii.gz",
    "mr_spine_discs": "volumes/pam50-small-t2_labels-disc.nii.gz",
    "mr_lumbar": "spine-discs/images/spine_vb1_16.nii.gz",
    "mr_lumbar_discs": "spine-discs/labels/spine_vb1_16_labels-disc.nii.gz",
    "mr_cardiac": "acdc/imagesTr/patient022_frame01.nii.gz",
    "mr_cardiac_labels": "acdc/labelsTr/patient022_frame01.nii.gz",
    "endoscopy": "kvasir-seg/images/cju0qx73cjw570799j4n5cjze.jpg",
    "endoscopy_mask": "kvasir-seg/masks/cju0qx73cjw570799j4n5cjze.jpg",
}


# samples shipped inside the package (napari_medseg/samples/, licences in its NOTICE.md): no data folder,
# cache or network needed; the registry's checksum still applies where the file is also registered there
EMBEDDED = {
    "skin": "isic2016_043.jpg",
    "skin_mask": "isic2016_043_mask.png",
    "ct_abdomen": "ct-abdomen-small.nii.gz",
    "ct_abdomen_seg": "ct-abdomen-small_totalseg-output.nii.gz",
}


def embedded(name: str) -> Path | None:
    """The package's own copy of sample ``name`` (``EMBEDDED``), or None."""
    if name not in EMBEDDED:
        return None
    path = Path(str(resources.files("napari_medseg") / "samples" / EMBEDDED[name]))
    if not path.is_file():
        return None
    rel = SAMPLES.get(name)
    entry = registry().get(rel) if rel else None
    return _verified(path, entry["sha256"]) if entry else path


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    text = resources.files("napari_medseg").joinpath("data/registry.json").read_text(encoding="utf-8")
    return json.loads(text)["files"]


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("napari-medseg"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> Path:
    got = _sha256(path)
    if got != sha256:
        raise MedSegIOError(path, f"checksum mismatch (sha256 {got[:12]}..., expected {sha256[:12]}...)")
    return path


def fetch_file(rel: str) -> Path:
    """Path to one registered file, from ``$NAPARI_MEDSEG_DATA_DIR`` or the download cache."""
    entries = registry()
    if rel not in entries:
        raise InvalidInput(f"{rel!r} is not a registered sample file")
    entry = entries[rel]
    local = os.environ.get(ENV_DATA_DIR)
    if local:
        path = Path(local) / rel
        if not path.is_file():
            raise MedSegIOError(path, f"missing from the local data folder ${ENV_DATA_DIR}={local}")
        return _verified(path, entry["sha256"])
    target = cache_dir() / rel
    if target.is_file() and _sha256(target) == entry["sha256"]:
        return target
    if not entry.get("url"):
        raise MedSegIOError(rel, f"has no public single-file download ({entry.get('source', 'curated file')}); "
                                 f"set ${ENV_DATA_DIR} to a folder that holds {rel}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if "archive_member" not in entry:
        return Path(_download(rel, entry["url"], known_hash=f"sha256:{entry['sha256']}", fname=target.name,
                              path=target.parent))
    # the public original is an archive: download it once (its own checksum is not published),
    # extract the one member and verify that member's checksum
    archive = _download(rel, entry["url"], known_hash=None, path=cache_dir() / "archives")
    with zipfile.ZipFile(archive) as zf, zf.open(entry["archive_member"]) as src:
        tmp = target.with_name(target.name + ".part")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    try:
        _verified(tmp, entry["sha256"])
    except MedSegIOError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


def _download(rel: str, url: str, **kwargs) -> str:
    """pooch.retrieve, with a failed download said in one line (which file, from where, what to do) instead of
    the HTTP library's connection text."""
    import pooch
    from urllib.parse import urlparse

    try:
        return pooch.retrieve(url, progressbar=False, **kwargs)
    except ValueError:  # pooch: the download's checksum differs
        raise
    except Exception as err:  # noqa: BLE001 - requests/urllib3/OSError: offline, DNS, HTTP status
        raise MedSegIOError(rel, f"could not be downloaded from {urlparse(url).netloc} ({type(err).__name__}; "
                                 f"offline?): connect once, or set ${ENV_DATA_DIR} to a folder that holds {rel}") from None


def fetch(name: str) -> Path:
    """Path to a sample by name (see ``SAMPLES``); a folder for the DICOM series."""
    if name not in SAMPLES and name not in EMBEDDED:
        raise InvalidInput(f"unknown sample {name!r}; choose from {sorted(set(SAMPLES) | set(EMBEDDED))}")
    own = embedded(name)
    if own is not None:
        return own
    rel = SAMPLES[name]
    members = [r for r in registry() if r.startswith(rel + "/")]
    if not members:
        return fetch_file(rel)
    paths = [fetch_file(r) for r in members]
    return paths[0].parent
