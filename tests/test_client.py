"""The DIVA client end to end: real HTTP to the emulator subprocess on loopback."""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

import ingest
from ingest import defaults
from ingest.client import DivaClient, RequestInfo
from ingest.config import DivaConfig, load_config
from ingest.emulator.server import EmulatorProcess
from ingest.errors import (
    ConfigError,
    DivaAccessDenied,
    DivaAuthError,
    DivaBusy,
    DivaNotFound,
    DivaObjectExists,
    DivaRefused,
    DivaServerError,
    DivaUnavailable,
)
from ingest.protocol import DELETE_ON_SOURCE, RequestState

from .support.emulator import RunningEmulator
from .support.wait import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "diva-examples"


def stats(emulator: RunningEmulator) -> dict[str, Any]:
    response = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10)
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc


def knobs(emulator: RunningEmulator, **changes: float) -> None:
    httpx.put(f"{emulator.url}/_emulator/faults", json=changes, timeout=10).raise_for_status()


@pytest.fixture
def operator(emulator: RunningEmulator) -> Iterator[DivaClient]:
    with DivaClient(emulator.url, "operator", "operator") as client:
        yield client


def finished(client: DivaClient, request_id: int, timeout: float = 15.0) -> RequestInfo:
    return wait_for(lambda: (i := client.request(request_id)).state.finished and i, timeout)


def drop(emulator: RunningEmulator, relpath: str, data: bytes) -> Path:
    path = emulator.servers["NAS"] / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def body(name: str, components: list[str], *, qos: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "objectName": name, "collectionName": "NEWS", "components": components,
        "media": "DISK1", "sourceServer": "NAS", "filePathRoot": "/", "qos": qos, **extra,
    }  # fmt: skip


def test_one_login_serves_many_calls_and_close_logs_out(emulator: RunningEmulator) -> None:
    before = stats(emulator)
    with DivaClient(emulator.url, "operator", "operator") as client:
        for _ in range(10):
            client.versions()
        client.servers()
        client.arrays()
        client.groups()
        assert client.logins == 1
    after = stats(emulator)
    assert after["logins"] - before["logins"] == 1
    assert after["logouts"] - before["logouts"] == 1


def test_a_call_leaves_nothing_for_the_cycle_collector(
    emulator: RunningEmulator, operator: DivaClient
) -> None:
    """httpx's response and its stream refer to each other: each call left some 40
    objects that only the cycle collector freed, on the daemon's threads. A read
    response lets its stream go; refcounting frees the rest."""
    data = b"cycle" * 100
    drop(emulator, "clips/gc.mxf", data)
    operator.versions()  # logged in, the pool made
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            operator.versions()
        rid = operator.archive(body("gc", ["clips/gc.mxf"], qos=3))
        operator.request(rid)
        left = gc.collect()
    finally:
        gc.enable()
    assert left == 0


def test_expired_token_means_one_new_login(emulator: RunningEmulator) -> None:
    knobs(emulator, token_ttl=1)
    with DivaClient(emulator.url, "operator", "operator") as client:
        client.versions()
        token = client._auth.token
        wait_for(lambda: httpx.get(
            f"{emulator.url}/manager/versions", headers={"Authorization": token or ""}
        ).status_code == 403, timeout=10)  # fmt: skip
        client.versions()
        assert client.logins == 2
        assert client._auth.token != token


def test_bearer_scheme_is_accepted(emulator: RunningEmulator) -> None:
    with DivaClient(emulator.url, "operator", "operator", auth_scheme="bearer") as client:
        assert client.versions()


def test_wrong_password_is_an_auth_error(emulator: RunningEmulator) -> None:
    with DivaClient(emulator.url, "operator", "not-the-password") as client:
        with pytest.raises(DivaAuthError) as info:
            client.login()
    assert "not-the-password" not in str(info.value)


def test_logout_revokes_the_token(emulator: RunningEmulator) -> None:
    client = DivaClient(emulator.url, "operator", "operator")
    client.versions()
    token = client._auth.token
    client.logout()
    response = httpx.get(f"{emulator.url}/manager/versions", headers={"Authorization": token or ""})
    assert response.status_code == 403
    client.close()


