"""One way to reach Temporal: Temporal's own env/TOML conventions, oppflow's data converter."""

from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from starter.codec import data_converter
from starter.observability import client_interceptors
from starter.settings import Settings


def connect_config(settings: Settings) -> dict:
    """Keyword arguments for `Client.connect`: TEMPORAL_* env vars and TOML profiles win,
    otherwise the local dev server on `settings.temporal_port`, namespace `default`."""
    config = dict(ClientConfig.load_client_connect_config())
    config.setdefault("target_host", f"localhost:{settings.temporal_port}")
    config.setdefault("namespace", "default")
    return config


async def connect_temporal(settings: Settings) -> Client:
    config = connect_config(settings)
    try:
        return await Client.connect(
            **config, data_converter=data_converter(), interceptors=client_interceptors()
        )
    except RuntimeError as exc:  # the SDK reports an unreachable server or a TLS refusal this way
        reason = " ".join(str(exc).split())
        raise ConnectionError(f"cannot connect to Temporal at {config['target_host']}: {reason}") from exc
