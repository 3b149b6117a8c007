from bigbang.cli import main

raise SystemExit(main())
