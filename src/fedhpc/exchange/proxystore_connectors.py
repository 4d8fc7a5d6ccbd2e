"""ProxyStore connectors as `ObjectStore`s: what the proxystore mover and its jobs move bytes through.

Only ProxyStore's connector layer is used, with bytes: its Store and proxy
layer serializes Python objects, and nothing but safetensors and JSON crosses
the boundary between server and facility. ProxyStore is an optional
dependency (``pip install 'fedhpc[globus]'``), imported only when a store is
opened, on the server and in the facility's jobs alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from fedhpc.atomic_files import atomic_write_bytes
from fedhpc.config import GlobusStoreConfig, ProxyStoreMoverConfig
from fedhpc.errors import AuthError, ConfigError, TransferError
from fedhpc.exchange.directory_objects import DirectoryObjects, ObjectStore

PROXYSTORE_LOGIN_HINT = (
    "run `proxystore-globus-auth login` on this host (add `-c UUID` for each collection that needs a data_access "
    "consent), or set PROXYSTORE_GLOBUS_CLIENT_ID and PROXYSTORE_GLOBUS_CLIENT_SECRET to act as a service identity"
)


class StoreSpec(BaseModel):
    """What ``fedhpc worker --store`` receives, as JSON: the facility's mover settings and the run's namespace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(min_length=1, description="prefix of every object name of this run and facility")
    mover: ProxyStoreMoverConfig


def open_objects(spec: StoreSpec) -> DirectoryObjects:
    return DirectoryObjects(open_store(spec.mover), spec.namespace, int(spec.mover.chunk_size))


def open_store(config: ProxyStoreMoverConfig) -> ObjectStore:
    """The connector `config` names; raises `ConfigError` where ProxyStore is not installed."""
    try:
        import proxystore  # noqa: F401 - only to report its absence clearly
    except ImportError:
        raise ConfigError(
            "mover kind proxystore needs the proxystore package on this machine: pip install 'fedhpc[globus]'"
        ) from None
    if config.connector == "redis":
        import redis
        from proxystore.connectors.redis import RedisConnector, RedisKey

        assert config.redis is not None
        host, port = config.redis.host, config.redis.port
        def redis_hint(error: BaseException) -> str:
            if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
                return "check that redis-server runs there and accepts connections from this host (mover.redis)"
            return "the Redis server refused it (out of memory: raise its maxmemory, or delete old runs' objects)"

        return KeyedConnector(RedisConnector(host, port), RedisKey, f"Redis at {host}:{port}", (redis.RedisError,),
                              redis_hint)
    if config.connector == "file":
        from proxystore.connectors.file import FileConnector, FileKey

        assert config.file is not None
        store_dir = str(config.file.store_dir)
        return KeyedConnector(
            # clear=False: ProxyStore's default removes the whole directory when the connector closes
            FileConnector(store_dir, clear=False), lambda name: FileKey(flat_name(name)),
            f"the store directory {store_dir}", (OSError,),
            lambda error: "check that this host sees that directory and may write there (mover.file.store_dir)",
        )
    assert config.globus is not None
    return GlobusObjects(config.globus)


def flat_name(name: str) -> str:
    """A file name for an object name: connectors that keep objects as files keep them in one directory."""
    return quote(name, safe="")


class KeyedConnector:
    """A ProxyStore connector whose keys we can build from a name (Redis, File), so both sides find an object.

    ``set`` is seen at once by every reader, so `flush` has nothing to do.
    """

    def __init__(
        self, connector: Any, key: Callable[[str], Any], where: str, errors: tuple[type[BaseException], ...],
        hint: Callable[[BaseException], str],
    ):
        self.connector = connector
        self.key = key
        self.where = where
        self.errors = errors
        self.hint = hint

    def get(self, name: str) -> bytes | None:
        try:
            data = self.connector.get(self.key(name))
        except self.errors as e:
            raise self._failed("read", name, e) from e
        return None if data is None else bytes(data)

    def set(self, name: str, data: bytes) -> None:
        try:
            self.connector.set(self.key(name), data)
        except self.errors as e:
            raise self._failed("write", name, e) from e

    def exists(self, name: str) -> bool:
        try:
            return bool(self.connector.exists(self.key(name)))
        except self.errors as e:
            raise self._failed("look up", name, e) from e

    def flush(self, wait: bool) -> None:
        pass

    def _failed(self, action: str, name: str, error: BaseException) -> TransferError:
        return TransferError(f"cannot {action} {name} in {self.where}: {error}; {self.hint(error)}")


class GlobusObjects:
    """ProxyStore's GlobusConnector under names both sides can compute.

    GlobusConnector (proxystore 1.x) stores an object only under a random name
    (`put`), which the other side could learn only through some other channel.
    So an object is written the way its `put` writes one, a file in this host's
    collection directory that a Globus transfer then copies to the other
    collections, but under our name; `flush` starts one transfer for all files
    written since the last. Reading is its own `get` with a key that names no
    transfer: the file in this host's directory, once a transfer brought it.
    Untested against Globus here (it needs ProxyStore's own Globus login).
    """

    def __init__(self, config: GlobusStoreConfig):
        from proxystore.connectors.globus import GlobusConnector

        require_proxystore_login()
        endpoints = {str(uuid): endpoint.model_dump() for uuid, endpoint in config.endpoints.items()}
        self.where = f"the Globus store of collections {', '.join(endpoints)}"
        self.connector = self._call("open", "the connector", lambda: GlobusConnector(
            endpoints, clear=False, polling_interval=config.polling_interval, timeout=config.timeout
        ))
        self._unsent: list[str] = []

    def get(self, name: str) -> bytes | None:
        from proxystore.connectors.globus import GlobusKey

        data = self._call("read", name, lambda: self.connector.get(GlobusKey(flat_name(name), ())))
        return None if data is None else bytes(data)

    def exists(self, name: str) -> bool:
        from proxystore.connectors.globus import GlobusKey

        return bool(self._call("look up", name, lambda: self.connector.exists(GlobusKey(flat_name(name), ()))))

    def set(self, name: str, data: bytes) -> None:
        def write() -> None:
            # a reader on this host never sees half an object
            atomic_write_bytes(Path(self.connector._get_filepath(flat_name(name))), data, make_parents=True)

        self._call("write", name, write)
        self._unsent.append(flat_name(name))

    def flush(self, wait: bool) -> None:
        """One transfer of every file written since the last flush; with `wait`, return once it has succeeded."""
        if not self._unsent:
            return
        unsent, self._unsent = self._unsent, []
        tasks = self._call("transfer", f"{len(unsent)} object(s)", lambda: self.connector._transfer_files(unsent))
        if wait:
            self._call("wait for", f"the transfer of {len(unsent)} object(s)",
                       lambda: self.connector._wait_on_tasks(tasks))

    def _call(self, action: str, name: str, call: Callable[[], Any]) -> Any:
        """`call`, its failure a `TransferError`: ProxyStore raises a plain Exception when Globus refuses a
        transfer, RuntimeError when one times out, ValueError when no collection's host_regex matches this host."""
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - see above
            raise TransferError(f"cannot {action} {name} in {self.where}: {e}") from e


def require_proxystore_login() -> None:
    """Raise `AuthError` unless ProxyStore holds Globus tokens here: its connector would prompt for a login."""
    import globus_sdk
    from proxystore.globus.app import get_globus_app

    app = get_globus_app()
    globus_sdk.TransferClient(app=app)  # adds the Transfer scope to what the app must hold tokens for
    if app.login_required():
        raise AuthError(f"no ProxyStore Globus login on this host for mover connector globus: {PROXYSTORE_LOGIN_HINT}")
