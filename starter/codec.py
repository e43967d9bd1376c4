"""Optional payload encryption: AES-GCM over every payload Temporal stores (workflow input,
updates, signals, query answers, activity arguments and results, failure messages,
summaries). Search attributes stay plaintext: Temporal indexes them.

``OPPFLOW_ENCRYPTION_KEYS=kid2:<base64 key>,kid1:<base64 key>``: the first key encrypts,
every listed key decrypts, so a rotation adds the new key in front and drops the old one
once no open workflow history needs it. Keys are 16, 24 or 32 random bytes
(``python -c "import os, base64; print(base64.b64encode(os.urandom(32)).decode())"``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Annotated

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
KEYS_VARIABLE = "OPPFLOW_ENCRYPTION_KEYS"


class EncryptionKeyError(ValueError):
    pass


class CodecSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPPFLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    encryption_keys: str | None = None
    codec_port: int = 8081
    # The Temporal UI's origin(s): the browser calls the codec server from there.
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8233", "http://localhost:8080"]
    )
    # When set, the codec server answers only requests with `Authorization: Bearer <token>`.
    codec_auth_token: str | None = None

    @field_validator("codec_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return _split(value) if isinstance(value, str) else value

    @field_validator("encryption_keys", "codec_auth_token", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_keys(spec: str) -> dict[str, bytes]:
    """``kid:base64key,...`` in order (the first encrypts); a clear error names what is wrong."""
    keys: dict[str, bytes] = {}
    for entry in _split(spec):
        kid, sep, encoded = entry.partition(":")
        kid = kid.strip()
        if not sep or not kid:
            raise EncryptionKeyError(f"{KEYS_VARIABLE}: entry {entry[:12]!r}... is not kid:base64key")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise EncryptionKeyError(f"{KEYS_VARIABLE}: key {kid!r} is not valid base64") from None
        if len(key) not in (16, 24, 32):
            raise EncryptionKeyError(
                f"{KEYS_VARIABLE}: key {kid!r} is {len(key)} bytes, AES-GCM needs 16, 24 or 32"
            )
        if kid in keys:
            raise EncryptionKeyError(f"{KEYS_VARIABLE}: key id {kid!r} appears twice")
        keys[kid] = key
    if not keys:
        raise EncryptionKeyError(f"{KEYS_VARIABLE} is set but holds no key")
    return keys


class EncryptionCodec(PayloadCodec):
    """Encrypts each payload whole (metadata and data) with the first key; the key id travels
    in the outer payload's metadata so any listed key can decrypt it later."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise EncryptionKeyError("an encryption codec needs at least one key")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.key_id = next(iter(keys))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self.key_id]
        kid = self.key_id.encode()
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), kid)
            encoded.append(Payload(metadata={"encoding": ENCODING, KEY_ID: kid}, data=nonce + sealed))
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)  # written before encryption was turned on
                continue
            kid = payload.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise EncryptionKeyError(
                    f"payload encrypted with key {kid!r}, which is not in {KEYS_VARIABLE}"
                )
            try:
                plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], kid.encode())
            except InvalidTag:
                raise EncryptionKeyError(
                    f"payload under key {kid!r} does not authenticate (wrong key or altered data)"
                ) from None
            inner = Payload()
            inner.ParseFromString(plain)
            decoded.append(inner)
        return decoded


def codec_from_env(settings: CodecSettings | None = None) -> EncryptionCodec | None:
    settings = settings or CodecSettings()
    if not (settings.encryption_keys or "").strip():
        return None
    return EncryptionCodec(parse_keys(settings.encryption_keys or ""))


class SharedPayloadConverter(PydanticPayloadConverter):
    """The SDK's pydantic payload converter, one instance per process.

    The SDK builds a payload converter for every workflow it runs (so that a converter can
    depend on the workflow: serialization context), and each pydantic one keeps its own
    cache of type adapters: the start input's, every update's. That is memory for every
    cached deal, and the adapters built again for every deal a worker runs or replays.
    Nothing in this converter depends on the workflow, so every workflow gets the same one;
    its type-adapter cache is thread-safe (``functools.lru_cache``).
    """

    def __new__(cls) -> SharedPayloadConverter:
        return _SHARED_PAYLOAD_CONVERTER

    def __init__(self) -> None:
        pass  # the one instance is initialised once, below


_SHARED_PAYLOAD_CONVERTER = object.__new__(SharedPayloadConverter)
PydanticPayloadConverter.__init__(_SHARED_PAYLOAD_CONVERTER)

# Plain JSON through pydantic (what temporalio.contrib.pydantic's converter writes), with
# the one shared payload converter.
plain_data_converter = DataConverter(payload_converter_class=SharedPayloadConverter)


def encrypted_converter(codec: PayloadCodec) -> DataConverter:
    """The plain converter with the codec; failure messages are moved into the
    encrypted attributes too, so refusal texts do not sit in plaintext in history."""
    return dataclasses.replace(
        plain_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter(settings: CodecSettings | None = None) -> DataConverter:
    """What every oppflow client and worker uses: plain JSON payloads, encrypted when keys are set."""
    codec = codec_from_env(settings)
    return plain_data_converter if codec is None else encrypted_converter(codec)