@pytest.mark.parametrize(
    ("user", "may_archive", "may_delete"),
    [("user", False, False), ("operator", True, False), ("admin", True, True)],
)
def test_role_matrix_through_the_client(
    emulator: RunningEmulator, user: str, may_archive: bool, may_delete: bool
) -> None:
    drop(emulator, f"{user}.mxf", b"x")
    with DivaClient(emulator.url, user, user) as client:
        if may_archive:
            finished(client, client.archive(body(user, [f"{user}.mxf"])))
        else:
            with pytest.raises(DivaAccessDenied) as info:
                client.archive(body(user, [f"{user}.mxf"]))
            assert info.value.status_code == 1035
        if may_delete:
            assert finished(client, client.delete(user, "NEWS")).state is RequestState.COMPLETED
            assert client.object_info(user, "NEWS") is None
        else:
            with pytest.raises(DivaAccessDenied):
                client.delete(user, "NEWS")


@pytest.mark.parametrize("delete_on_source", [False, True])
def test_archive_stores_the_bytes_and_deletes_only_when_asked(
    emulator: RunningEmulator, operator: DivaClient, delete_on_source: bool
) -> None:
    data = bytes(range(256)) * 400
    source = drop(emulator, "clips/a.mxf", data)
    qos = 3 | (DELETE_ON_SOURCE if delete_on_source else 0)
    rid = operator.archive(body("a", ["clips/a.mxf"], qos=qos))
    info = finished(operator, rid)
    assert info.state is RequestState.COMPLETED and info.progress == 100
    obj = operator.object_info("a", "NEWS")
    assert obj is not None
    [component] = obj.components
    assert component.size == len(data)
    assert component.checksum == hashlib.md5(data).hexdigest()
    assert source.exists() is not delete_on_source


def test_refusals_carry_diva_codes(emulator: RunningEmulator, operator: DivaClient) -> None:
    drop(emulator, "a.mxf", b"a")
    with pytest.raises(DivaRefused) as info:
        operator.archive(body("a", ["a.mxf"], media="NO_SUCH_MEDIA"))
    assert info.value.status_code == 1017
    with pytest.raises(DivaRefused) as info:
        operator.archive(body("a", ["a.mxf"], sourceServer="NO_SUCH_SERVER"))
    assert info.value.status_code == 1018
    with pytest.raises(DivaRefused) as info:
        operator.archive(body("", ["a.mxf"]))
    assert info.value.status_code == 1008
    knobs(emulator, request_seconds=3)
    operator.archive(body("a", ["a.mxf"]))
    with pytest.raises(DivaObjectExists) as info:
        operator.archive(body("a", ["a.mxf"]))
    assert info.value.status_code == 1040
    knobs(emulator, request_seconds=0)
    wait_for(lambda: operator.object_info("a", "NEWS"))
    with pytest.raises(DivaObjectExists) as info:
        operator.archive(body("a", ["a.mxf"]))
    assert info.value.status_code == 1016
    with pytest.raises(DivaNotFound) as info:
        operator.request(999_999)
    assert info.value.status_code == 1011


def test_queue_full_is_busy_and_transient(emulator: RunningEmulator, operator: DivaClient) -> None:
    knobs(emulator, max_active=1, request_seconds=5)
    drop(emulator, "a.mxf", b"a")
    drop(emulator, "b.mxf", b"b")
    operator.archive(body("a", ["a.mxf"]))
    with pytest.raises(DivaBusy) as info:
        operator.archive(body("b", ["b.mxf"]))
    assert info.value.status_code == 1032 and info.value.transient


def test_request_list_filters_and_object_list(
    emulator: RunningEmulator, operator: DivaClient
) -> None:
    for name in ("x1", "x2", "x3"):
        drop(emulator, f"{name}.mxf", name.encode())
        finished(operator, operator.archive(body(name, [f"{name}.mxf"])))
    found = operator.requests(object_name="x2", collection="NEWS")
    assert [r.object_name for r in found] == ["x2"]
    assert operator.requests(object_name="x2", collection="OTHER") == []
    everything = operator.requests()
    assert [r.object_name for r in everything] == ["x1", "x2", "x3"]
    # Read to its end across pages: the walk does not stop at the first page.
    operator.page_size = 1
    assert [r.object_name for r in operator.requests(object_name="x3")] == ["x3"]
    assert operator.page_base == 1  # the guide's 1-based paging, found out by asking
    names = {o.name for o in operator.objects(collection="NEWS")}
    assert names == {"x1", "x2", "x3"}


