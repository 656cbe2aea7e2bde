from pycvmfs.cli.main import main

raise SystemExit(main())
