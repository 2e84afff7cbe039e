from freight.cli.main import run

run()
