"""Unmodified Hugging Face clients against `modeldepot serve --auth required`, with HF_TOKEN set
to a depot token and without; secrets never written anywhere; TLS with a test CA."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from serverutil import ROOT, free_port, running_server, server_log, stop_process

CONTACT = "ops@example.com"

CLIENT = r"""
import json, sys, traceback
out = {}
def attempt(key, fn):
    try:
        out[key] = fn()
    except Exception as e:
        out[key] = {"raised": type(e).__name__, "message": str(e)}

from huggingface_hub import HfApi, hf_hub_download, snapshot_download, whoami
import transformers, datasets
datasets.disable_progress_bars()
api = HfApi()
for what in sys.argv[1].split(","):
    if what == "whoami":
        attempt("whoami", lambda: whoami()["name"])
    elif what == "info":
        attempt("info", lambda: [api.model_info("org/clf").id, api.model_info("org/clf").sha])
    elif what == "snapshot":
        attempt("snapshot", lambda: snapshot_download("org/clf"))
    elif what == "model":
        attempt("model", lambda: type(transformers.AutoModelForSequenceClassification
                                      .from_pretrained("org/clf")).__name__)
    elif what == "tokenizer":
        attempt("tokenizer", lambda: transformers.AutoTokenizer.from_pretrained("org/clf")("hi")["input_ids"])
    elif what == "dataset":
        attempt("dataset", lambda: datasets.load_dataset("org/notes", split="train").to_list())
    elif what == "private":
        attempt("private", lambda: api.model_info("org/private").private)
    elif what == "gated":
        attempt("gated", lambda: hf_hub_download("org/gated", "config.json"))
    elif what == "gated-model":
        attempt("gated-model", lambda: transformers.AutoConfig.from_pretrained("org/gated").model_type)
    elif what == "download":
        attempt("download", lambda: open(hf_hub_download("org/clf", "config.json")).read())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    from registry.auth.tokens import create_token, revoke_token
    from registry.auth.visibility import grant, set_visibility
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir
    from registry.models import Repo
    from sqlalchemy import update

    root = tmp_path_factory.mktemp("clients")
    home = root / "home"
    depot = Depot(Settings.from_env(home=home))
    clf = models.get("classifier")
    for name in ("org/clf", "org/private", "org/gated"):
        import_dir(depot, clf, name)
    notes = root / "notes"
    notes.mkdir()
    (notes / "train.csv").write_text("text,label\nhello,0\nworld,1\n")
    import_dir(depot, notes, "org/notes", repo_type="dataset")
    set_visibility(depot, "model", "org/private", "private")
    with depot.db.session(write=True) as s:
        s.execute(update(Repo).where(Repo.name == "org/gated").values(gated="auto"))
    team, _ = create_token(depot, "team", ["read"], actor="test")
    outsider, _ = create_token(depot, "outsider", ["read"], actor="test")
    gone, _ = create_token(depot, "gone", ["read"], actor="test")
    revoke_token(depot, "gone")
    for repo in ("org/private", "org/gated"):
        grant(depot, "team", "model", repo, "test")
    with running_server(home, ["--no-inference", "--auth", "required", "--admin-contact",
                               CONTACT]) as url:
        yield {"root": root, "home": home, "url": url, "depot": depot,
               "secrets": {"team": team, "outsider": outsider, "gone": gone}}


