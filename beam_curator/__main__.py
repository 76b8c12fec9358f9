from beam_curator.cli import main

raise SystemExit(main())
