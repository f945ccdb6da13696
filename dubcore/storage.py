"""Object storage behind one interface: the local filesystem (default) or S3.

Workflows and activities pass object keys, never bytes. Clients move media with
presigned URLs, so the API is never in the data path on S3; on local storage the API
serves HMAC-signed, expiring URLs itself, streaming in constant memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from dubcore.errors import BadInputError, NotFoundError, StorageError
from dubcore.settings import Settings, require_secret

log = logging.getLogger(__name__)


@dataclass
class PresignedUrl:
    url: str
    method: str
    expires_at: int
    """Unix seconds."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers the client must send exactly as given (they are part of the signature)."""


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path) -> None: ...
    def local_path(self, key: str) -> Any: ...  # context manager yielding a Path
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def presign_put(self, key: str, content_type: str, expires_s: int,
                    content_length: int | None = None) -> PresignedUrl: ...
    def presign_get(self, key: str, expires_s: int,
                    filename: str | None = None) -> PresignedUrl: ...
    def read_location(self, key: str) -> str: ...


@dataclass
class MultipartUpload:
    """A multipart upload: PUT each part to its URL, then complete with the ETags."""

    upload_id: str
    part_size_bytes: int
    parts: list[PresignedUrl]


#: S3 takes at most 5 GiB per single PUT and 10,000 parts of at least 5 MiB each.
S3_MAX_SINGLE_PUT_BYTES = 5 * 1024**3
S3_MIN_PART_BYTES = 8 * 1024**2
S3_MAX_PARTS = 10_000


def validate_key(key: str) -> str:
    """Keys are relative POSIX paths without '..', so they can never escape a root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key or "\x00" in key:
        raise BadInputError(f"invalid object key: {key!r}")
    return str(path)


def put_json(store: ObjectStore, key: str, value: Any) -> None:
    store.put_bytes(key, json.dumps(value, ensure_ascii=False, indent=1).encode(),
                    "application/json")


def get_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


# ---- local filesystem -------------------------------------------------------------------


def _sign(secret: str, *parts: str) -> str:
    msg = "\n".join(parts).encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


class LocalStore:
    """Objects as files under ``root``; URLs signed with HMAC-SHA256 and served by the API."""

    def __init__(self, root: Path, secret: str, base_url: str) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self._base_url = base_url.rstrip("/")

    def path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(f"object not found: {key}") from e

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self.path(key), path)
        except FileNotFoundError as e:
            raise NotFoundError(f"object not found: {key}") from e

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"object not found: {key}")
        yield path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as e:
            raise NotFoundError(f"object not found: {key}") from e

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix)
        if base.is_file():
            base.unlink()
            return 1
        if not base.is_dir():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count

    # URLs ------------------------------------------------------------------------------

    def presign_put(self, key: str, content_type: str, expires_s: int,
                    content_length: int | None = None) -> PresignedUrl:
        expires_at = int(time.time()) + expires_s
        length = "" if content_length is None else str(content_length)
        sig = _sign(self._secret, "PUT", validate_key(key), str(expires_at), content_type, length)
        query = {"expires": expires_at, "ct": content_type, "len": length, "sig": sig}
        url = f"{self._base_url}/v1/files/{quote(key)}?{urlencode(query)}"
        headers = {"Content-Type": content_type}
        if content_length is not None:
            headers["Content-Length"] = length
        return PresignedUrl(url=url, method="PUT", expires_at=expires_at, headers=headers)

    def presign_get(self, key: str, expires_s: int,
                    filename: str | None = None) -> PresignedUrl:
        expires_at = int(time.time()) + expires_s
        name = filename or ""
        sig = _sign(self._secret, "GET", validate_key(key), str(expires_at), name)
        query = {"expires": expires_at, "name": name, "sig": sig}
        url = f"{self._base_url}/v1/files/{quote(key)}?{urlencode(query)}"
        return PresignedUrl(url=url, method="GET", expires_at=expires_at)

    def read_location(self, key: str) -> str:
        """Where a reader in this deployment (the API's probe) opens the object."""
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"object not found: {key}")
        return str(path)

    def verify(self, method: str, key: str, expires_at: int, sig: str, *extra: str) -> bool:
        """True when ``sig`` is ours for this method, key and expiry, and not expired."""
        expected = _sign(self._secret, method, validate_key(key), str(expires_at), *extra)
        return hmac.compare_digest(expected, sig) and expires_at >= time.time()


# ---- S3 ---------------------------------------------------------------------------------


