"""The command line: one typer app (app.py), one thin module per subcommand."""