def _client(served, what: str, token: str | None, endpoint: str | None = None, **env) -> dict:
    full = dict(os.environ, HF_ENDPOINT=endpoint or served["url"], TRANSFORMERS_VERBOSITY="error",
                HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HOME=str(served["root"] / f"hf-{token}"),
                HF_HUB_DISABLE_XET="1", HF_UPDATE_DOWNLOAD_COUNTS="0", **env)
    full.pop("HF_TOKEN", None)
    if token:
        full["HF_TOKEN"] = served["secrets"][token]
    p = subprocess.run([sys.executable, "-c", CLIENT, what], env=full, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    served.setdefault("outputs", []).append(p.stdout + p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_clients_work_with_a_depot_token(served, guard_log):
    out = _client(served, "whoami,info,snapshot,model,tokenizer,dataset,private,gated,gated-model",
                  "team")
    commit = served["depot"].resolve("model", "org/clf")["commit"]
    assert out["whoami"] == "team"
    assert out["info"] == ["org/clf", commit]
    assert out["snapshot"].endswith(f"models--org--clf/snapshots/{commit}")
    assert out["model"] == "BertForSequenceClassification"
    assert out["tokenizer"][0] == 2  # [CLS]
    assert out["dataset"] == [{"text": "hello", "label": 0}, {"text": "world", "label": 1}]
    assert out["private"] is True
    assert out["gated"].endswith("config.json")
    assert out["gated-model"] == "bert"
    # datasets asks 'datasets-server.<endpoint host>' (a hard-coded host pattern); the guard
    # refuses that lookup and datasets carries on
    assert {line.split(" ", 1)[1] for line in guard_log().splitlines()} <= {
        "resolve datasets-server.127.0.0.1"}


def test_clients_fail_with_their_usual_errors_without_one(served):
    out = _client(served, "whoami,info,model,dataset,download", None)
    assert out["whoami"]["raised"] == "LocalTokenNotFoundError"
    assert out["info"]["raised"] == "RepositoryNotFoundError"
    assert "authentication required" in out["info"]["message"]
    assert out["model"]["raised"] == "OSError"
    assert "is not a local folder and is not a valid model identifier" in out["model"]["message"]
    assert out["dataset"]["raised"] == "DatasetNotFoundError"
    assert out["download"]["raised"] == "RepositoryNotFoundError"


def test_gated_and_private_repos_refuse_a_token_without_approval(served):
    out = _client(served, "private,gated,gated-model", "outsider")
    assert out["private"]["raised"] == "RepositoryNotFoundError"
    assert out["gated"]["raised"] == "GatedRepoError"
    assert (f"ask {CONTACT} to run 'modeldepot access grant outsider org/gated'"
            in out["gated"]["message"])
    assert out["gated-model"]["raised"] == "OSError"
    assert "You are trying to access a gated repo" in out["gated-model"]["message"]


def test_a_revoked_token_is_invalid_credentials(served):
    out = _client(served, "whoami,info", "gone")
    assert out["whoami"]["raised"] == "HTTPError"
    assert out["whoami"]["message"].startswith("Invalid user token. The token from HF_TOKEN "
                                               "environment variable is invalid.")
    assert out["info"]["raised"] == "HfHubHTTPError"
    assert "Invalid credentials in Authorization header" in out["info"]["message"]


def test_hf_auth_whoami(served):
    env = dict(os.environ, HF_ENDPOINT=served["url"], HF_TOKEN=served["secrets"]["team"],
               HF_HOME=str(served["root"] / "hf-cli"), NO_COLOR="1")
    hf = Path(sys.executable).parent / "hf"
    p = subprocess.run([str(hf), "auth", "whoami"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [line.replace("\x1b[1m", "").replace("\x1b[0m", "") for line in p.stdout.splitlines()]
    assert lines == ["user:  team", f"Authenticated through private endpoint: {served['url']}"]
    served.setdefault("outputs", []).append(p.stdout + p.stderr)


# -- TLS ----------------------------------------------------------------------------------------


def _test_ca(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modeldepot test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = root / "ca.pem", root / "cert.pem", root / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_round_trip_with_a_test_ca_and_plain_http_refused(served, tmp_path):
    ca, cert, key = _test_ca(tmp_path)
    port = free_port()
    log_path = tmp_path / "tls-serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--home", str(served["home"]), "serve", "--port",
             str(port), "--no-inference", "--auth", "required", "--tls-cert", str(cert),
             "--tls-key", str(key)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(url + "/health", verify=str(ca), timeout=2).ok:
                        break
                except requests.exceptions.ConnectionError:
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
            with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust it
                requests.get(url + "/health", timeout=5)
            plain = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
            assert (plain.status_code, plain.json()) == (400, {
                "error": "This port speaks HTTPS: use https://", "error_type": "PlainHttpToHttps"})
            out = _client(served, "info,download", "team", endpoint=url,
                          REQUESTS_CA_BUNDLE=str(ca), SSL_CERT_FILE=str(ca))
            commit = served["depot"].resolve("model", "org/clf")["commit"]
            assert out["info"] == ["org/clf", commit]
            assert json.loads(out["download"])["model_type"] == "bert"
            anonymous = _client(served, "info", None, endpoint=url, REQUESTS_CA_BUNDLE=str(ca))
            assert anonymous["info"]["raised"] == "RepositoryNotFoundError"
            assert proc.poll() is None  # the plain-HTTP attempt did not hurt the server
        finally:
            stop_process(proc)
    text = log_path.read_text()
    served.setdefault("outputs", []).append(text)
    assert f"modeldepot serving {served['home']} on https://127.0.0.1:{port}" in text
    assert "Traceback" not in text


def test_secrets_never_appear_in_logs_records_or_listings(served, cli):
    # run last in this module: it reads what the other tests left behind
    home = served["home"]
    listing = cli("--home", home, "token", "list").output + \
        cli("--home", home, "token", "list", "--json").output
    audit = cli("--home", home, "log", "--access", "--json").output
    events = cli("--home", home, "log", "--json", "--limit", "1000").output
    assert '"token":"team"' in audit and '"token":"outsider"' in audit
    texts = {"token list": listing, "access log": audit, "events": events,
             "server output": server_log(home, served["url"]),
             "client output": "\n".join(served.get("outputs", []))}
    for path in home.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert len(texts) > 10
    for name, secret in served["secrets"].items():
        body = secret[4:]  # the part after the public mdp_ prefix
        leaks = [where for where, text in texts.items() if body in text or body[:20] in text]
        assert leaks == [], f"the secret of {name!r} is in {leaks}"
