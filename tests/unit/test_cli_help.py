"""`procmgr --help` and every subcommand's options say what they are."""

import argparse

from procmgr.cli import parser


def test_every_command_and_option_has_a_description():
    missing = []
    for action in parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, sub in action.choices.items():
            if not helps.get(name) or not sub.description:
                missing.append(name)
            missing += [f"{name} {a.dest}" for a in sub._actions
                        if a.dest != "help" and not a.help]
    assert missing == []
