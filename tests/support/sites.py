"""A site for ``ingest doctor``: a config, rules and watch folders wired to an emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ingest.ledger import Ledger

from .emulator import RunningEmulator
from .ledgers import Result, invoke

RULE = """
[[rule]]
name = "{name}"
watch = "{watch}"
match = ["*.mxf"]
collection = "NEWS"
media = "{media}"
source_server = "{server}"
"""


class Site:
    """A config, rules and watch folders wired to the session's emulator."""

    def __init__(self, root: Path, emulator: RunningEmulator) -> None:
        self.root = root
        self.url = emulator.url
        self.nas = emulator.servers["NAS"]
        self.config = root / "ingest.toml"
        self.rules = root / "rules"
        self.rules.mkdir()
        self.password = "operator"
        self.write_config()
        self.rule("news", self.nas / "news", "DISK1")
        self.rule("archive", self.nas / "archive", "TAPE1")
        Ledger.open(f"sqlite:///{root / 'ledger.db'}").close()

    def write_config(
        self, url: str | None = None, username: str = "operator", diva_extra: str = ""
    ) -> None:
        """``diva_extra``: more ``[diva]`` lines, e.g. ``object_info_path = "..."``."""
        self.config.write_text(
            f'[diva]\nurl = "{url or self.url}"\nusername = "{username}"\n'
            f'password_env = "DOCTOR_TEST_PASSWORD"\ntimeout_seconds = 5\n{diva_extra}\n'
            '[ledger]\nurl = "sqlite:///ledger.db"\n[rules]\npaths = ["rules"]\n',
            encoding="utf-8",
        )

    def rule(self, name: str, watch: Path, media: str, server: str = "NAS") -> None:
        watch.mkdir(parents=True, exist_ok=True)
        text = RULE.format(name=name, watch=watch, media=media, server=server)
        (self.rules / f"{name}.toml").write_text(text, encoding="utf-8")

    def run(self, *args: str) -> Result:
        env = {"DOCTOR_TEST_PASSWORD": self.password}
        return invoke("doctor", "--config", str(self.config), *args, env=env)

    def checks(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        result = self.run("--json", *args)
        return result.exit_code, json.loads(result.stdout)["checks"]
