"""Protocol corner cases of the DIVA client, against small fake DIVA apps (httpx.MockTransport).

The end-to-end behaviour against the real emulator is in test_client.py; here are the
answers a healthy emulator never gives: HTML pages, truncated JSON, redirects, huge bodies.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ingest import client as client_module
from ingest.client import DivaClient, RequestInfo
from ingest.errors import (
    DivaAccessDenied,
    DivaAuthError,
    DivaBusy,
    DivaError,
    DivaNotFound,
    DivaObjectExists,
    DivaProtocolError,
    DivaRefused,
    DivaServerError,
    DivaUnavailable,
)
from ingest.protocol import RequestState

from .support.fake_diva import GATEWAY, PASSWORD, FakeDiva, make_client


def versions_ok(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
    if not fake.token_ok(request):
        return httpx.Response(403, json={"statusCode": 1020})
    return httpx.Response(200, json={"versions": [{"name": "Manager", "version": "9.0"}]})


def test_one_login_is_reused_for_many_calls() -> None:
    fake = FakeDiva(versions_ok)
    with make_client(fake) as diva:
        for _ in range(20):
            diva.versions()
        assert diva.logins == 1
    assert fake.logins == 1
    assert fake.logouts == 1  # close() logs out
    assert fake.seen_auth == ["tok-1"] * 20  # the raw token, as the guide's sample sends it


def test_bearer_scheme_when_asked() -> None:
    fake = FakeDiva(versions_ok)
    with make_client(fake, auth_scheme="bearer") as diva:
        diva.versions()
    assert fake.seen_auth == ["Bearer tok-1"]


def test_expired_token_means_one_new_login_and_a_replay() -> None:
    fake = FakeDiva(versions_ok)
    with make_client(fake) as diva:
        diva.versions()
        fake.valid.clear()  # the server forgot every token (expiry, restart)
        diva.versions()
        diva.versions()
        assert diva.logins == 2
    assert fake.seen_auth == ["tok-1", "tok-1", "tok-2", "tok-2"]


def test_token_refused_even_after_relogin_is_an_auth_error() -> None:
    fake = FakeDiva(lambda req, f: httpx.Response(403, json={"statusCode": 1020}))
    with make_client(fake) as diva, pytest.raises(DivaAuthError) as info:
        diva.versions()
    assert fake.logins == 2  # one try, one re-login: never a login loop
    assert info.value.exit_code == 5


def test_wrong_password_is_an_auth_error_without_the_password() -> None:
    fake = FakeDiva(versions_ok)
    with make_client(fake, password="wrong-" + PASSWORD) as diva:
        with pytest.raises(DivaAuthError) as info:
            diva.versions()
        assert "check the username and password" in str(info.value)
        assert PASSWORD not in str(info.value)
        with pytest.raises(DivaAuthError):
            diva.login()


def test_access_denied_is_permanent_and_says_so() -> None:
    def deny(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        return httpx.Response(
            403, json={"statusCode": 1035, "statusName": "DIVA_ERR_ACCESS_DENIED"}
        )

    with make_client(FakeDiva(deny)) as diva, pytest.raises(DivaAccessDenied) as info:
        diva.archive({"objectName": "a"})
    assert info.value.status_code == 1035
    assert "role" in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (503, {"statusCode": 1032, "statusDescription": "queue full"}, DivaBusy, 1032),
        (200, {"statusCode": 1032}, DivaBusy, 1032),  # error status inside an HTTP 200
        (409, {"statusCode": 1016}, DivaObjectExists, 1016),
        (409, {"statusCode": 1040}, DivaObjectExists, 1040),
        (400, {"statusCode": 1008}, DivaRefused, 1008),
        (400, {"statusCode": 1017}, DivaRefused, 1017),
        (400, {"statusCode": 1018}, DivaRefused, 1018),
        (404, {"statusCode": 1011}, DivaNotFound, 1011),
        (500, {"statusCode": 1002}, DivaServerError, 1002),
        (502, None, DivaServerError, None),
    ],
)
def test_diva_status_codes_map_to_the_error_tree(
    status: int, body: Any, error: type[DivaError], code: int | None
) -> None:
    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        if body is None:
            return httpx.Response(status, text="Bad Gateway")
        return httpx.Response(status, json=body)

    with make_client(FakeDiva(answer)) as diva, pytest.raises(error) as info:
        diva.archive({"objectName": "a"})
    assert info.value.status_code == code
    assert info.value.transient == (error in (DivaBusy, DivaServerError))
    if code:
        assert str(code) in str(info.value)


@pytest.mark.parametrize(
    ("response", "words"),
    [
        (httpx.Response(200, html="<html><body>Login</body></html>"), "HTML page"),
        (httpx.Response(200, text='{"requestId": 12, "statusCo'), "not JSON"),
        (httpx.Response(200, content=b""), "empty body"),
        (httpx.Response(302, headers={"location": "https://sso.example/login"}), "redirect"),
        (httpx.Response(418, text="teapot"), "no DIVA status"),
        (httpx.Response(200, json=[1, 2, 3]), "JSON object"),
        (httpx.Response(200, json={"statusCode": 1000}), "no request id"),
    ],
)
def test_answers_that_are_not_diva_become_clear_protocol_errors(
    response: httpx.Response, words: str
) -> None:
    with make_client(FakeDiva(lambda req, f: response)) as diva:
        with pytest.raises(DivaProtocolError) as info:
            diva.archive({"objectName": "a"})
    assert words in str(info.value)
    assert info.value.exit_code == 7


def test_json_with_a_wrong_content_type_is_still_read() -> None:
    def answer(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        return httpx.Response(
            200, content=b'{"requestId": 41, "statusCode": 1000}',
            headers={"content-type": "text/plain"},
        )  # fmt: skip

    with make_client(FakeDiva(answer)) as diva:
        assert diva.archive({"objectName": "a"}) == 41


def test_a_huge_body_is_refused_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_BODY_BYTES", 1024)
    big = httpx.Response(200, content=b'{"x": "' + b"a" * 5000 + b'"}')
    chunked = httpx.Response(200, stream=httpx.ByteStream(b"[" + b"1," * 4000 + b"1]"))
    for answer in (big, chunked):

        def answer_with(
            req: httpx.Request, f: FakeDiva, a: httpx.Response = answer
        ) -> httpx.Response:
            return a

        with make_client(FakeDiva(answer_with)) as diva:
            with pytest.raises(DivaProtocolError, match="accepted"):
                diva.versions()


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")],
)
def test_transport_failures_are_transient(exc: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with DivaClient(GATEWAY, "u", PASSWORD, transport=httpx.MockTransport(fail)) as diva:
        with pytest.raises(DivaUnavailable) as info:
            diva.versions()
    assert info.value.transient
    assert info.value.exit_code == 4


def test_request_reader_is_tolerant() -> None:
    assert RequestInfo.from_wire({"requestId": "7", "stateCode": 12}).state is RequestState.RUNNING
    info = RequestInfo.from_wire(
        {
            "id": 9,
            "stateName": "Partially completed",
            "abortReason": {"code": 7, "name": "DIVA_AR_RESOURCES", "description": "no drive"},
            "statusCode": 1000,
            "submissionDate": 1657681383,
            "completionDate": 1657682357000,  # milliseconds
            "somethingNew": {"nested": True},
        }
    )
    assert info.request_id == 9
    assert info.state is RequestState.PARTIALLY_ABORTED and info.state.finished
    assert info.abort_reason == "DIVA_AR_RESOURCES"
    assert info.status_name == "DIVA_OK"
    assert info.completed_at is not None and info.completed_at.year == 2022
    assert RequestInfo.from_wire({"id": 1, "stateName": "BOGUS"}).state is (
        RequestState.UNKNOWN_STATE
    )
    with pytest.raises(DivaProtocolError):
        RequestInfo.from_wire({"stateCode": 3})


def test_secrets_never_reach_reprs_or_errors() -> None:
    def echo_everything(request: httpx.Request, fake: FakeDiva) -> httpx.Response:
        # A hostile or broken server that echoes the token and password back.
        text = f"token {request.headers['authorization']} password {PASSWORD}"
        return httpx.Response(500, json={"statusCode": 1002, "statusDescription": text})

    fake = FakeDiva(echo_everything)
    diva = make_client(fake)
    with pytest.raises(DivaServerError) as info:
        diva.versions()
    token = next(iter(fake.valid))
    for text in (str(info.value), repr(info.value), repr(diva), repr(diva._auth)):
        assert PASSWORD not in text
        assert token not in text
    diva.close()


def test_a_failed_relogin_in_one_thread_does_not_break_another() -> None:
    """Two calls see the token expire; the first one's new login fails. The second must
    log in itself, not send a call without a token."""
    fake = FakeDiva(versions_ok)
    diva = make_client(fake)
    diva.versions()
    fake.valid.clear()  # the token expires
    flow = diva._auth.sync_auth_flow(httpx.Request("GET", f"{GATEWAY}/manager/versions"))
    first = next(flow)
    assert first.headers["Authorization"] == "tok-1"
    diva._auth._token = None  # meanwhile another thread's re-login failed, leaving none
    login = flow.send(httpx.Response(403, json={"statusCode": 1020}, request=first))
    assert login.url.path == "/dataservice/users/login"
    response = fake(login)
    response.request = login
    replay = flow.send(response)
    assert replay.headers["Authorization"] == "tok-2"
    diva.close()
