"""A real S3 endpoint for tests: moto's standalone server over HTTP on a free port.

In-process ``mock_aws`` patches botocore and would not catch bugs in how we build
the client (endpoint URL, credentials from the environment) nor work across a
subprocess; a server on a socket does both.  Import the fixtures into a test
module with ``from tests.s3server import s3_env, s3_server  # noqa: F401``.

The session fixture never touches ``os.environ`` (a session fixture cannot undo
changes per test); tests get the variables through ``s3_env`` (function-scoped,
monkeypatch) or ``s3_server.env`` (e.g. for a subprocess).
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class S3Server:
    """Handle on the running server: its URL, client env vars, and bucket helpers."""

    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        """A boto3 S3 client bound to this server with explicit dummy credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique one when ``name`` is None) and return its name."""
        name = name or f"nb2prod-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point boto3 at this server for one test; monkeypatch undoes it afterwards."""
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
                     "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` plus this server's variables, for child processes."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN")}
        env.update(self.env)
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Start moto's ThreadedMotoServer on 127.0.0.1 and an OS-chosen free port."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1",
                                          "localhost"]))
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url}/moto-api/", timeout=10) as response:  # really listening
            assert response.status == 200
        yield S3Server(endpoint_url=url, env=env)
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """``s3_server`` with its env vars set for the current test only."""
    s3_server.use(monkeypatch)
    return s3_server
