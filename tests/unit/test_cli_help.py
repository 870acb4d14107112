"""`procmgr --help` and every subcommand's options say what they are."""

import argparse

from procmgr.cli import parser


def _missing(p: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Commands and options of ``p`` and its subcommands, at any depth
    (`procmgr cluster up`), that say nothing of themselves."""
    missing = []
    for action in p._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, sub in action.choices.items():
            if not helps.get(name) or not sub.description:
                missing.append(prefix + name)
            missing += [f"{prefix}{name} {a.dest}" for a in sub._actions
                        if a.dest != "help" and not a.help]
            missing += _missing(sub, f"{prefix}{name} ")
    return missing


def test_every_command_and_option_has_a_description():
    assert _missing(parser()) == []
