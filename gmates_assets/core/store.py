"""The artifact store: memoized, atomically committed, content-hashed artifact directories.

The root (`GMATES_HOME`, default `.gmates/`) is a local path, a `file://` URL, or any fsspec URL (`s3://`,
`gs://`, `memory://`, ...) so that several machines can share one store. Layout under the root:

    artifacts/<asset>/<input_key>/                 a committed artifact (complete by construction)
    artifacts/<asset>/<input_key>/_artifact.json   its record: input key, content hash, partition, inputs
    by_content/<asset>/<content_hash>              the input key that produced that content (data version lookup)
    locks/<asset>/<input_key>.lock                 the build lock of one artifact (owner, heartbeat)
    quarantine/<asset>/<input_key>-<time>/         an artifact whose record was unreadable, moved aside by repair

An artifact is keyed by `input_key = hash(asset, code version, partition, content hashes of every input)`, so a
repeated or reverted build finds what exists and reuses it; the key never contains a path of this machine.

Commit. Compute functions always write into a local work directory (zarr, parquet and safetensors writers need
one); temp files that interrupted atomic writes left there are deleted and never hashed.
- Local root: the work directory is `artifacts/<asset>/.partial-<input_key>/`; it receives its record and then
  becomes visible by one `rename`. A killed step leaves at most a `.partial-` directory, which never looks
  complete, and a resumable step restarts from the chunks it holds.
- fsspec root: the work directory lives in the local cache ($GMATES_CACHE/stores/<root hash>/work/). Commit
  uploads the files under a temp prefix `artifacts/<asset>/.upload-<input_key>-<token>/`, moves them under the
  key (a server-side copy on object stores), and writes `_artifact.json` last: the record is the commit
  marker, and a prefix without one is invisible and cleared by the next builder. Readers get a local copy:
  `Artifact.path` downloads the artifact once into the cache and checks it against its content hash.

Verify on read. A step gets an input artifact only after its files hash to the recorded content hash
(`require_verified`); a file is re-read only when its (device, inode, size, mtime, ctime) differs from the
stamp this host remembered when it last hashed it ($GMATES_CACHE/file_hashes.sqlite), so an unchanged input
costs a stat, and an in-place edit (ctime changes even when mtime is restored) is caught before any compute.
The record also lists every file's sha256 ("files"), so a mismatch names the file.

Repair. `discard_with_descendants` removes a corrupt artifact and every artifact built from it, transitively
(each record keeps its inputs' content hashes under "inputs"), so the next sync rebuilds the whole chain. An
artifact whose record is not valid JSON (`unreadable_records`) is moved aside under quarantine/ (`quarantine`),
never deleted.

Locks. A build takes `locks/<asset>/<input_key>.lock` by exclusive create (O_EXCL on a local or NFS path,
`open(mode="xb")` on fsspec: a conditional put on S3, GCS and Azure), writes its owner (host, pid, token) and
refreshes a heartbeat while it works. A second builder of the same key waits, then reuses what the first one
committed. A lock whose owner is a dead process on this host, or whose heartbeat is older than `stale_after`
seconds, is taken over (under a second `.break` lock, so two waiters cannot both take it).
"""
from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import fsspec

from .hashing import (
    BOOKKEEPING_NAMES,
    FileHashCache,
    cache_dir,
    cached_file_digests,
    combine_file_digests,
    content_files,
    file_digests,
    hash_dir,
    is_temp_name,
    remove_temp_files,
    sha256_stream,
    stable_hash,
)
from .progress import atomic_write_text

RECORD_FILE = "_artifact.json"
DEFAULT_HOME = ".gmates"
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0
LOCAL_PROTOCOLS = ("file", "local")


QUARANTINE_DIR = "quarantine"


class StoreError(RuntimeError):
    pass


class UnreadableRecord(StoreError):
    """An artifact's `_artifact.json` is not valid JSON: `gmates verify --repair` quarantines the artifact."""

    def __init__(self, asset: str, input_key: str, location: str, cause: str):
        super().__init__(f"{location}: the artifact record is not valid JSON ({cause}); `gmates verify --repair` "
                         f"moves the artifact aside under {QUARANTINE_DIR}/ and rebuilds it")
        self.asset, self.input_key = asset, input_key


class CorruptInput(StoreError):
    """An input artifact's files differ from its recorded content hash: no step may read them."""


