from pycvmfs.cli.main import run

run()
