"""TLS and the API key at the lab's load balancer: a real nginx on lb-1, a real self-signed
certificate (made here with `cryptography`), requests from this machine to 127.0.0.1, then back to
plain HTTP with the key files gone. The GPU nodes are not touched (--limit lb-1)."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
import urllib.error
import urllib.request


from gpufleet.lab.topology import LB_HTTP_PORT_BASE
from tests.lab.conftest import deploy

URL = f"127.0.0.1:{LB_HTTP_PORT_BASE + 1}"  # lb-1's nginx (:80), published by the lab
KEY_FILES = "/etc/nginx/gpufleet-tls/cert.pem /etc/nginx/gpufleet-tls/key.pem /etc/nginx/gpufleet-api-key.conf"


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet-lab-lb")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "lb-cert.pem", tmp_path / "lb-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return str(cert_file), str(key_file)


def _get(url: str, context=None, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_tls_and_the_api_key_at_the_lb_then_back_to_plain_http(deployed, hosts, tmp_path):
    cert_file, key_file = _self_signed(tmp_path)
    token = secrets.token_hex(32)  # 64 characters: longer than a map's hashed strings may be
    api_key = tmp_path / "vllm-api-key"
    api_key.write_text(token + "\n")
    api_key.chmod(0o600)
    on = deploy("--limit", "lb-1", "--data", f"lb_tls_cert_file={cert_file}", "--data", f"lb_tls_key_file={key_file}",
                "--data", "lb_require_api_key=true", "--data", f"vllm_api_key_file={api_key}")
    try:
        assert on["rc"] == 0, on["stderr"][-3000:]
        assert token not in on["stderr"] + repr(on["changed"])
        trusted = ssl.create_default_context(cafile=cert_file)
        assert _get(f"https://{URL}/v1/models", trusted) == 401  # no key: nginx answers, no replica asked
        assert _get(f"https://{URL}/v1/models", trusted, token="wrong") == 401
        assert _get(f"https://{URL}/v1/models", trusted, token=token.upper()) == 401  # case counts, as in vLLM
        assert _get(f"https://{URL}/v1/models", trusted, token=token) == 200
        assert _get(f"https://{URL}/lb-health", trusted) == 200  # the health check stays open
        assert _get(f"http://{URL}/lb-health") == 400  # no plain HTTP: "sent to HTTPS port"
        lb = hosts["lb-1"]
        modes = lb.run(f"stat -c '%n %U %a' {KEY_FILES}").stdout.split("\n")
        assert [m.split()[1:] for m in modes if m] == [["root", "644"], ["root", "600"], ["root", "600"]]
        assert token not in lb.run("cat /etc/nginx/nginx.conf").stdout
        # The certificate's expiry reaches node_exporter (alerts LbCertificateExpiresSoon/Expired).
        from cryptography import x509

        not_after = int(x509.load_pem_x509_certificate(open(cert_file, "rb").read()).not_valid_after_utc.timestamp())
        scraped = lb.run("curl -sf http://127.0.0.1:9100/metrics | grep '^gpufleet_lb_tls_cert_not_after'").stdout
        assert scraped and float(scraped.split()[-1]) == not_after, scraped  # node_exporter may print it as 1.7651e+09
    finally:
        off = deploy("--limit", "lb-1")
    assert off["rc"] == 0, off["stderr"][-3000:]
    assert _get(f"http://{URL}/lb-health") == 200 and _get(f"http://{URL}/v1/models") == 200
    assert hosts["lb-1"].run(f"ls {KEY_FILES} 2>/dev/null").stdout.strip() == ""
    assert hosts["lb-1"].run("ls /var/lib/prometheus/node-exporter/gpufleet_lb_tls.prom 2>/dev/null").stdout == ""
