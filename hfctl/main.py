"""The ``hfctl`` command. ``hfctl hostfactory ...`` (what HostFactory's scripts run) goes
straight to the plugin, without the imports of the other commands, so it starts fast."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hostfactory"]:
        from hfctl.plugin import main as plugin

        return plugin(args[1:])
    from hfctl.cli import main as cli

    return cli(args)