@dataclass(frozen=True, eq=False)
class Artifact:
    """A committed artifact. `path` is always a local directory (a remote artifact is fetched on first use);
    `location` is where it is stored (a local path or a URL)."""

    asset: str
    input_key: str
    content_hash: str
    location: str
    partition: Optional[str] = None
    record: Mapping[str, Any] = field(default_factory=dict)
    fetch: Optional[Callable[[], Path]] = field(default=None, repr=False)

    @cached_property
    def path(self) -> Path:
        return self.fetch() if self.fetch else Path(self.location)

    def file(self, name: str) -> Path:
        return self.path / name


def store_root_from_env() -> str:
    return os.environ.get("GMATES_HOME", DEFAULT_HOME)


def is_local_root(root: str | os.PathLike) -> bool:
    protocol, _ = fsspec.core.split_protocol(os.fspath(root))
    return protocol is None or protocol in LOCAL_PROTOCOLS


# ---------------------------------------------------------------------------------------------- locks
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildLock:
    """An exclusive-create lock file with owner and heartbeat; works on local, NFS and fsspec paths."""

    def __init__(self, fs, path: str, what: str, stale_after: float = STALE_AFTER_SECONDS,
                 heartbeat: float = HEARTBEAT_SECONDS, log: Callable[[str], None] = lambda _m: None):
        self.fs, self.path, self.what, self.log = fs, path, what, log
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _payload(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time(), "what": self.what}).encode()

    def _holder(self, path: Optional[str] = None) -> Optional[dict]:
        try:
            return json.loads(self.fs.cat_file(path or self.path))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError):
            return None  # being rewritten right now

    def _try_create(self, path: str) -> bool:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            with self.fs.open(path, "xb") as handle:
                handle.write(self._payload())
            return True
        except FileExistsError:
            return False

    def _is_stale(self, holder: Optional[dict], path: str) -> bool:
        if holder is None:  # unreadable: judge by the file's age
            try:
                modified = self.fs.modified(path).timestamp()
            except (NotImplementedError, OSError):  # gone, or a filesystem without modification times
                return False
            return time.time() - modified > self.stale_after
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_after

    def _break(self, seen: Optional[dict]) -> None:
        """Remove a stale lock, unless someone else broke it (and maybe re-took it) first."""
        breaker = self.path + ".break"
        if not self._try_create(breaker):
            if self._is_stale(self._holder(breaker), breaker):
                self.fs.rm_file(breaker)
            return
        try:
            current = self._holder()
            if current == seen or (current is None and seen is None):
                self.log(f"taking over the stale build lock of {self.what} ({seen or 'unreadable'})")
                self.fs.rm_file(self.path)
        finally:
            self.fs.rm_file(breaker)

    def acquire(self) -> None:
        delay, announced = 0.05, False
        while not self._try_create(self.path):
            holder = self._holder()
            if holder == {}:
                continue  # released between our attempt and the read
            if self._is_stale(holder, self.path):
                self._break(holder)
                continue
            if not announced:
                owner = f"{holder.get('host')} pid {holder.get('pid')}" if holder else "another process"
                self.log(f"waiting for {owner}, which is building {self.what}")
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._beat = threading.Thread(target=self._keep_alive, name=f"lock {self.what}", daemon=True)
        self._beat.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder = self._holder()
            if holder is None:
                continue
            if holder.get("token") != self.token:
                self.lost = True
                return
            self.fs.pipe_file(self.path, self._payload())

    def confirm(self) -> None:
        """Raise if another process took the lock over (this one looked dead): its result wins."""
        holder = self._holder()
        if self.lost or (holder is not None and holder.get("token") != self.token):
            raise StoreError(f"lost the build lock of {self.what} to another process; nothing was committed")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.fs.rm_file(self.path)