def test_restore_and_partial_restore(emulator: RunningEmulator, operator: DivaClient) -> None:
    data = b"0123456789" * 10
    drop(emulator, "clip.mov", data)
    finished(operator, operator.archive(body("clip", ["clip.mov"])))
    restore = {"objectName": "clip", "collectionName": "NEWS", "destinationServer": "OUT",
               "filePathRoot": "/back", "instance": -1, "qos": 0, "priority": 50}  # fmt: skip
    assert finished(operator, operator.restore(restore)).state is RequestState.COMPLETED
    assert (emulator.servers["OUT"] / "back" / "clip.mov").read_bytes() == data
    partial = {
        **restore, "filePathRoot": "/cut", "format": 0,
        "offsets": [{"sourceFile": "clip.mov", "destinationFile": "cut.mov",
                     "offsetPairs": [{"bytesBegin": 2, "bytesEnd": 5, "timeCode": False}]}],
    }  # fmt: skip
    assert finished(operator, operator.partial_restore(partial)).state is RequestState.COMPLETED
    assert (emulator.servers["OUT"] / "cut" / "cut.mov").read_bytes() == data[2:5]


def test_cancel_a_running_request(emulator: RunningEmulator, operator: DivaClient) -> None:
    knobs(emulator, request_seconds=30)
    drop(emulator, "slow.mxf", b"s")
    rid = operator.archive(body("slow", ["slow.mxf"]))
    operator.cancel(rid)
    assert finished(operator, rid).state is RequestState.CANCELLED
    with pytest.raises(DivaRefused) as info:
        operator.cancel(rid)
    assert info.value.status_code == 1012


def test_injected_server_errors_are_transient(
    emulator: RunningEmulator, operator: DivaClient
) -> None:
    operator.versions()
    knobs(emulator, http_error_rate=1)
    with pytest.raises(DivaServerError) as info:
        operator.versions()
    assert info.value.transient


def test_unreachable_diva_is_transient() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with DivaClient(f"http://127.0.0.1:{port}", "u", "p", timeout=2) as client:
        with pytest.raises(DivaUnavailable) as info:
            client.versions()
    assert info.value.exit_code == 4


def test_the_guides_sample_program_unchanged_but_for_the_address(
    emulator: RunningEmulator,
) -> None:
    """Login on the data service, then GET /manager/actors?page=1&size=5 with the raw token."""
    with httpx.Client(verify=False) as http:
        login = http.post(
            f"{emulator.url}/dataservice/users/login",
            headers={"Content-Type": "application/json; utf-8", "Accept": "application/json"},
            content=json.dumps({"username": "operator", "password": "operator"}),
        )
        token = login.json()["token"]
        actors = http.get(
            f"{emulator.url}/manager/actors?page=1&size=5",
            headers={"Accept": "application/json", "Authorization": token},
        )
    assert actors.status_code == 200
    assert actors.json()


def test_the_guides_archive_bodies(emulator: RunningEmulator) -> None:
    curl = json.loads((FIXTURES / "archive-curl.json").read_text())
    server = emulator.servers["wfm_ftp_sd_for_diva_test"]
    (server / "1.txt").write_text("one")
    with DivaClient(emulator.url, "admin", "admin") as client:
        with pytest.raises(DivaRefused) as info:
            client.archive(curl)  # the guide's curl example has no collectionName
        assert info.value.status_code == 1008
        rid = client.archive({**curl, "collectionName": "guide"})
        assert finished(client, rid).state is RequestState.COMPLETED


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    process = EmulatorProcess(
        root / "state",
        ["--certfile", str(root / "server.pem"), "--keyfile", str(root / "server.pem"),
         "--user", "operator:operator:operator"],
    ).start()  # fmt: skip
    try:
        yield process.url, root / "ca.pem"
    finally:
        process.stop()


def test_https_needs_the_ca(tls_emulator: tuple[str, Path]) -> None:
    url, ca = tls_emulator
    assert url.startswith("https://127.0.0.1:")
    with DivaClient(url, "operator", "operator") as client:
        with pytest.raises(DivaUnavailable) as info:
            client.versions()
    assert "diva.verify" in str(info.value)
    with DivaClient(url, "operator", "operator", verify=str(ca)) as client:
        assert client.versions()


