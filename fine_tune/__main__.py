from fine_tune.cli import main

raise SystemExit(main())
