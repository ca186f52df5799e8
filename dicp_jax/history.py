"""Learning-history datasets: the ``History`` contract, an atomic chunk writer, a lazy loader.

Format (why): a directory of plain ``.npy`` shards, one shard per collected chunk::

    DIR/run.json                  what is being collected (checked on --resume)
    DIR/shards/00000/{obs,action,reward,next_obs,done,episode_returns,task_index}.npy
    DIR/shards/00000/shard.json   sha256 of each file, written last inside the shard
    DIR/metadata.json             written LAST: env, tasks, split, PPO config, seeds,
                                  version, shapes, dtypes, checksums, shard table

- ``.npy`` is memory-mappable with numpy alone: a subset of tasks, streams or a time
  prefix is sliced from ``np.load(mmap_mode="r")`` and only those pages are read, so
  Key-to-Door at paper scale (656M transitions, ~5 GB) never has to fit in memory.
  Each task is one contiguous ``[S, T, ...]`` block, the unit every consumer reads.
- One shard per chunk makes every write atomic (write ``shards/.tmp-*``, fsync, rename)
  and makes resume trivial: a shard either exists completely or not at all.
- Checksums are per shard file, so ``verify=True`` hashes only the shards it reads from.
- Formats such as zarr/HDF5 add a dependency and their own failure modes for no gain here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import tokenize
from pathlib import Path
from typing import Any

import numpy as np

from dicp_jax.sources.base import History  # the record a source produces

FORMAT_VERSION = 2  # 2: source + source_config instead of ppo
FIELDS = ("obs", "action", "reward", "next_obs", "done")


class DatasetError(ValueError):
    """A dataset that cannot be used as asked; the message names the path and the problem."""


@dataclasses.dataclass
class DatasetMeta:
    path: str
    format_version: int
    env_name: str
    env_kwargs: dict
    split: str
    task_index: np.ndarray  # [N] index of each returned task in env.task_list()
    tasks: np.ndarray  # [N, k] task tuples
    episode_returns: np.ndarray  # [N, E] source learner's mean return per episode index
    source: str  # the source algorithm's registry name (``dicp_jax.sources``)
    source_config: dict  # every setting of it (its Config's fields)
    seed: int
    version: str
    shapes: dict  # per field, per task: [S, T, ...]
    dtypes: dict
    n_tasks_total: int
    raw: dict = dataclasses.field(repr=False, default_factory=dict)

    def source_cfg(self):
        """The source's config object the histories were collected with."""
        from dicp_jax import config as cfglib
        from dicp_jax import sources

        return cfglib.from_dict(sources.get(self.source).Config, self.source_config)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise DatasetError(f"{path}: missing file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


# -- writer ------------------------------------------------------------------------------------
class DatasetWriter:
    """Writes chunks as atomic shards; ``finalize`` writes ``metadata.json`` last.

    ``header`` must hold ``env_name, env_kwargs, split, task_index, tasks, source,
    source_config, seed, version``.
    A non-empty directory is refused unless ``resume`` (same header required) or ``overwrite``.

    Several processes can write one dataset (``dicp_jax.distributed``): each names its
    shards with its own ``tag`` (``00000-p1``), so names never collide; one process opens
    the dataset (overwrite, leftovers), the others then ``join`` it (header checked, nothing
    removed); ``finalize`` reads the shard table back from the directory, so it sees every
    process's shards.
    """

    def __init__(self, path: str | Path, header: dict, resume: bool = False,
                 overwrite: bool = False, tag: str = "", join: bool = False):
        self.path = Path(path)
        self.tag = tag
        self.header = json.loads(json.dumps(header, default=_jsonable))
        if join:
            old = _read_json(self.path / "run.json")
            if old != self.header:
                diff = sorted(k for k in set(old) | set(self.header)
                              if old.get(k) != self.header.get(k))
                raise DatasetError(f"{self.path}: this process's run differs from the one "
                                   f"process 0 opened in {diff}")
            self.shards = self._existing_shards()
            return
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        run_file = self.path / "run.json"
        if run_file.exists() or (self.path / "metadata.json").exists():
            if not resume:
                raise DatasetError(f"{self.path}: already holds a dataset; pass --resume to "
                                   "continue it or --overwrite to replace it")
            old = _read_json(run_file)
            keys = set(old) | set(self.header)
            diff = sorted(k for k in keys if old.get(k) != self.header.get(k))
            if diff:
                raise DatasetError(f"{self.path}: cannot resume, the run differs in {diff}")
        elif self.path.exists() and any(self.path.iterdir()):
            raise DatasetError(f"{self.path}: directory is not empty and is not a dataset")
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        for tmp in (self.path / "shards").glob(".tmp-*"):  # leftovers of an interrupted write
            shutil.rmtree(tmp)
        _write_json(run_file, self.header)
        self.shards = self._existing_shards()

    def _existing_shards(self) -> list[dict]:
        out = []
        for d in sorted((self.path / "shards").iterdir()):
            if d.name.startswith(".") or not (d / "shard.json").exists():
                continue
            out.append(_read_json(d / "shard.json"))
        return out

    def done_tasks(self) -> set[int]:
        return {int(i) for s in self.shards for i in s["task_index"]}

    def write_chunk(self, task_index: np.ndarray, hist: History, returns: np.ndarray) -> None:
        n = len(self.shards)
        while (self.path / "shards" / f"{n:05d}{self.tag}").exists():
            n += 1
        name = f"{n:05d}{self.tag}"
        tmp = self.path / "shards" / f".tmp-{name}"
        tmp.mkdir()
        arrays = {**hist._asdict(), "episode_returns": np.asarray(returns, np.float32),
                  "task_index": np.asarray(task_index, np.int64)}
        files = {}
        for key, arr in arrays.items():
            f = tmp / f"{key}.npy"
            with open(f, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr))
                fh.flush()
                os.fsync(fh.fileno())
            files[key] = {"sha256": _sha256(f), "shape": list(arr.shape),
                          "dtype": np.asarray(arr).dtype.str}
        info = {"name": name, "task_index": [int(i) for i in task_index], "files": files}
        _write_json(tmp / "shard.json", info)
        tmp.rename(self.path / "shards" / name)
        self.shards.append(info)

    def finalize(self) -> dict:
        """Check every planned task is stored exactly once, then write ``metadata.json``."""
        self.shards = self._existing_shards()  # with the shards of other processes
        stored = [int(i) for s in self.shards for i in s["task_index"]]
        planned = [int(i) for i in self.header["task_index"]]
        if sorted(stored) != sorted(planned):
            missing = sorted(set(planned) - set(stored))[:10]
            dup = len(stored) - len(set(stored))
            raise DatasetError(f"{self.path}: shards do not match the plan "
                               f"(missing e.g. {missing}, {dup} duplicated)")
        f0 = self.shards[0]["files"]
        meta = {
            **self.header,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shapes": {k: f0[k]["shape"][1:] for k in (*FIELDS, "episode_returns")},
            "dtypes": {k: f0[k]["dtype"] for k in (*FIELDS, "episode_returns")},
            "shards": self.shards,
        }
        _write_json(self.path / "metadata.json", meta)
        return meta


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