def _diva_config(root: Path, lines: str) -> DivaConfig:
    (root / "ingest.toml").write_text(
        f'[diva]\nusername = "operator"\npassword_env = "CLIENT_TEST_PASSWORD"\n{lines}\n',
        encoding="utf-8",
    )
    return load_config(root / "ingest.toml").require_diva()


def test_from_config_gives_the_client_every_diva_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``[diva]`` key reaches the client's constructor, as the daemon and the doctor
    both build it; ``timeout`` overrides the section's for a caller that waits less."""
    built: list[dict[str, Any]] = []

    class Recorded(DivaClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append({"args": args, **kwargs})
            super().__init__(*args, **kwargs)

    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("CLIENT_TEST_PASSWORD", "s3cret")
    diva = _diva_config(
        tmp_path,
        'url = "https://127.0.0.1:8765/"\n'
        'data_url = "https://127.0.0.1:9000/ds"\nauth_scheme = "bearer"\n'
        'verify = "ca.pem"\ntimeout_seconds = 7\nobject_info_path = "/objects/info"\n'
        "session_minutes = 5",
    )
    with Recorded.from_config(diva) as client:
        assert client.data_url == "https://127.0.0.1:9000/ds"
        assert client.manager_url == "https://127.0.0.1:8765/manager"
        assert client.object_info_path == "/objects/info"
    assert built == [
        {
            "args": ("https://127.0.0.1:8765", "operator", "s3cret"),
            "data_url": "https://127.0.0.1:9000/ds",
            "manager_url": "https://127.0.0.1:8765/manager",
            "auth_scheme": "bearer",
            "verify": str(tmp_path / "ca.pem"),  # a path, made absolute from the config's
            "timeout": 7,
            "transport": None,
            "object_info_path": "/objects/info",
            "session_minutes": 5,
        }
    ]
    with Recorded.from_config(diva, timeout=2.5):
        pass
    assert built[1]["timeout"] == 2.5
    # The defaults of a section that names only what it must.
    diva = _diva_config(tmp_path, 'url = "http://127.0.0.1:8765"\nverify = false')
    with Recorded.from_config(diva):
        pass
    assert {k: built[2][k] for k in ("auth_scheme", "verify", "timeout", "session_minutes")} == {
        "auth_scheme": "raw",
        "verify": False,
        "timeout": defaults.DIVA_TIMEOUT_SECONDS,
        "session_minutes": defaults.DIVA_SESSION_MINUTES,
    }
    assert built[2]["object_info_path"] is None


def test_from_config_without_the_password_names_the_variable_only(tmp_path: Path) -> None:
    diva = _diva_config(tmp_path, 'url = "http://127.0.0.1:8765"')
    with pytest.raises(ConfigError, match="CLIENT_TEST_PASSWORD is not set"):
        DivaClient.from_config(diva)


def test_from_config_trusts_the_configured_ca(
    tls_emulator: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_emulator
    monkeypatch.setenv("CLIENT_TEST_PASSWORD", "operator")
    diva = _diva_config(tmp_path, f'url = "{url}"\nverify = "{ca}"')
    with DivaClient.from_config(diva) as client:
        assert client.versions()
        assert client.logins == 1


def test_the_client_imports_only_behind_its_wall() -> None:
    """docs/architecture.md: the DIVA client knows nothing of rules, the ledger or the
    engine; it imports protocol, errors and defaults, and its own parts."""
    allowed = {"protocol", "errors", "defaults", "auth", "wire", "client"}
    package = Path(ingest.__file__).parent
    for module in ("client", "auth", "wire"):
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [node.module] if node.module else [a.name for a in node.names]
                assert set(names) <= allowed, (module, names)
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                assert not node.module.startswith("ingest"), (module, node.module)


def test_turning_verification_off_is_explicit_and_warned(tls_emulator: tuple[str, Path]) -> None:
    url, _ = tls_emulator
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stderr);"
        "from ingest.client import DivaClient;"
        f"c = DivaClient({url!r}, 'operator', 'operator', verify=False); c.versions(); c.close()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "TLS certificate verification of DIVA is OFF" in result.stderr
