from koinon.cli.main import main

raise SystemExit(main())
