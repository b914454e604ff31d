from oneepoch.cli import main

raise SystemExit(main())
