"""`glp --help` and every subcommand's help: fast (no heavy import), a description, every option's default."""

import argparse
import subprocess
import sys

import pytest

from glp.cli import _HelpFormatter, build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_glp_help_imports_nothing_heavy():
    code = ("import sys\nfrom glp.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'dagster', 'numpy', 'zarr') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert "summary" in r.stdout and "export" in r.stdout and "<command> --help" in r.stdout


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_subcommand_has_a_description_and_shows_each_options_default(name, capsys):
    parser = _commands()[name]
    assert parser.description and len(parser.description) > 40
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    assert parser.description.split()[0] in text
    fmt = _HelpFormatter(f"glp {name}")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue  # -h, and positionals (required: no default)
        shown = fmt._get_help_string(action)
        assert "default" in shown or action.default is False, (name, action.dest, shown)  # a flag is off unless given


def test_numeric_defaults_are_shown_as_values(capsys):
    with pytest.raises(SystemExit):
        main(["steer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 0.5)", "(default: 24)", "(default: 0)", "(default: I think that)", "(default: sentiment)"):
        assert shown in text
