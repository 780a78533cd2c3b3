from neuroldm.cli import main

raise SystemExit(main())