# -- loader ------------------------------------------------------------------------------------
def read_meta(path: str | Path, env_name: str | None = None) -> dict:
    """``metadata.json`` checked for presence, format version and env name."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset directory")
    meta_file = path / "metadata.json"
    if not meta_file.exists():
        raise DatasetError(f"{meta_file}: missing file (collection unfinished or not a dataset; "
                           "rerun `dicp collect ... --resume`)")
    meta = _read_json(meta_file)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{meta_file}: unknown format version {meta.get('format_version')!r}"
                           f" (this code reads version {FORMAT_VERSION})")
    if env_name is not None and meta.get("env_name") != env_name:
        raise DatasetError(f"{path}: dataset is for env {meta.get('env_name')!r}, "
                           f"but {env_name!r} was asked for")
    return meta


def _open(path: Path, shard: dict, key: str, verify: bool) -> np.ndarray:
    f = path / "shards" / shard["name"] / f"{key}.npy"
    if not f.exists():
        raise DatasetError(f"{f}: missing file")
    info = shard["files"][key]
    if verify and _sha256(f) != info["sha256"]:
        raise DatasetError(f"{f}: checksum mismatch (file corrupted or modified)")
    try:
        arr = np.load(f, mmap_mode="r")
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # a garbled header
        raise DatasetError(f"{f}: unreadable .npy ({e})") from None
    if list(arr.shape) != info["shape"] or arr.dtype.str != info["dtype"]:
        raise DatasetError(f"{f}: shape/dtype {arr.shape}/{arr.dtype.str} differ from the "
                           f"metadata {info['shape']}/{info['dtype']}")
    return arr


def load_history(path: str | Path, env_name: str | None = None, task_index: Any = None,
                 streams: Any = None, steps: Any = None,
                 verify: bool = True) -> tuple[History, DatasetMeta]:
    """Load (a part of) a dataset as numpy arrays, reading only what is asked.

    ``task_index``: indices into ``env.task_list()`` (returned in that order; default all,
    in stored order); ``streams``: int, slice or index array; ``steps``: an int (time
    prefix) or a slice. ``verify`` hashes the shards that are read."""
    path = Path(path)
    meta = read_meta(path, env_name)
    where = {int(t): (si, row) for si, s in enumerate(meta["shards"])
             for row, t in enumerate(s["task_index"])}
    if task_index is None:
        want = [int(t) for t in meta["task_index"]]
    else:
        want = [int(t) for t in np.atleast_1d(np.asarray(task_index))]
        absent = [t for t in want if t not in where]
        if absent:
            raise DatasetError(f"{path}: tasks {absent[:10]} are not in this dataset")
    st = slice(None) if streams is None else streams
    if isinstance(st, int | np.integer):
        st = slice(int(st), int(st) + 1)
    tm = slice(0, steps) if isinstance(steps, int | np.integer) else (steps or slice(None))
    used = sorted({where[t][0] for t in want})
    opened = {si: {k: _open(path, meta["shards"][si], k, verify)
                   for k in (*FIELDS, "episode_returns")} for si in used}
    parts = {k: [np.asarray(opened[where[t][0]][k][where[t][1]][st][:, tm]) for t in want]
             for k in FIELDS}
    hist = History(*(np.stack(parts[k]) if want else np.zeros((0,)) for k in FIELDS))
    all_tasks = {int(t): tup for t, tup in zip(meta["task_index"], meta["tasks"], strict=True)}
    dm = DatasetMeta(
        path=str(path), format_version=meta["format_version"], env_name=meta["env_name"],
        env_kwargs=meta.get("env_kwargs", {}), split=meta["split"],
        task_index=np.asarray(want, np.int64),
        tasks=np.asarray([all_tasks[t] for t in want], np.int32),
        episode_returns=np.stack([np.asarray(opened[where[t][0]]["episode_returns"][where[t][1]])
                                  for t in want]) if want else np.zeros((0, 0), np.float32),
        source=meta["source"], source_config=meta["source_config"], seed=int(meta["seed"]),
        version=meta["version"],
        shapes=meta["shapes"], dtypes=meta["dtypes"], n_tasks_total=len(meta["task_index"]),
        raw=meta)
    return hist, dm
