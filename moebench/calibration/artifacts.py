"""The artifact cache: heavy, reusable results (default vectors, trained predictors, recorded
routing traces) stored as safetensors, never pickle, with a small JSON sidecar saying what
produced them.

An artifact is keyed by everything that determines it:

    ArtifactKey(kind, model_snapshot, workload_sha, params, version)

`model_snapshot` is the sha256 of the model's config and weight index (`LoadedModel.snapshot`),
`workload_sha` the token-level hash of the calibration workload (`workload_sha256`), `params`
the calibration parameters that change the result (method, beta, predictor width, ...), and
`version` the producing strategy's version (bump it and old artifacts stop matching). The key's
sha256 names the files:

    $MOEBENCH_CACHE (default ~/.cache/moebench)/artifacts/<kind>/<model>-<digest16>.safetensors
                                                                       ...-<digest16>.json

The sidecar holds the provenance (model, calibration workload name and hash, params, version,
moebench version, creation time, tensor names and shapes) and the sha256 of the tensor file, so
a truncated or edited file is detected. A corrupt or unreadable artifact is a `UserError` (exit
code 2) that names the file and how to rebuild it; a missing one is `None` to the caller, who
decides whether to calibrate or to fail (`--no-calibrate`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moebench.errors import UserError

FORMAT = 1


def cache_dir() -> Path:
    """`$MOEBENCH_CACHE`, else `~/.cache/moebench`."""
    env = os.environ.get("MOEBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moebench"


@dataclass(frozen=True)
class ArtifactKey:
    kind: str                 # "default-vectors" | "spec-estimator" | "pre-attention" | "routing-trace"
    model: str                # display name (only in the file name, not in the digest)
    model_snapshot: str
    workload: str             # workload name (display only)
    workload_sha: str
    params: dict = field(default_factory=dict)
    version: int = 1

    def digest(self) -> str:
        body = {"format": FORMAT, "kind": self.kind, "model_snapshot": self.model_snapshot,
                "workload_sha": self.workload_sha, "params": self.params, "version": self.version}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def paths(self) -> tuple[Path, Path]:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model)
        stem = cache_dir() / "artifacts" / self.kind / f"{safe}-{self.digest()[:16]}"
        return stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "model_snapshot": self.model_snapshot,
                "calibration_workload": self.workload, "calibration_workload_sha256": self.workload_sha,
                "params": self.params, "version": self.version, "digest": self.digest()}


@dataclass
class Artifact:
    key: ArtifactKey
    tensors: dict[str, Any]
    meta: dict
    path: Path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def exists(key: ArtifactKey) -> bool:
    tensors, sidecar = key.paths()
    return tensors.exists() or sidecar.exists()


def save(key: ArtifactKey, tensors: dict[str, Any], meta: dict | None = None) -> Artifact:
    """Write the tensors and the sidecar atomically (temp file + rename, sidecar last)."""
    from safetensors.torch import save_file

    from moebench import __version__

    import torch

    tpath, spath = key.paths()
    devices = sorted({t.device.type for t in tensors.values()})
    clean = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
    try:
        tpath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tpath.parent, prefix=f".{tpath.name}.", suffix=".tmp")
    except OSError as exc:
        where = "$MOEBENCH_CACHE" if os.environ.get("MOEBENCH_CACHE") else "the cache folder"
        raise UserError(f"cannot write the {key.kind} artifact under {cache_dir()} "
                        f"({exc.strerror or exc}); point {where} at a writable folder "
                        "(MOEBENCH_CACHE=DIR).") from None
    os.close(fd)
    try:
        save_file(clean, tmp, metadata={"moebench_kind": key.kind, "digest": key.digest()})
        os.replace(tmp, tpath)
    except OSError as exc:
        raise UserError(f"cannot write the {key.kind} artifact {tpath} ({exc.strerror or exc}).") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sidecar = {"format": FORMAT, **key.describe(), "moebench_version": __version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                           for n, t in clean.items()},
               "sha256": _sha256_file(tpath), "meta": meta or {},
               # what a rebuild elsewhere may round differently (CPU GEMMs depend on the thread
               # count): said next to the artifact in every result that runs on it
               "built_with": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                              "device": ",".join(devices) or "cpu"}}
    from moebench.results.folders import write_json

    write_json(spath, sidecar)
    return Artifact(key, clean, sidecar, tpath)


def load(key: ArtifactKey, *, hint: str = "") -> Artifact | None:
    """The artifact, `None` when it was never written, or a UserError when it is corrupt."""
    tpath, spath = key.paths()
    if not tpath.exists() and not spath.exists():
        return None
    fix = f" Delete it and recalibrate{(' with `' + hint + '`') if hint else ''}."

    def corrupt(why: str) -> UserError:
        return UserError(f"the {key.kind} artifact {tpath} is corrupt ({why}).{fix}")

    if not tpath.exists():
        raise corrupt("its tensor file is missing")
    if not spath.exists():
        raise corrupt(f"its sidecar {spath.name} is missing")
    try:
        sidecar = json.loads(spath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise corrupt(f"the sidecar is not valid JSON: {exc}") from None
    if not isinstance(sidecar, dict) or sidecar.get("digest") != key.digest():
        raise corrupt("the sidecar does not describe this key")
    if sidecar.get("sha256") != _sha256_file(tpath):
        raise corrupt("the tensor file's sha256 differs from the one recorded when it was written")
    try:
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(tpath), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise corrupt(f"safetensors cannot read it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    expected = set(sidecar.get("tensors", {}))
    if expected != set(tensors):
        raise corrupt("its tensors differ from the ones listed in the sidecar")
    return Artifact(key, tensors, sidecar, tpath)

