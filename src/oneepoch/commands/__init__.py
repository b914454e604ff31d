"""One module per `oneepoch` command, registered in order by oneepoch.cli.

A command module parses flags and calls library code; nothing else imports it except the
CLI and the commands that run other commands. Each one holds

- ``HELP``: the one line shown in `oneepoch --help`;
- ``DESCRIPTION``: the paragraph atop `oneepoch COMMAND --help` (None: none);
- ``add_arguments(parser)``: its flags, from oneepoch.cliflags where they are shared;
- ``run(args)``: the command, returning an exit status or None (a command made only of
  subcommands has no ``run``; its subcommands set their own ``func``).

Only argparse and light modules are imported at the top of a command module; torch,
numpy, scipy and matplotlib load when a command runs, so `oneepoch --help` stays fast and
the analysis commands run without torch.
"""
