"""Configuration: the shipped files load; every validation error names the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.server.config import default_config_path, load_config, parse_config
from tests.server.peers import REPO_ROOT, run_medseg


@pytest.mark.parametrize(
    "name", ["default.toml", "orthanc.toml", "orthanc-marks.toml", "tls.toml", "redis.toml"]
)
def test_shipped_config_loads(name: str) -> None:
    config = load_config(REPO_ROOT / "pacs_config" / name)
    assert config.rules, "every shipped configuration processes something"


def test_default_config_listens_on_11112_as_medseg_with_embedded_queue() -> None:
    config = load_config(default_config_path())
    assert (config.listener.ae_title, config.listener.port) == ("MEDSEG", 11112)
    assert config.queue.backend == "sqlite"
    assert config.model.path == ""  # the bundled model
    assert Path(config.storage.spool) == Path("./medseg-data")


GOOD = {"peers": [{"ae_title": "PACS"}], "rules": [{"name": "r"}]}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"listener": {"port": 70000}}, "listener.port"),
        ({"listener": {"port": "104"}}, "listener.port"),
        ({"listener": {"prot": 104}}, "listener.prot"),
        ({"listener": {"ae_title": "A_TITLE_THAT_IS_TOO_LONG"}}, "listener.ae_title"),
        ({"listener": {"max_connections_per_ip": -1}}, "listener.max_connections_per_ip"),
        ({"listener": {"allow_any_called_ae": "yes"}}, "listener.allow_any_called_ae"),
        ({"queue": {"backend": "rabbit"}}, "queue.backend"),
        ({"queue": {"lease_seconds": 0}}, "queue.lease_seconds"),
        ({"storage": {"min_free_mb": -1}}, "storage.min_free_mb"),
        ({"tls": {"enabled": True}}, "tls.certificate"),
        ({"rules": [{"name": "r", "destinations": ["nowhere"]}]}, "rules[0].destinations"),
        ({"rules": [{"name": "r", "series_description": "("}]}, "rules[0].series_description"),
        ({"rules": [{"modalities": ["CT"]}]}, "rules[0].name"),
        ({"rules": [{"name": "r", "prompts": ["box=1,2,3"]}]}, "rules[0].prompts[0]"),
        (
            {"rules": [{"name": "r"}, {"name": "s", "prompts": ["point=1,2,3", "circle=1"]}]},
            "rules[1].prompts[1]",
        ),
        ({"rules": [{"name": "r", "prompts": ["box-mm=0,0,9,9"]}]}, "rules[0].prompts[0]"),
        ({"rules": [{"name": "r", "prompts": ["point=1,2,3:maybe"]}]}, "rules[0].prompts[0]"),
        ({"rules": [{"name": "r", "prompts": "box=1,2,3,4"}]}, "rules[0].prompts"),
        ({"peers": []}, "peers"),
        ({"peers": [{"ae_title": "PACS", "return_port": -1}]}, "peers[0].return_port"),
        (
            {"destinations": [{"name": "x", "ae_title": "X", "host": "h", "port": 0}]},
            "destinations[0].port",
        ),
        ({"listner": {}}, "listner"),
    ],
)
def test_invalid_value_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, **change})
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_rule_prompts_parse_with_the_segment_syntax() -> None:
    from medseg.prompts import BoxPrompt, PointPrompt
    from medseg.server.ruleprompts import parse_rule_prompts

    texts = ("box=10,12,40,42@2-5", "box-mm=-40,-30,10,20@-95:-80", "point=3,4,5:neg")
    texts += ("POINT-MM = -12.5,30,-100",)
    rule = {"name": "r", "prompts": list(texts)}
    config = parse_config({**GOOD, "rules": [rule]})
    assert config.rules[0].prompts == texts
    assert parse_rule_prompts(config.rules[0].prompts) == (
        BoxPrompt(10, 12, 40, 42, 2, 5),
        BoxPrompt(-40, -30, 10, 20, -95, -80, space="mm"),
        PointPrompt(3, 4, 5, positive=False),
        PointPrompt(-12.5, 30, -100, space="mm"),
    )


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener]\nport = 104\nport = 105\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[queue]\nbackend = "rabbit"\n')
    result = run_medseg("serve", "-c", str(bad))
    assert result.returncode == 3
    assert "queue.backend" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("window", "accepted"),
    [("livr", False), ("p99-1", False), ("40/-5", False), ("liver", True), ("p1-99", True),
     ("40/400", True), ("dicom", True), ("auto", True)],
)  # fmt: skip
def test_a_rules_window_is_checked_when_the_configuration_loads(window, accepted) -> None:
    """Issue 23 item 12: a misspelt window stopped every job; now it stops the start."""
    config = {**GOOD, "rules": [{"name": "r", "window": window}]}
    if accepted:
        assert parse_config(config).rules[0].window == window
    else:
        with pytest.raises(ConfigError, match="window"):
            parse_config(config)


@pytest.mark.parametrize(("command", "workers"), [("serve", "-1"), ("worker", "0")])
def test_a_negative_worker_count_is_refused_in_one_line(command: str, workers: str) -> None:
    result = run_medseg(command, "--workers", workers, "-c", str(default_config_path()))
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "--workers" in result.stderr
