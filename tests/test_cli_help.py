"""What the command line prints around the work (issue 11 item 16): help texts shown as written (rich markup must
not eat "[default: ...]"), no bitsandbytes "pip install kernels" noise, and the documented exit codes."""

from __future__ import annotations

import logging
import re

import typer
from typer.testing import CliRunner

from xrouter_lite import cli

runner = CliRunner()


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_option_help_is_shown_as_written():
    root = typer.main.get_command(cli.app)
    squash = lambda s: re.sub(r"[\s│]+", "", s)  # noqa: E731 (rich wraps and boxes the text)
    checked = 0
    for path, cmd in _commands(root):
        res = runner.invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        shown = squash(res.output)
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option" and getattr(p, "help", None):
                assert squash(p.help) in shown, (path, p.name, p.help)
                checked += 1
    assert checked > 50


def test_import_help_shows_its_default_pool():
    res = runner.invoke(cli.app, ["import", "routerbench", "--help"], env={"COLUMNS": "200"})
    assert "configs/pool_routerbench.yaml" in res.output


def test_the_bitsandbytes_kernels_hint_is_silenced(caplog):
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        log.warning("a real problem")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["a real problem"]


def test_exit_codes_are_distinct_and_documented(repo):
    codes = {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_STOPPED, cli.EXIT_INTERRUPTED}
    assert codes == {0, 1, 2, 75, 130}
    for readme in ("README.md", "README.zh-CN.md"):
        text = (repo / readme).read_text(encoding="utf-8")
        assert "75" in text and "130" in text, readme