class S3Store:
    """Any S3-compatible store (AWS, MinIO, Ceph...) through boto3; URLs are real presigned
    S3 URLs, so media never passes through the API."""

    def __init__(self, bucket: str, client: Any, presign_client: Any | None = None) -> None:
        self.bucket = bucket
        self._s3 = client
        self._presign = presign_client or client

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        import boto3  # deferred: the workflow sandbox must never import boto3
        from botocore.config import Config

        config = Config(signature_version="s3v4")  # V2 is refused by AWS and signs no length

        def client(endpoint: str | None) -> Any:
            return boto3.client("s3", endpoint_url=endpoint, region_name=settings.s3_region,
                                config=config)

        public = settings.s3_public_endpoint_url
        return cls(settings.s3_bucket, client(settings.s3_endpoint_url),
                   client(public) if public else None)

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                raise NotFoundError(f"object not found: {key}") from e
            raise StorageError(f"S3 {what} {key} failed: {code or e}") from e
        except BotoCoreError as e:
            raise StorageError(f"S3 {what} {key} failed: {e}") from e

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._s3.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3.upload_file(str(path), self.bucket, validate_key(key), ExtraArgs=extra)
        except (ClientError, BotoCoreError) as e:
            raise StorageError(f"S3 upload {key} failed: {e}") from e

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._call("put", key, self._s3.put_object, Key=validate_key(key), Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        obj = self._call("get", key, self._s3.get_object, Key=validate_key(key))
        return bytes(obj["Body"].read())

    def download(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3.download_file(self.bucket, validate_key(key), str(path))
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey"}:
                raise NotFoundError(f"object not found: {key}") from e
            raise StorageError(f"S3 download {key} failed: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"S3 download {key} failed: {e}") from e

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="opendub-") as tmp:
            path = Path(tmp) / PurePosixPath(key).name
            self.download(key, path)
            yield path

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        head = self._call("head", key, self._s3.head_object, Key=validate_key(key))
        return int(head["ContentLength"])

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=validate_key(prefix)):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                count += len(keys)
        return count

    def presign_put(self, key: str, content_type: str, expires_s: int,
                    content_length: int | None = None) -> PresignedUrl:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": validate_key(key),
                                  "ContentType": content_type}
        headers = {"Content-Type": content_type}
        if content_length is not None:
            params["ContentLength"] = content_length
            headers["Content-Length"] = str(content_length)
        url = self._presign.generate_presigned_url("put_object", Params=params,
                                                   ExpiresIn=expires_s)
        return PresignedUrl(url=url, method="PUT", expires_at=int(time.time()) + expires_s,
                            headers=headers)

    def presign_get(self, key: str, expires_s: int,
                    filename: str | None = None) -> PresignedUrl:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": validate_key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url = self._presign.generate_presigned_url("get_object", Params=params,
                                                   ExpiresIn=expires_s)
        return PresignedUrl(url=url, method="GET", expires_at=int(time.time()) + expires_s)


    def read_location(self, key: str) -> str:
        """A short-lived URL on the workers' endpoint, for readers that stream (PyAV)."""
        self.size(key)
        return str(self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": validate_key(key)},
            ExpiresIn=900))

    # Multipart: for sources larger than one PUT allows ------------------------------------

    def start_multipart(self, key: str, content_type: str, size_bytes: int,
                        expires_s: int) -> MultipartUpload:
        part = max(S3_MIN_PART_BYTES, -(-size_bytes // S3_MAX_PARTS))
        count = -(-size_bytes // part)
        created = self._call("create multipart", key, self._s3.create_multipart_upload,
                             Key=validate_key(key), ContentType=content_type)
        upload_id = str(created["UploadId"])
        expires_at = int(time.time()) + expires_s
        urls = [PresignedUrl(
            url=self._presign.generate_presigned_url(
                "upload_part", ExpiresIn=expires_s,
                Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id,
                        "PartNumber": n}),
            method="PUT", expires_at=expires_at) for n in range(1, count + 1)]
        return MultipartUpload(upload_id=upload_id, part_size_bytes=part, parts=urls)

    def complete_multipart(self, key: str, upload_id: str,
                           etags: list[tuple[int, str]]) -> None:
        parts = [{"PartNumber": n, "ETag": tag} for n, tag in sorted(etags)]
        self._call("complete multipart", key, self._s3.complete_multipart_upload,
                   Key=validate_key(key), UploadId=upload_id,
                   MultipartUpload={"Parts": parts})


def make_store(settings: Settings) -> ObjectStore:
    """The configured store; with the local backend, `ConfigurationError` when the signing
    secret is missing or weak (anyone knowing it could read and write every object)."""
    if settings.storage_backend == "s3":
        return S3Store.from_settings(settings)
    secret = require_secret("DUB_SIGNING_SECRET", settings.signing_secret,
                            "the local storage backend signs its file URLs with it")
    return LocalStore(settings.objects_dir, secret, settings.public_base_url)
