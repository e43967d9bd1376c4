import uuid
from tests.test_connection import make_pki, tls_proxy
from tests.worker_process import clean_env, run_oppflow, temporal_address

async def test_abort(temporal_env, tmp_path):
    pki = make_pki(tmp_path)
    plain = {"TEMPORAL_ADDRESS": temporal_address(temporal_env.client), "TEMPORAL_NAMESPACE": "default"}
    codes = []
    for _ in range(6):
        codes.append((await run_oppflow(["setup-temporal"], clean_env(**plain), tmp_path))[0])
    print("plain", codes)
    async with tls_proxy(temporal_address(temporal_env.client), pki) as address:
        tls = {"TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default",
               "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca), "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
               "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key)}
        codes = []
        for _ in range(6):
            codes.append((await run_oppflow(["setup-temporal"], clean_env(**tls), tmp_path))[0])
        print("tls", codes)