# ---------------------------------------------------------------------------------------------- the store
class ArtifactStore:
    def __init__(self, root: str | os.PathLike, cache: Optional[str | os.PathLike] = None,
                 stale_after: float = STALE_AFTER_SECONDS, heartbeat: float = HEARTBEAT_SECONDS):
        text = os.fspath(root)
        self.local = is_local_root(text)
        self.stale_after, self.heartbeat = stale_after, heartbeat
        if self.local:
            local = fsspec.core.strip_protocol(text) if "://" in text else text
            self.root: Path | str = Path(local).expanduser().resolve()
            self.fs = fsspec.filesystem("file")
            self._base = self.root.as_posix()
        else:
            self.fs, self._base = fsspec.core.url_to_fs(text)
            self._base = self._base.rstrip("/")
            self.root = self.fs.unstrip_protocol(self._base)
            self.cache = Path(cache) if cache else cache_dir() / "stores" / stable_hash(self.root)
        self._scanned: dict[str, dict[str, str]] = {}
        self.digest_cache = FileHashCache()  # this host's stamps of files it has hashed (verify on read)

    # ------------------------------------------------------------------ keys and paths
    @staticmethod
    def input_key(asset: str, code_version: str, inputs: Mapping[str, Any], partition: Optional[str] = None) -> str:
        """Key of the artifact that `asset` computes from these inputs (content hashes, never paths)."""
        return stable_hash(
            {"asset": asset, "code_version": code_version, "partition": partition, "inputs": dict(inputs)}, 32
        )

    def _at(self, *parts: str) -> str:
        return "/".join((self._base,) + parts)

    def _final(self, asset: str, input_key: str) -> str:
        return self._at("artifacts", asset, input_key)

    def partial_dir(self, asset: str, input_key: str) -> Path:
        """The local work directory of a build (stable per key, so resumable steps find their chunks)."""
        if self.local:
            return Path(self._at("artifacts", asset, f".partial-{input_key}"))
        return self.cache / "work" / asset / f".partial-{input_key}"

    def _index(self, asset: str, content_hash: str) -> str:
        return self._at("by_content", asset, content_hash)

    # ------------------------------------------------------------------ lookups
    def get(self, asset: str, input_key: str) -> Optional[Artifact]:
        """The committed artifact under this key, or None (no record means not committed)."""
        record_path = f"{self._final(asset, input_key)}/{RECORD_FILE}"
        try:
            raw = self.fs.cat_file(record_path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or not isinstance(record.get("content_hash"), str):
                raise ValueError("no content_hash")
        except ValueError as err:
            raise UnreadableRecord(asset, input_key, record_path, str(err)) from None
        return self._artifact(asset, input_key, record)

    def _artifact(self, asset: str, input_key: str, record: Mapping[str, Any]) -> Artifact:
        final = self._final(asset, input_key)
        if self.local:
            return Artifact(asset, input_key, record["content_hash"], final, record.get("partition"), record)
        return Artifact(asset, input_key, record["content_hash"], self.fs.unstrip_protocol(final),
                        record.get("partition"), record,
                        fetch=lambda: self._download(asset, input_key, record["content_hash"]))

    def by_content(self, asset: str, content_hash: str) -> Optional[Artifact]:
        """The artifact of `asset` whose content hash (its Dagster data version) is `content_hash`.

        A missing or wrong index entry (a kill between commit and index write) is repaired from the records.
        """
        try:
            key = self.fs.cat_file(self._index(asset, content_hash)).decode().strip()
        except FileNotFoundError:
            key = ""
        found = self.get(asset, key) if key else None
        if found is not None and found.content_hash == content_hash:
            return found
        key = self._scan(asset).get(content_hash)
        found = self.get(asset, key) if key else None
        if found is not None:
            self._write_index(found)
        return found

    def _scan(self, asset: str) -> dict[str, str]:
        if asset not in self._scanned:
            self._scanned[asset] = {a.content_hash: a.input_key for a in self.artifacts(asset)}
        return self._scanned[asset]

    def require_by_content(self, asset: str, content_hash: str, partition: Optional[str] = None) -> Artifact:
        art = self.by_content(asset, content_hash)
        if art is None:
            where = f"{asset}[{partition}]" if partition else asset
            raise StoreError(
                f"the store at {self.root} has no artifact of {where} with content hash {content_hash[:16]}…; "
                f"it was built against another GMATES_HOME or deleted. `gmates sync` rebuilds it."
            )
        return art

    def require_verified(self, asset: str, content_hash: str, partition: Optional[str] = None) -> Artifact:
        """`require_by_content`, then `verify_on_read`: what every step gets its inputs through."""
        artifact = self.require_by_content(asset, content_hash, partition)
        self.verify_on_read(artifact)
        return artifact

    def verify_on_read(self, artifact: Artifact) -> int:
        """Raise CorruptInput unless the artifact's files (its local copy) hash to its recorded content hash.

        Files whose stat stamp matches one this host remembered are not read again. Returns how many files
        were read (0 when every stamp matched)."""
        root = artifact.path
        files = content_files(root)
        digests, read = cached_file_digests(files, self.digest_cache)
        pairs = [(f.relative_to(root).as_posix(), d) for f, d in zip(files, digests)]
        if combine_file_digests(pairs) != artifact.content_hash:
            where = f"{artifact.asset}[{artifact.partition}]" if artifact.partition else artifact.asset
            raise CorruptInput(
                f"input {where} at {artifact.location} does not match its recorded content hash "
                f"{artifact.content_hash[:16]}… ({_differences(dict(pairs), artifact.record.get('files'))}); "
                f"its bytes changed after it was built, so no step reads it. Run `gmates verify --repair`: it "
                f"rebuilds {where} and everything built from it")
        return read

    def ensure_indexed(self, artifact: Artifact) -> None:
        """Repair the by_content entry of a reused artifact (cheap when it is already right)."""
        try:
            indexed = self.fs.cat_file(self._index(artifact.asset, artifact.content_hash)).decode().strip()
        except FileNotFoundError:
            indexed = None
        if indexed != artifact.input_key:
            self._write_index(artifact)

    def _write_index(self, artifact: Artifact) -> None:
        self._write_text(self._index(artifact.asset, artifact.content_hash), artifact.input_key)

    def _write_text(self, path: str, text: str) -> None:
        if self.local:
            atomic_write_text(path, text)
        else:
            self.fs.pipe_file(path, text.encode("utf-8"))

    # ------------------------------------------------------------------ building
    @contextmanager
    def locked(self, asset: str, input_key: str, log: Callable[[str], None] = lambda _m: None) -> Iterator[BuildLock]:
        lock = BuildLock(self.fs, self._at("locks", asset, f"{input_key}.lock"), f"{asset}/{input_key[:12]}",
                         self.stale_after, self.heartbeat, log)
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    @contextmanager
    def build(self, asset: str, input_key: str, partition: Optional[str] = None,
              record: Optional[Mapping[str, Any]] = None, resumable: bool = False,
              log: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
        """Yield a work directory under the artifact's build lock; on success hash, record and commit it.

        The work directory is stable for the key, so a resumable step that was killed finds its finished
        chunks there (temp files of interrupted writes are removed first). On an exception nothing is
        committed; a step that is not resumable also has its work directory removed, so bad input leaves no
        trace in the store.
        """
        with self.locked(asset, input_key, log) as lock:
            with self._work_dir(asset, input_key, resumable) as work:
                yield work
            self._commit(lock, asset, input_key, work, partition, record or {})

    def get_or_build(self, asset: str, input_key: str, fill: Callable[[Path], None],
                     partition: Optional[str] = None, record: Optional[Mapping[str, Any]] = None,
                     resumable: bool = False, log: Callable[[str], None] = lambda _m: None) -> tuple[Artifact, bool]:
        """(artifact, reused): the stored artifact for this key, or `fill` a work directory and commit it.

        Two processes asking for the same key at once build it once: the second waits on the build lock and
        then reuses the first one's result. A reuse repairs the artifact's by_content entry.
        """
        found = self.get(asset, input_key)
        if found is None:
            with self.locked(asset, input_key, log) as lock:
                found = self.get(asset, input_key)
                if found is None:
                    with self._work_dir(asset, input_key, resumable) as work:
                        fill(work)
                    self._commit(lock, asset, input_key, work, partition, record or {})
                    return self.get(asset, input_key), False
        self.ensure_indexed(found)
        return found, True

    @contextmanager
    def _work_dir(self, asset: str, input_key: str, resumable: bool) -> Iterator[Path]:
        partial = self.partial_dir(asset, input_key)
        if not resumable:
            shutil.rmtree(partial, ignore_errors=True)
        elif partial.is_dir():
            remove_temp_files(partial)  # never resume from (or hash) a half-written file
        try:
            partial.mkdir(parents=True, exist_ok=True)
            yield partial
        except BaseException as err:
            if resumable:
                remove_temp_files(partial)
            else:
                shutil.rmtree(partial, ignore_errors=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"no space left while building {asset} in {partial}: {err}") from err
            raise

    def _commit(self, lock: BuildLock, asset: str, input_key: str, partial: Path, partition,
                record: Mapping[str, Any]) -> None:
        lock.confirm()
        remove_temp_files(partial)
        files = file_digests(partial)
        full_record = {
            "asset": asset,
            "input_key": input_key,
            "partition": partition,
            "content_hash": combine_file_digests(files),
            "files": dict(files),  # names the changed file when a read finds the content hash wrong
            **dict(record),
        }
        content_hash = full_record["content_hash"]
        text = json.dumps(full_record, indent=2, sort_keys=True)
        atomic_write_text(partial / RECORD_FILE, text)
        if self.local:
            self._install_local(asset, input_key, partial)
        else:
            self._upload(asset, input_key, partial, text)
        self._scanned.pop(asset, None)
        self._write_text(self._index(asset, content_hash), input_key)

    def _install_local(self, asset: str, input_key: str, partial: Path) -> None:
        final = Path(self._final(asset, input_key))
        if final.exists() and self.get(asset, input_key) is None:
            shutil.rmtree(final)  # a directory without a record was never committed; we hold the lock
        try:
            os.rename(partial, final)
        except OSError:
            if self.get(asset, input_key) is None:  # not a concurrent identical commit: a real failure
                raise
            shutil.rmtree(partial, ignore_errors=True)

    def _upload(self, asset: str, input_key: str, partial: Path, record_text: str) -> None:
        """Files under a temp prefix, moved under the key, then the record: the commit marker, written last."""
        final = self._final(asset, input_key)
        if self.get(asset, input_key) is not None:
            shutil.rmtree(partial, ignore_errors=True)
            return
        for leftover in self.fs.glob(self._at("artifacts", asset, f".upload-{input_key}-*")) + [final]:
            if self.fs.exists(leftover):  # what a crashed commit left; we hold the lock
                self.fs.rm(leftover, recursive=True)
        temp = self._at("artifacts", asset, f".upload-{input_key}-{uuid.uuid4().hex[:12]}")
        files = [p for p in sorted(partial.rglob("*")) if p.is_file() and p.name != RECORD_FILE]
        for file in files:
            self.fs.put_file(str(file), f"{temp}/{file.relative_to(partial).as_posix()}")
        for file in files:
            rel = file.relative_to(partial).as_posix()
            self.fs.mv(f"{temp}/{rel}", f"{final}/{rel}")
        if self.fs.exists(temp):
            self.fs.rm(temp, recursive=True)
        self.fs.pipe_file(f"{final}/{RECORD_FILE}", record_text.encode("utf-8"))
        cached = self.cache / "artifacts" / asset / input_key
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.rename(partial, cached)  # the local copy readers on this machine will use
        else:
            shutil.rmtree(partial, ignore_errors=True)

    def _download(self, asset: str, input_key: str, content_hash: str) -> Path:
        target = self.cache / "artifacts" / asset / input_key
        if (target / RECORD_FILE).is_file():
            return target
        tmp = target.with_name(f".{input_key}.tmp-{uuid.uuid4().hex[:12]}")
        final = self._final(asset, input_key)
        try:
            for remote in self.fs.find(final):
                local = tmp / remote[len(final) + 1:]
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(local))
            if hash_dir(tmp) != content_hash:
                raise StoreError(f"the copy of {self.fs.unstrip_protocol(final)} does not match its content hash "
                                 f"{content_hash[:16]}…; run `gmates verify --repair`")
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / RECORD_FILE).is_file():  # not a concurrent download of the same artifact
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ verification and repair
    def stored_hash(self, artifact: Artifact) -> str:
        """The content hash of the files as they are in the store now (re-read, never the record)."""
        final = self._final(artifact.asset, artifact.input_key)
        if self.local:
            return hash_dir(final)
        pairs = []
        for remote in sorted(self.fs.find(final)):
            rel = remote[len(final) + 1:]
            if Path(rel).name in BOOKKEEPING_NAMES or any(is_temp_name(part) for part in rel.split("/")):
                continue
            with self.fs.open(remote, "rb") as handle:
                pairs.append((rel, sha256_stream(handle)))
        return combine_file_digests(pairs)

    def discard(self, artifact: Artifact) -> None:
        """Remove an artifact (e.g. a corrupt one, so the next sync rebuilds it): record first, then files."""
        final = self._final(artifact.asset, artifact.input_key)
        if self.local:
            trash = Path(self._at("artifacts", artifact.asset, f".tmp-discard-{uuid.uuid4().hex[:12]}"))
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.fs.rm_file(f"{final}/{RECORD_FILE}")
            self.fs.rm(final, recursive=True)
            shutil.rmtree(self.cache / "artifacts" / artifact.asset / artifact.input_key, ignore_errors=True)
        index = self._index(artifact.asset, artifact.content_hash)
        if self.fs.exists(index):
            self.fs.rm_file(index)
        self._scanned.pop(artifact.asset, None)

    def descendants(self, roots: list[Artifact]) -> list[Artifact]:
        """Every stored artifact built, directly or transitively, from one of `roots` (by the content hashes
        each record keeps under "inputs"), each listed after the one it was built from; `roots` left out."""
        tainted = {(a.asset, a.content_hash) for a in roots}
        everything = [a for asset in self.asset_names() for a in self.artifacts(asset)]
        found: list[Artifact] = []
        grew = True
        while grew:
            grew = False
            for art in everything:
                if (art.asset, art.content_hash) in tainted or art in found:
                    continue
                if any((asset, version) in tainted for asset, version in _input_versions(art.record)):
                    found.append(art)
                    tainted.add((art.asset, art.content_hash))
                    grew = True
        return found

    def discard_with_descendants(self, artifacts: list[Artifact]) -> list[Artifact]:
        """Discard corrupt artifacts and everything built from them (so sync rebuilds the whole chain);
        returns the descendants discarded."""
        later = self.descendants(artifacts)
        for art in list(artifacts) + later:
            self.discard(art)
        return later

    def unreadable_records(self) -> list[UnreadableRecord]:
        """Every committed artifact of the store whose record is not valid JSON."""
        found = []
        for asset in self.asset_names():
            for name in self._artifact_dirs(asset):
                try:
                    self.get(asset, name)
                except UnreadableRecord as err:
                    found.append(err)
        return found

    def quarantine(self, asset: str, input_key: str) -> str:
        """Move an artifact aside (never delete it) under quarantine/<asset>/<input_key>-<time>/; returns where."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self._at(QUARANTINE_DIR, asset, f"{input_key}-{stamp}-{uuid.uuid4().hex[:6]}")
        final = self._final(asset, input_key)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, target)
        else:
            self.fs.mv(final, target, recursive=True)
            shutil.rmtree(self.cache / "artifacts" / asset / input_key, ignore_errors=True)
        self._scanned.pop(asset, None)
        return target if self.local else self.fs.unstrip_protocol(target)

    # ------------------------------------------------------------------ inspection
    def asset_names(self) -> list[str]:
        try:
            return sorted(Path(p).name for p in self.fs.ls(self._at("artifacts"), detail=False))
        except FileNotFoundError:
            return []

    def _artifact_dirs(self, asset: str) -> list[str]:
        try:
            names = sorted(Path(p).name for p in self.fs.ls(self._at("artifacts", asset), detail=False))
        except FileNotFoundError:
            return []
        return [name for name in names if not name.startswith(".")]

    def artifacts(self, asset: str) -> list[Artifact]:
        """The committed artifacts of `asset` (one with an unreadable record is not listed: see
        `unreadable_records`)."""
        found = []
        for name in self._artifact_dirs(asset):
            try:
                art = self.get(asset, name)
            except UnreadableRecord:
                continue
            if art is not None:
                found.append(art)
        return found

    def partials(self, asset: str) -> list[str]:
        """Work directories and upload prefixes of builds that did not commit."""
        work = self.partial_dir(asset, "x").parent
        local = sorted(str(p) for p in work.glob(".partial-*")) if work.is_dir() else []
        uploads = [] if self.local else sorted(self.fs.glob(self._at("artifacts", asset, ".upload-*")))
        return local + uploads


def _input_versions(record: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(asset, content hash) of every input a record lists ({asset: {partition: content hash}})."""
    inputs = record.get("inputs")
    for asset, by_partition in (inputs.items() if isinstance(inputs, dict) else ()):
        for version in (by_partition.values() if isinstance(by_partition, dict) else ()):
            if isinstance(version, str):
                yield asset, version


def _differences(actual: dict[str, str], recorded: Any) -> str:
    """Which files differ from the record's per-file digests (older records have none)."""
    if not isinstance(recorded, dict):
        return "a file was changed, added or removed"
    changed = [name for name in sorted(actual) if name in recorded and recorded[name] != actual[name]]
    parts = [f"changed file {name}" for name in changed]
    parts += [f"missing file {name}" for name in sorted(set(recorded) - set(actual))]
    parts += [f"extra file {name}" for name in sorted(set(actual) - set(recorded))]
    return ", ".join(parts) or "a file was changed"
