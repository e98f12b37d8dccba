"""The `entra-mcp` commands, one module each. A command module has NAME, HELP, `add_arguments(parser)` and
`run(args) -> exit code`; cli.py lists the modules, builds the parser and calls `run`.

Commands sit on top of everything else: they wire config, mirror, sync, views and server together. Only `demo` and
`devtenant` import the emulator (entra_mcp.devtenant). Module-level imports stay light (the heavy ones are inside
`run`), so that starting one command does not load the others' dependencies.
"""
