"""``oppflow codec-server``: lets the Temporal Web UI (and ``temporal`` CLI) show encrypted
payloads in plaintext, following Temporal's remote codec protocol: ``POST /decode`` and
``POST /encode`` take and answer ``{"payloads": [...]}`` in protobuf JSON.

Point the UI at it: ``temporal server start-dev --ui-codec-endpoint http://localhost:8081``,
``TEMPORAL_CODEC_ENDPOINT`` for the ``temporalio/ui`` image, or the UI's "Codec Server"
setting. The browser calls it directly, so the UI's origin must be listed in
``OPPFLOW_CODEC_CORS_ORIGINS``. With ``OPPFLOW_CODEC_AUTH_TOKEN`` set, requests need
``Authorization: Bearer <token>``.
"""

import hmac
from typing import TYPE_CHECKING, Annotated, Any

import typer
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from starter.codec import CodecSettings, EncryptionCodec, EncryptionKeyError, parse_keys

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(codec: PayloadCodec, *, cors_origins: list[str], auth_token: str | None = None) -> "FastAPI":
    # FastAPI is imported here so that `oppflow` commands that do not serve stay quick to start.
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.middleware.cors import CORSMiddleware

    app = FastAPI(title="oppflow codec server", docs_url=None, redoc_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=cors_origins,
        allow_credentials=True,
        allow_methods=["POST"],
        allow_headers=["authorization", "content-type", "x-namespace"],
    )

    def authorized(request: Request) -> None:
        if auth_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), auth_token.encode()):
            raise HTTPException(401, "codec server: missing or wrong bearer token")

    async def payloads_of(request: Request) -> Payloads:
        try:
            return json_format.Parse(await request.body(), Payloads(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise HTTPException(400, f"body: not a Payloads JSON object ({exc})") from None

    @app.post("/encode", dependencies=[Depends(authorized)])
    async def encode(request: Request) -> dict[str, Any]:
        payloads = await payloads_of(request)
        return json_format.MessageToDict(Payloads(payloads=await codec.encode(payloads.payloads)))

    @app.post("/decode", dependencies=[Depends(authorized)])
    async def decode(request: Request) -> dict[str, Any]:
        payloads = await payloads_of(request)
        try:
            decoded = await codec.decode(payloads.payloads)
        except EncryptionKeyError as exc:
            raise HTTPException(422, str(exc)) from None
        return json_format.MessageToDict(Payloads(payloads=decoded))

    return app


def app_from_settings(settings: CodecSettings | None = None) -> "FastAPI":
    settings = settings or CodecSettings()
    if not settings.encryption_keys:
        raise EncryptionKeyError("OPPFLOW_ENCRYPTION_KEYS is not set: the codec server has no key to use")
    return create_app(
        EncryptionCodec(parse_keys(settings.encryption_keys)),
        cors_origins=settings.codec_cors_origins,
        auth_token=settings.codec_auth_token,
    )


def command(
    port: Annotated[int | None, typer.Option(help="default: OPPFLOW_CODEC_PORT or 8081")] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Serve /encode and /decode for the Temporal UI when payload encryption is on."""
    import uvicorn

    settings = CodecSettings()
    try:
        app = app_from_settings(settings)
    except EncryptionKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    uvicorn.run(app, host=host, port=port or settings.codec_port, log_level="warning")
