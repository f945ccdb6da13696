"""The embedded stack's own secrets: made on first start, kept in the data directory (one
file each, mode 0600), reused on every later start, handed to the children as ``DUB_*``
environment variables. No built-in value exists anywhere.

    <data_dir>/secrets/signing-secret   DUB_SIGNING_SECRET  (HMAC key of file URLs)
    <data_dir>/secrets/admin-token      DUB_ADMIN_TOKEN     (the /admin credential)
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from pydantic import SecretStr

from dubcore.errors import ConfigurationError
from dubcore.settings import require_secret

log = logging.getLogger(__name__)

#: Environment variable -> file name under ``<data_dir>/secrets``.
SECRET_FILES = {"DUB_SIGNING_SECRET": "signing-secret", "DUB_ADMIN_TOKEN": "admin-token"}
#: Random bytes per secret (``token_urlsafe`` writes them as 43 characters).
SECRET_BYTES = 32


def ensure_secrets(data_dir: Path) -> dict[str, str]:
    """Environment variable -> value of each stack secret, generated when missing."""
    folder = data_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return {variable: _ensure(folder / name, variable)
            for variable, name in SECRET_FILES.items()}


def _ensure(path: Path, variable: str) -> str:
    if not path.exists():
        _create(path, secrets.token_urlsafe(SECRET_BYTES))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
        os.chmod(path, 0o600)
    try:
        return require_secret(variable, SecretStr(path.read_text().strip()),
                              f"{path} is empty")
    except ConfigurationError as e:
        raise ConfigurationError(f"{path}: {e.message}; delete the file to have a new one "
                                 "made") from e


def _create(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` (mode 0600) unless another process made it first: the
    file appears whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        try:
            os.link(tmp, path)  # fails if a concurrent start made it first: keep theirs
        except FileExistsError:
            return
        log.info("generated %s", path)
    finally:
        tmp.unlink(missing_ok=True)
